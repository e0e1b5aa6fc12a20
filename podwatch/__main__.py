"""tproxy-podwatch: per-node controller keeping the REDIRECT + FORWARD-guard rules of locked pods.

Flags are compatible with the original Go binary (``-namespace``, ``-annotation``, ``-hostPort``,
single dash, with or without ``=``), plus the new ones in double-dash style.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading

from controllerkit import optin
from controllerkit.cli import ExactArgumentParser
from controllerkit.component import Lifecycle, StartupError, fail

DEFAULT_ANNOTATION = optin.DEFAULT_ANNOTATION


def build_parser() -> argparse.ArgumentParser:
    p = ExactArgumentParser(
        prog="tproxy-podwatch",
        description="Watch the pods scheduled to this node and keep the node's iptables rules equal to "
        "the set of annotated pods: tcp 80/443 REDIRECTed to the proxy's host port, a FORWARD "
        "guard rejecting what escaped the redirect (IPv4 and IPv6, one iptables-restore per "
        "table), and the pod identity file for the proxy.",
    )
    p.add_argument(
        "-namespace",
        "--namespace",
        default="",
        help="only pods of this namespace (default: all namespaces; the original watched one)",
    )
    p.add_argument(
        "-annotation",
        "--annotation",
        default=DEFAULT_ANNOTATION,
        help='pod annotation that must be "true" (default: %(default)s)',
    )
    p.add_argument(
        "-hostPort",
        "--hostPort",
        "--host-port",
        dest="host_port",
        type=int,
        default=8080,
        help="host port the proxy listens on; tcp 80/443 are redirected there (default: %(default)s)",
    )
    p.add_argument(
        "--proxy-ports-file",
        default="",
        help="the proxy workers' port range file (written by python -m proxy.workers, 'A-B' "
        "starting at -hostPort); connections are spread over the range at random. "
        "Missing or unusable: -hostPort alone (default: off)",
    )
    p.add_argument(
        "--node-name",
        default=os.environ.get("NODE_NAME", ""),
        help="this node's name (default: $NODE_NAME; else this host's name, with a warning: "
        "the original chart set no NODE_NAME and podwatch runs with hostNetwork)",
    )
    p.add_argument("--kubeconfig", default=None, help="kubeconfig file (default: $KUBECONFIG, else in-cluster)")
    p.add_argument(
        "--metrics-port", type=int, default=9101, help="port for /metrics, /healthz, /readyz (0 = off; default: %(default)s)"
    )
    p.add_argument("--metrics-host", default="0.0.0.0", help="address for the metrics server")
    p.add_argument(
        "--identity-file",
        default="",
        help="write the pod identity map (podIP -> namespace/name/serviceAccount/labels) here for the proxy; empty = off",
    )
    p.add_argument(
        "--min-sync-interval",
        type=float,
        default=0.1,
        help="seconds between two rule syncs; bursts of events coalesce (default: %(default)s)",
    )
    p.add_argument(
        "--resync-period", type=float, default=30.0, help="full sync every N seconds, repairing drift (default: %(default)s)"
    )
    p.add_argument(
        "--iptables-backend",
        default=os.environ.get("TPROXY_IPTABLES_BACKEND", "auto"),
        help="auto (detect what the node uses, as kube-proxy's iptables-wrapper does), legacy "
        "or nft (default: $TPROXY_IPTABLES_BACKEND, else auto)",
    )
    p.add_argument(
        "--departed-grace",
        type=float,
        default=35.0,
        metavar="SECONDS",
        help="a locked pod whose object vanished without a graceful deletion (a force delete) keeps "
        "its rules this long, while its containers may still run, unless another pod takes its "
        "address; 0 = drop them at once (default: %(default)s)",
    )
    p.add_argument(
        "--cleanup", action="store_true", help="remove every rule, chain and the identity file podwatch owns, then exit"
    )
    p.add_argument("--log-level", default="info", help="debug, info, warning, error (default: %(default)s)")
    glog = p.add_argument_group("accepted for compatibility with the Go binary's glog flags (ignored)")
    for flag in ("-logtostderr", "-alsologtostderr"):
        glog.add_argument(flag, nargs="?", const="true", default=None, metavar="BOOL")
    glog.add_argument("-v", dest="glog_v", default=None, metavar="LEVEL")
    glog.add_argument("-stderrthreshold", default=None, metavar="LEVEL")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from controllerkit.log import setup_logging

    try:
        log = setup_logging("podwatch", args.log_level)
    except ValueError as e:
        print(f"tproxy-podwatch: {e}", file=sys.stderr)
        return 2
    from controllerkit import iptables

    from . import identity, rules

    try:
        setting = iptables.parse_setting(args.iptables_backend, "--iptables-backend / $TPROXY_IPTABLES_BACKEND")
    except iptables.BackendConfigError as e:
        log.error("bad_flags", message=str(e))
        print(f"tproxy-podwatch: {e}", file=sys.stderr)
        return 2

    def choose_backend() -> iptables.Detection:
        # Once, at start: re-detecting later could switch backends under our own rules (mixing).
        chosen = iptables.choose(setting)
        log.info("iptables_backend", setting=setting, **chosen.describe())
        if chosen.ours_elsewhere and not args.cleanup:
            log.warning(
                "tproxy_rules_in_other_backend",
                backends=chosen.ours_elsewhere,
                backend=chosen.backend,
                message="chains of ours exist in a backend we do not use (both are evaluated); --cleanup removes them",
            )
        return chosen

    if args.cleanup:
        chosen = choose_backend()
        errors = {}
        for backend in (chosen.backend, *chosen.ours_elsewhere):  # auto: wherever our chains are
            errors.update(rules.cleanup(backend=backend))
        identity.IdentityFile(args.identity_file, args.node_name).remove()
        for fam, err in errors.items():
            log.error("cleanup_failed", family=fam, error=str(err), offending_lines=err.lines)
        log.info("cleaned_up", ok=not errors)
        return 1 if "ipv4" in errors else 0

    problems = []
    if not args.node_name:
        import socket

        args.node_name = socket.gethostname()
        log.warning(
            "node_name_from_hostname",
            node=args.node_name,
            message="--node-name and $NODE_NAME are unset; assuming the node is named like this host "
            "(set NODE_NAME from the downward API spec.nodeName to be sure)",
        )
    if not args.node_name:
        problems.append("--node-name is required (or set $NODE_NAME, e.g. from the downward API spec.nodeName)")
    if not 1 <= args.host_port <= 65535:
        problems.append(f"-hostPort {args.host_port} is not a TCP port (1-65535)")
    if args.departed_grace < 0:
        problems.append("--departed-grace must be >= 0 seconds")
    if args.min_sync_interval < 0 or args.resync_period <= 0:
        problems.append("--min-sync-interval must be >= 0 and --resync-period > 0")
    if problems:
        for msg in problems:
            log.error("bad_flags", message=msg)
            print(f"tproxy-podwatch: {msg}", file=sys.stderr)
        return 2

    from controllerkit.informer import Informer
    from controllerkit.kube import Client, ConfigError, resource_path

    from .controller import PodWatch

    try:
        client = Client.from_config(args.kubeconfig)
    except ConfigError as e:
        log.error("no_cluster_config", message=str(e))
        print(f"tproxy-podwatch: {e}", file=sys.stderr)
        return 2

    pw = PodWatch(
        node=args.node_name,
        annotation=args.annotation,
        host_port=args.host_port,
        namespace=args.namespace,
        identity_file=args.identity_file,
        min_sync_interval=args.min_sync_interval,
        resync_period=args.resync_period,
        logger=log,
        departed_grace=args.departed_grace,
        ports_file=args.proxy_ports_file,
        backend=choose_backend().backend,
    )
    informer = Informer(
        client,
        resource_path("v1", "pods", args.namespace or None),
        query={"fieldSelector": f"spec.nodeName={args.node_name}"},
        resync_period=0,
        name="pods",
    )
    pw.attach(informer)

    life = Lifecycle(log, signal_event="stopping", signal_fields={"rules": "left in place"})
    life.on_signal(pw.stop)
    try:
        health = life.serve_health(args.metrics_port, args.metrics_host, pw.ready, exit_code=2)
    except StartupError as e:
        return fail(log, "tproxy-podwatch", e.code, "metrics_port_unavailable", str(e), port=args.metrics_port)
    stop = life.stop

    log.info(
        "starting",
        node=args.node_name,
        namespace=args.namespace or "(all)",
        annotation=args.annotation,
        host_port=args.host_port,
        identity_file=args.identity_file or None,
        metrics_port=health.port if health else None,
    )
    informer.start()
    # Nothing is applied before the first full list: a partial view would drop live pods' rules.
    while not informer.wait_for_sync(1.0):
        if stop.is_set():
            informer.stop()
            return 0
        log.info("waiting_for_pod_list")
    worker = threading.Thread(target=pw.run, name="podwatch-sync", daemon=True)
    worker.start()
    while not stop.wait(1.0):
        pass
    life.shutdown(pw.stop, lambda: worker.join(10), informer.stop)
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
