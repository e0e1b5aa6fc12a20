#!/bin/sh
# tproxy-sidecar entrypoint (init container, privileged). Faithful to the original's env:
#   ALLOW_DNS, BLOCK_SVC_CIDR, NODE_NAME; plus TPROXY_VERIFY (default true) and
#   TPROXY_VERIFY_TIMEOUT (default 60). The lock is rendered and applied atomically by the
#   Python module (one iptables-restore per family), which then proves interception.
# Arguments are passed through (--help, --dry-run, --no-verify).
set -eu
: "${TPROXY_VERIFY:=true}"
: "${TPROXY_VERIFY_TIMEOUT:=60}"
export TPROXY_VERIFY TPROXY_VERIFY_TIMEOUT
exec "${TPROXY_PYTHON:-python3}" -m sidecar "$@"
