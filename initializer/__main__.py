"""``python3 -m initializer``: the tproxy Initializer controller; ``python3 -m initializer webhook``: the same
injection as a mutating admission webhook (initializer/README.md, "Webhook mode").

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

from .controller import DEFAULT_ANNOTATION, DEFAULT_CONFIGMAP, DEFAULT_INITIALIZER_NAME, DEFAULT_NAMESPACE, Controller

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


def _both(p: argparse.ArgumentParser, name: str, **kw) -> None:
    p.add_argument("-" + name, "--" + name, **kw)


def _add_shared(p: argparse.ArgumentParser, *, what: str, left: str) -> None:
    """The flags both modes take, with the same names and defaults."""
    p.add_argument("-h", "-help", "--help", action="help", help="show this help and exit (Go's -help works too)")
    _both(
        p,
        "annotation",
        default=DEFAULT_ANNOTATION,
        metavar="KEY",
        help=f"the annotation that opts {what} in; also set on the pod template so podwatch sees the pods (default: %(default)s)",
    )
    _both(
        p,
        "configmap",
        default=DEFAULT_CONFIGMAP,
        metavar="NAME",
        help="the ConfigMap holding the injection config under its 'config' key (default: %(default)s)",
    )
    _both(p, "namespace", default=DEFAULT_NAMESPACE, metavar="NS", help="namespace of the ConfigMap (default: %(default)s)")
    _both(
        p,
        "require-annotation",
        dest="require_annotation",
        nargs="?",
        const=True,
        default=False,
        type=parse_bool,
        metavar="BOOL",
        help=f'inject only into {what} whose annotation is "true"; others are {left} untouched '
        "(accepts -require-annotation, -require-annotation=true|false; default: false)",
    )
    _both(
        p,
        "kubeconfig",
        default=None,
        metavar="PATH",
        help="kubeconfig file (default: $KUBECONFIG, else the in-cluster service account)",
    )
    _both(
        p,
        "metrics-port",
        dest="metrics_port",
        type=parse_port,
        default=DEFAULT_METRICS_PORT,
        metavar="PORT",
        help="port for /metrics, /healthz and /readyz; 0 disables (default: %(default)s)",
    )
    _both(
        p,
        "metrics-host",
        dest="metrics_host",
        default="0.0.0.0",
        metavar="ADDR",
        help="address to serve metrics on (default: %(default)s)",
    )
    _both(
        p,
        "exclude-namespaces",
        dest="exclude_namespaces",
        type=parse_namespaces,
        default=[],
        metavar="NS[,NS...]",
        help=f"namespaces whose {what} are {left} without injection (comma-separated)",
    )
    _both(
        p,
        "root-certs-configmap",
        dest="root_certs_configmap",
        default="",
        metavar="NAME",
        help="the ConfigMap holding the proxy's CA bundle that injected pods mount: a copy of it (same "
        "name) is kept in every namespace that needs one, following the source when it changes; "
        "empty: no copies (default)",
    )
    _both(
        p,
        "root-certs-namespace",
        dest="root_certs_namespace",
        default=None,
        metavar="NS",
        help="namespace of --root-certs-configmap (default: the -namespace value)",
    )
    _both(
        p,
        "resync-period",
        dest="resync_period",
        type=parse_duration,
        default=30.0,
        metavar="DURATION",
        help="every watched object is looked at again this often, so a missed event is retried (e.g. 30s, 1m; default: 30s)",
    )
    _both(
        p,
        "log-level",
        dest="log_level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="log level (default: %(default)s)",
    )


def build_parser() -> argparse.ArgumentParser:
    p = ExactArgumentParser(
        prog="python3 -m initializer",
        description="tproxy Initializer controller (Kubernetes 1.7 alpha Initializers): injects the tproxy "
        "egress-lock init container, CA volumes, mounts and env into Deployments whose "
        "metadata.initializers.pending[0] is ours, and removes itself from pending.",
        epilog="Single-dash Go spellings (-annotation, -require-annotation=true) and double-dash spellings "
        "are both accepted. Metrics, /healthz and /readyz are served on --metrics-port. "
        "Webhook mode (clusters without Initializers): python3 -m initializer webhook --help.",
        allow_abbrev=False,
        add_help=False,
    )
    _add_shared(p, what="deployments", left="released")
    _both(
        p,
        "initializer-name",
        default=DEFAULT_INITIALIZER_NAME,
        metavar="NAME",
        dest="initializer_name",
        help="our name in metadata.initializers.pending (default: %(default)s)",
    )
    _both(p, "workers", type=parse_workers, default=2, metavar="N", help="sync worker threads (default: %(default)s)")
    return p


def parse_size(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid byte count {value!r}") from None
    if n < 1024:
        raise argparse.ArgumentTypeError(f"must be at least 1024 bytes, got {n}")
    return n


def build_webhook_parser() -> argparse.ArgumentParser:
    from .webhook import DEFAULT_MAX_BODY, DEFAULT_PATH, DEFAULT_PORT

    p = ExactArgumentParser(
        prog="python3 -m initializer webhook",
        description="tproxy mutating admission webhook (clusters without Initializers): answers "
        "AdmissionReviews (admission.k8s.io/v1 and v1beta1) for Deployments and Pods with a JSON "
        "Patch adding the tproxy egress-lock init container, CA volumes, mounts and env, made by "
        "the same mutation as the Initializer. No side effects during admission.",
        epilog="The serving certificate and key are re-read when their files change (new connections get "
        "the new pair; open ones keep theirs). Metrics, /healthz and /readyz are served on "
        "--metrics-port over HTTP.",
        allow_abbrev=False,
        add_help=False,
    )
    _add_shared(p, what="deployments and pods", left="allowed")
    _both(
        p,
        "tls-cert-file",
        dest="tls_cert_file",
        required=True,
        metavar="FILE",
        help="PEM serving certificate (chain) for the webhook (required)",
    )
    _both(
        p,
        "tls-private-key-file",
        dest="tls_private_key_file",
        required=True,
        metavar="FILE",
        help="PEM private key of --tls-cert-file (required)",
    )
    _both(
        p, "port", type=parse_port, default=DEFAULT_PORT, metavar="PORT", help="HTTPS port of the webhook (default: %(default)s)"
    )
    _both(p, "host", default="0.0.0.0", metavar="ADDR", help="address to serve the webhook on (default: %(default)s)")
    _both(
        p, "path", default=DEFAULT_PATH, metavar="PATH", help="URL path the AdmissionReviews are POSTed to (default: %(default)s)"
    )
    _both(
        p,
        "max-request-bytes",
        dest="max_request_bytes",
        type=parse_size,
        default=DEFAULT_MAX_BODY,
        metavar="N",
        help="larger review bodies get 413 unread (default: %(default)s)",
    )
    _both(
        p,
        "cert-reload-interval",
        dest="cert_reload_interval",
        type=parse_duration,
        default=1.0,
        metavar="DURATION",
        help="how often the certificate files are checked for a change (default: 1s)",
    )
    return p


def webhook_main(argv: Sequence[str]) -> int:
    args = build_webhook_parser().parse_args(list(argv))
    if not args.path.startswith("/"):
        build_webhook_parser().error(f"--path must start with '/', got {args.path!r}")
    import ssl

    from controllerkit.kube import ConfigError as KubeConfigError
    from controllerkit.log import setup_logging

    from .webhook import CertReloader, Webhook, WebhookController, WebhookServer

    log = setup_logging("initializer", args.log_level)
    try:
        certs = CertReloader(args.tls_cert_file, args.tls_private_key_file, logger=log)
    except (OSError, ssl.SSLError, ValueError) as exc:
        return fail(
            log,
            "initializer webhook",
            1,
            "serving_certificate_unusable",
            f"cannot load the serving certificate {args.tls_cert_file} with key {args.tls_private_key_file}: {exc}",
        )
    try:
        controller = WebhookController.from_kubeconfig(
            args.kubeconfig,
            annotation=args.annotation,
            configmap=args.configmap,
            config_namespace=args.namespace,
            require_annotation=args.require_annotation,
            exclude_namespaces=args.exclude_namespaces,
            resync_period=args.resync_period,
            root_certs_configmap=args.root_certs_configmap,
            root_certs_namespace=args.root_certs_namespace,
            logger=log,
        )
    except KubeConfigError as exc:
        log.error("no_cluster_config", error=str(exc))
        print(f"initializer webhook: {exc}", file=sys.stderr)
        return 1

    life = Lifecycle(log)
    try:
        life.serve_health(args.metrics_port, args.metrics_host, controller.ready, exit_code=1)
    except StartupError as exc:
        return fail(log, "initializer webhook", exc.code, "metrics_port_unavailable", str(exc), port=args.metrics_port)
    server = WebhookServer(
        Webhook.for_controller(controller),
        certs,
        port=args.port,
        host=args.host,
        path=args.path,
        max_body=args.max_request_bytes,
        logger=log,
    )
    try:
        server.start()
    except OSError as exc:
        life.shutdown()
        return fail(
            log,
            "initializer webhook",
            1,
            "webhook_port_unavailable",
            f"cannot serve the webhook on port {args.port}: {exc}",
            port=args.port,
        )
    certs.start(args.cert_reload_interval)
    controller.start()
    life.wait()
    life.shutdown(server.stop, certs.stop, controller.stop)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["webhook"]:
        return webhook_main(argv[1:])
    args = build_parser().parse_args(argv)
    from controllerkit.kube import ConfigError as KubeConfigError
    from controllerkit.log import setup_logging

    log = setup_logging("initializer", args.log_level)
    try:
        controller = Controller.from_kubeconfig(
            args.kubeconfig,
            initializer_name=args.initializer_name,
            annotation=args.annotation,
            configmap=args.configmap,
            config_namespace=args.namespace,
            require_annotation=args.require_annotation,
            exclude_namespaces=args.exclude_namespaces,
            workers=args.workers,
            resync_period=args.resync_period,
            root_certs_configmap=args.root_certs_configmap,
            root_certs_namespace=args.root_certs_namespace,
            logger=log,
        )
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
