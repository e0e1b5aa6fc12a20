# shellcheck shell=bash
# Sourced by scripts/images.sh and the kind/demo scripts: one podman configuration for every caller
# (kubesim/kubelet/engine.py builds the same options for the kubelet's container runtime and the tests).
#   TPROXY_IMAGES_DIR  private image store, wheels and build logs (default: .images in the checkout)
# Rootful podman with its own storage (--root/--runroot), cgroupfs (no systemd here), file events, and
# runc: crun refuses this host's hybrid cgroup v1/v2 layout ("cgroups in hybrid mode not supported").
TPROXY_IMAGES_DIR=${TPROXY_IMAGES_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.images}
TPODMAN_OPTS=(--root "$TPROXY_IMAGES_DIR/storage" --runroot "$TPROXY_IMAGES_DIR/run"
              --cgroup-manager cgroupfs --events-backend file --storage-driver overlay --runtime runc)
#: podman's default rlimits cannot be set here ("error setting rlimit type 6"); explicit ones work
# shellcheck disable=SC2034 # used by the scripts that source this file
TPODMAN_LIMITS=(--ulimit nofile=4096:4096 --ulimit nproc=4096:4096)
tpodman() { podman "${TPODMAN_OPTS[@]}" "$@"; }
