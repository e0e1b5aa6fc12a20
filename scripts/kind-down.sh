#!/usr/bin/env bash
# Deletes the kind cluster scripts/kind-up.sh created (KIND_CLUSTER, default tproxy).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v kind >/dev/null 2>&1 || { echo "[kind-down] kind is not installed" >&2; exit 2; }
kind delete cluster --name "${KIND_CLUSTER:-tproxy}" --kubeconfig "${KIND_KUBECONFIG:-$PWD/.kind/kubeconfig}"
rm -f "${KIND_KUBECONFIG:-$PWD/.kind/kubeconfig}"
