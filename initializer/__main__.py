"""``python3 -m initializer``: the tproxy Initializer controller.

Flags keep the original Go binary's names and single-dash spelling (``-annotation``,
``-configmap``, ``-initializer-name``, ``-namespace``, ``-require-annotation[=true|false]``) so its
manifests keep working; every flag also has the ``--double-dash`` spelling.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from controllerkit.cli import ExactArgumentParser
from controllerkit.component import Lifecycle, StartupError, fail
from controllerkit.durations import parse_seconds

from .controller import (DEFAULT_ANNOTATION, DEFAULT_CONFIGMAP, DEFAULT_INITIALIZER_NAME, DEFAULT_NAMESPACE,
                         Controller)

DEFAULT_METRICS_PORT = 9180  # chart: tproxy.metrics.initializerPort

_TRUE = {"1", "t", "true", "yes", "on"}
_FALSE = {"0", "f", "false", "no", "off"}


def parse_bool(value: str) -> bool:
    """Go's strconv.ParseBool spellings (plus yes/no/on/off)."""
    v = str(value).strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"invalid boolean {value!r} (use true or false)")


def parse_duration(value: str) -> float:
    """Seconds from a number (``30``) or a Go duration (``30s``, ``1m30s``, ``500ms``)."""
    seconds = parse_seconds(value)
    if seconds is None or not str(value).strip():
        raise argparse.ArgumentTypeError(f"invalid duration {value!r} (e.g. 30, 30s, 1m30s)")
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"duration must be positive, got {value!r}")
    return seconds


def parse_port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid port {value!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0..65535, got {port}")
    return port


def parse_workers(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid worker count {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"workers must be >= 1, got {n}")
    return n


def parse_namespaces(value: str) -> list[str]:
    return [n.strip() for n in value.split(",") if n.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = ExactArgumentParser(
        prog="python3 -m initializer",
        description="tproxy Initializer controller (Kubernetes 1.7 alpha Initializers): injects the tproxy "
                    "egress-lock init container, CA volumes, mounts and env into Deployments whose "
                    "metadata.initializers.pending[0] is ours, and removes itself from pending.",
        epilog="Single-dash Go spellings (-annotation, -require-annotation=true) and double-dash spellings "
               "are both accepted. Metrics, /healthz and /readyz are served on --metrics-port.",
        allow_abbrev=False, add_help=False)
    p.add_argument("-h", "-help", "--help", action="help", help="show this help and exit (Go's -help works too)")

    def both(name: str, **kw):
        p.add_argument("-" + name, "--" + name, **kw)

    both("annotation", default=DEFAULT_ANNOTATION, metavar="KEY",
         help="the annotation that opts a deployment in; also set on the pod template so podwatch "
              "sees the pods (default: %(default)s)")
    both("configmap", default=DEFAULT_CONFIGMAP, metavar="NAME",
         help="the ConfigMap holding the injection config under its 'config' key (default: %(default)s)")
    both("initializer-name", default=DEFAULT_INITIALIZER_NAME, metavar="NAME", dest="initializer_name",
         help="our name in metadata.initializers.pending (default: %(default)s)")
    both("namespace", default=DEFAULT_NAMESPACE, metavar="NS",
         help="namespace of the ConfigMap (default: %(default)s)")
    both("require-annotation", dest="require_annotation", nargs="?", const=True, default=False,
         type=parse_bool, metavar="BOOL",
         help="inject only into deployments whose annotation is \"true\"; others are released untouched "
              "(accepts -require-annotation, -require-annotation=true|false; default: false)")
    both("kubeconfig", default=None, metavar="PATH",
         help="kubeconfig file (default: $KUBECONFIG, else the in-cluster service account)")
    both("metrics-port", dest="metrics_port", type=parse_port, default=DEFAULT_METRICS_PORT, metavar="PORT",
         help="port for /metrics, /healthz and /readyz; 0 disables (default: %(default)s)")
    both("metrics-host", dest="metrics_host", default="0.0.0.0", metavar="ADDR",
         help="address to serve metrics on (default: %(default)s)")
    both("exclude-namespaces", dest="exclude_namespaces", type=parse_namespaces, default=[],
         metavar="NS[,NS...]",
         help="namespaces whose deployments are released without injection (comma-separated)")
    both("root-certs-configmap", dest="root_certs_configmap", default="", metavar="NAME",
         help="the ConfigMap holding the proxy's CA bundle that injected pods mount: before a deployment "
              "in another namespace is released, a copy of it (same name) is created or updated there, "
              "and every copy follows the source when it changes; empty: no copies (default)")
    both("root-certs-namespace", dest="root_certs_namespace", default=None, metavar="NS",
         help="namespace of --root-certs-configmap (default: the -namespace value)")
    both("workers", type=parse_workers, default=2, metavar="N", help="sync worker threads (default: %(default)s)")
    both("resync-period", dest="resync_period", type=parse_duration, default=30.0, metavar="DURATION",
         help="informer resync period: every deployment is looked at again this often, so a missed "
              "event is retried (e.g. 30s, 1m; default: 30s)")
    both("log-level", dest="log_level", default="info", choices=["debug", "info", "warning", "error"],
         help="log level (default: %(default)s)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from controllerkit.kube import ConfigError as KubeConfigError
    from controllerkit.log import setup_logging

    log = setup_logging("initializer", args.log_level)
    try:
        controller = Controller.from_kubeconfig(
            args.kubeconfig, initializer_name=args.initializer_name, annotation=args.annotation,
            configmap=args.configmap, config_namespace=args.namespace,
            require_annotation=args.require_annotation, exclude_namespaces=args.exclude_namespaces,
            workers=args.workers, resync_period=args.resync_period,
            root_certs_configmap=args.root_certs_configmap, root_certs_namespace=args.root_certs_namespace,
            logger=log)
    except KubeConfigError as exc:
        log.error("no_cluster_config", error=str(exc))
        print(f"initializer: {exc}", file=sys.stderr)
        return 1

    life = Lifecycle(log)
    try:
        life.serve_health(args.metrics_port, args.metrics_host, controller.ready, exit_code=1)
    except StartupError as exc:
        return fail(log, "initializer", exc.code, "metrics_port_unavailable", str(exc), port=args.metrics_port)
    controller.start()
    life.wait()
    life.shutdown(controller.stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
