"""``python -m kubesim serve``: run the API server emulator until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import signal
import sys
import threading

import structlog

from controllerkit.log import setup_logging

from .faults import FaultSpec


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--listen",
        default="127.0.0.1:6443",
        metavar="HOST:PORT",
        help="address to serve HTTPS on (port 0 picks a free port; default %(default)s)",
    )
    p.add_argument(
        "--kubeconfig",
        required=True,
        metavar="PATH",
        help="where to write the admin kubeconfig (server, CA data, bearer token) once serving",
    )
    p.add_argument(
        "--k8s-version",
        choices=["1.7", "1.13", "1.28"],
        default="1.7",
        help="which API server to emulate: 1.7 (Initializers), 1.13 (Initializers and webhooks, "
        "v1beta1) or 1.28 (mutating webhooks, v1; no Initializers) (default %(default)s)",
    )
    p.add_argument(
        "--faults",
        default="",
        metavar="SPEC",
        help="fault injection, e.g. 'conflict=0.2,watch_cut_after=50,watch_cut=0.05,gone=0.1,"
        "latency_ms=5,error500=0.01' (see kubesim/README.md)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed for faults and generated names (default 0)")
    p.add_argument(
        "--san",
        action="append",
        default=[],
        metavar="IP_OR_DNS",
        help="extra subjectAltName on the serving certificate (repeatable)",
    )
    p.add_argument(
        "--history",
        "--default-watch-cache-size",
        dest="history",
        type=int,
        default=100,
        help="watch events retained per resource type, like the API server's watch cache; a "
        "watch from an older resourceVersion gets 410 (default %(default)s, as kube-apiserver)",
    )
    p.add_argument(
        "--initializer-config-refresh",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="re-read InitializerConfigurations at most this often (1.7 polled every 1 s; default 0 = on every create)",
    )
    p.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="debug also logs one JSON line per request (method, path, code, user, ms)",
    )


def _configure_logging(level: str) -> None:
    # The shared setup writes to whatever sys.stderr is at each call; binding the stream seen at
    # configure time broke every later log line once that stream was closed (in-process CLI tests).
    setup_logging("kubesim-apiserver", level)


def run(args: argparse.Namespace) -> int:
    from .server import APIServer

    _configure_logging(args.log_level)
    host, sep, port = args.listen.rpartition(":")
    if not sep or not port.isdigit():
        print(f"kubesim serve: --listen must be HOST:PORT, not {args.listen!r}", file=sys.stderr)
        return 2
    host = host.strip("[]") or "127.0.0.1"
    try:
        faults = FaultSpec.parse(args.faults, seed=args.seed)
    except ValueError as e:
        print(f"kubesim serve: --faults: {e}", file=sys.stderr)
        return 2
    srv = APIServer(
        k8s_version=args.k8s_version,
        faults=faults,
        seed=args.seed,
        sans=args.san,
        history=args.history,
        initializer_config_refresh=args.initializer_config_refresh,
        log_requests=args.log_level == "debug",
    )
    try:
        srv.start(host=host, port=int(port))
    except OSError as e:
        print(f"kubesim serve: cannot listen on {args.listen}: {e}", file=sys.stderr)
        return 1
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    srv.write_kubeconfig(args.kubeconfig)
    structlog.get_logger("kubesim.apiserver").info("kubeconfig_written", path=args.kubeconfig, url=srv.url)
    while not done.wait(1.0):
        pass
    srv.stop()
    return 0
