#!/bin/sh
# tproxy-sidecar entrypoint (init container, privileged). Faithful to the original's env:
#   ALLOW_DNS, BLOCK_SVC_CIDR, NODE_NAME; plus TPROXY_VERIFY (default true) and
#   TPROXY_VERIFY_TIMEOUT (default 60). The lock is rendered and applied atomically by the
#   Python module (one iptables-restore per family), which then proves interception.
# Arguments are passed through (--help, --dry-run, --no-verify). Exit status: 0 locked and
# verified, 1 interception not proven, 2 bad configuration, 3 iptables failed.
set -eu
: "${TPROXY_VERIFY:=true}"
: "${TPROXY_VERIFY_TIMEOUT:=60}"
export TPROXY_VERIFY TPROXY_VERIFY_TIMEOUT
# The package root (/opt/tproxy in the image) first, so a checkout works without installing.
root=$(CDPATH='' cd -- "$(dirname -- "$0")/.." && pwd)
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
exec "${TPROXY_PYTHON:-python3}" -m sidecar "$@"
