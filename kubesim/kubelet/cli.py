"""``python -m kubesim kubelet``: run a simulated node (and, without --kubeconfig, its own cluster).

Brings up the node and internet namespaces and the netns kubelet, then runs until Ctrl-C/SIGTERM,
after which every pod process is stopped and every namespace deleted. Without ``--kubeconfig`` an
in-process 1.7 API server is started too and its admin kubeconfig path is printed, so

    python -m kubesim kubelet &
    export KUBECONFIG=/run/kubesim/current/admin.kubeconfig
    helm template tproxy chart/ --set tproxy.useInitializer=true,tproxy.useRBAC=true | python -m kubesim apply -f -
    python -m kubesim apply -f examples/debian-app-locked.yaml
    python -m kubesim logs --selector app=debian-app,variant=locked --tail=4

is the tutorial by hand. With ``--kubeconfig`` the kubelet joins an existing API server (started with
``python -m kubesim serve --san 198.18.0.1``: pods reach it at https://198.18.0.1:6443).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = __doc__.split("\n\n")[0]
    p.add_argument("--kubeconfig", help="join this API server instead of starting one")
    p.add_argument("--node-name", default="node-1", help="node name (default: node-1)")
    p.add_argument("--run-dir", help="where pod logs, volumes and the kubeconfig go (default: a new temp dir, kept after exit)")
    p.add_argument("--no-internet", action="store_true", help="do not start the simulated internet servers")
    p.add_argument("--no-ipv6", action="store_true", help="IPv4-only pods")
    p.add_argument(
        "--backoff",
        type=float,
        default=1.0,
        help="first crash/init-failure back-off in seconds (doubles up to --backoff-cap; default 1)",
    )
    p.add_argument("--backoff-cap", type=float, default=10.0, help="maximum back-off (default 10)")
    p.add_argument("--log-level", default="info", help="kubelet log level (JSON lines on stderr)")
    p.add_argument(
        "--runtime",
        choices=("emulate", "podman"),
        default="emulate",
        help="emulate (default): each image's Dockerfile entrypoint on the host's Python; "
        "podman: the real images built by `make images`",
    )


def run(args) -> int:
    from controllerkit.log import setup_logging
    from kubesim.kubelet.cluster import ClusterError, SimCluster

    if os.geteuid() != 0:
        print("kubesim kubelet: needs root (network namespaces, mounts)", file=sys.stderr)
        return 2
    setup_logging("kubelet", args.log_level)
    import tempfile

    run_dir = args.run_dir or tempfile.mkdtemp(prefix="kubesim-")
    cluster = SimCluster(
        run_dir,
        node_name=args.node_name,
        kubeconfig=args.kubeconfig,
        internet=not args.no_internet,
        ipv6=not args.no_ipv6,
        keep_run_dir=True,
        kubelet_options={"backoff_initial": args.backoff, "backoff_cap": args.backoff_cap, "runtime": args.runtime},
    )
    stop = threading.Event()

    def on_signal(signum, _frame):
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        cluster.start(progress=lambda m: print(f"kubesim: {m}", file=sys.stderr, flush=True))
        print(f"kubesim: cluster ready; KUBECONFIG={cluster.kubeconfig}  (run dir {cluster.run_dir})", flush=True)
        while not stop.wait(1):
            pass
        return 0
    except ClusterError as e:
        print(f"kubesim kubelet: {e}", file=sys.stderr)
        return 1
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        cluster.stop()
