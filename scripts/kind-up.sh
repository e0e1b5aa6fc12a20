#!/usr/bin/env bash
# The README's install on a real cluster: kind v0.9.0 + kindest/node:v1.13.12 (Initializers alpha on),
# the four images built with docker and `kind load`ed, `helm install`, the examples, the tutorial's checks.
# Needs: docker (running), kind v0.9.0, kubectl, helm 3, a cgroup v1 host. Not run in CI: see README.
#   scripts/kind-up.sh            # cluster "tproxy" (KIND_CLUSTER), kubeconfig written to .kind/kubeconfig
#   scripts/kind-down.sh          # deletes it
set -euo pipefail
cd "$(dirname "$0")/.."
CLUSTER=${KIND_CLUSTER:-tproxy}
HELM=${HELM:-$( [ -x .tools/bin/helm ] && echo .tools/bin/helm || echo helm )}
KUBECTL=${KUBECTL:-$( [ -x .tools/bin/kubectl ] && echo .tools/bin/kubectl || echo kubectl )}
export KUBECONFIG=${KIND_KUBECONFIG:-$PWD/.kind/kubeconfig}
log() { printf '[kind-up] %s\n' "$*"; }
die() { printf '[kind-up] error: %s\n' "$*" >&2; exit 2; }

for t in docker kind; do command -v "$t" >/dev/null 2>&1 || die "$t is not installed"; done
docker info >/dev/null 2>&1 || die "docker is not running (or not reachable by this user)"
kv=$(kind version 2>/dev/null | awk '{print $2}')
[ "$kv" = v0.9.0 ] || die "kind $kv found; only kind v0.9.0 still runs kindest/node:v1.13.12 (the last Kubernetes with Initializers)"
[ "$(stat -fc %T /sys/fs/cgroup)" != cgroup2fs ] || die "this host uses cgroup v2; kindest/node:v1.13.12 needs a cgroup v1 host"

mkdir -p "$(dirname "$KUBECONFIG")"
if ! kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
  log "creating kind cluster $CLUSTER (kind/initializers.yaml)"
  kind create cluster --name "$CLUSTER" --config kind/initializers.yaml --kubeconfig "$KUBECONFIG" --wait 120s
fi

log "building the images with docker and loading them into the cluster"
for i in initializer podwatch sidecar proxy; do
  docker build -q -f "$i/Dockerfile" -t "tproxy-$i:0.1.0" . >/dev/null
  kind load docker-image --name "$CLUSTER" "tproxy-$i:0.1.0"
done
docker build -q -t example-app:debian examples/image-debian >/dev/null
kind load docker-image --name "$CLUSTER" example-app:debian
for i in initializer podwatch sidecar proxy; do
  printf '[kind-up] %-26s %s\n' "tproxy-$i:0.1.0" "$(docker image inspect -f '{{.Size}}' "tproxy-$i:0.1.0" | awk '{printf "%d MB", $1/1e6}')"
done

log "helm install (the README's command; images are local: pullPolicy Never)"
"$HELM" upgrade --install tproxy chart/ --namespace tproxy-system --create-namespace \
  --set tproxy.useInitializer=true,tproxy.useRBAC=true,images.pullPolicy=Never --wait --timeout 5m
"$KUBECTL" apply -f examples/debian-app.yaml
"$KUBECTL" apply -f examples/debian-app-locked.yaml
"$KUBECTL" wait --for=condition=Ready pod -l app=debian-app --timeout=180s

sleep 15
echo
echo "\$ kubectl logs --selector app=debian-app,variant=unlocked --tail=3   (want: 200, 200, ping replies)"
"$KUBECTL" logs --selector app=debian-app,variant=unlocked --tail=3
echo
echo "\$ kubectl logs --selector app=debian-app,variant=locked --tail=3     (want: 418, 200, Operation not permitted)"
"$KUBECTL" logs --selector app=debian-app,variant=locked --tail=3
echo
log "KUBECONFIG=$KUBECONFIG; the end-to-end suite against it: make test PYTEST_ARGS=\"--kubeconfig=$KUBECONFIG -m cluster\""
