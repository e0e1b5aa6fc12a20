"""The addon's options (``--set tproxy_*``), their checks, and what it requires of mitmproxy's own.

The addon never changes another addon's option. It requires ``connection_strategy=lazy`` (nothing
is dialled before the request hook has decided) and refuses to start, or to switch, otherwise:
mitmproxy's default is ``eager``, so the command line must say ``lazy``, as the chart and
proxy/Dockerfile do. (Were a connection ever opened eagerly, proxy/pinning.py would still refuse
it: fail closed either way.) ``stream_large_bodies``, ``flow_detail`` and ``termlog_verbosity`` are
the operator's; the chart and the image set them (1m, 0, error) and ``proxy_ready`` logs them.
"""

from __future__ import annotations

from mitmproxy import exceptions

from proxy.audit import AuditLog

LOG_LEVELS = ("debug", "info", "warning", "warn", "error", "critical")
REQUIRED = {"connection_strategy": "lazy"}  # mitmproxy option -> the only value the addon runs with
RECOMMENDED = {
    "connection_strategy": "lazy",
    "stream_large_bodies": "1m",
    "flow_detail": 0,
    "termlog_verbosity": "error",
}  # what the chart and proxy/Dockerfile pass


def declare(loader) -> None:
    loader.add_option(
        "tproxy_policy",
        str,
        "",
        "Policy YAML file (watched, hot-reloaded). Empty: the tutorial's built-in policy "
        "(only https://storage.googleapis.com/solutions-public-assets/).",
    )
    loader.add_option(
        "tproxy_identity", str, "", "Pod identity JSON written by podwatch (client IP -> namespace/name/serviceAccount)."
    )
    loader.add_option(
        "tproxy_kubeconfig",
        str,
        "",
        "kubeconfig for watching the namespaces' policy ConfigMaps (the policy's delegation "
        "section); empty: $KUBECONFIG, else the pod's service account (in-cluster).",
    )
    loader.add_option("tproxy_metrics_port", int, 0, "Port for /metrics, /healthz, /readyz (0 = off).")
    loader.add_option("tproxy_metrics_host", str, "0.0.0.0", "Address for the metrics server.")
    loader.add_option("tproxy_audit", str, "-", "Audit log: a file to append JSON lines to, or '-' for stdout.")
    loader.add_option(
        "tproxy_audit_flush_ms",
        int,
        round(AuditLog.FLUSH_SECONDS * 1000),
        "Audit lines are written in batches at most this many ms apart (0: one write per "
        "line; a kill -9 can lose at most this much).",
    )
    loader.add_option("tproxy_log_level", str, "info", "Log level of tproxy's own JSON log lines (stderr).")
    loader.add_option(
        "tproxy_extra_ca",
        str,
        "",
        "PEM file of extra CA certificates trusted for upstream TLS *in addition to* the "
        "public roots (mitmproxy's ssl_verify_upstream_trusted_ca alone replaces them).",
    )


def check_required(options) -> None:
    """OptionsError unless every :data:`REQUIRED` mitmproxy option has its value (options that are
    not registered, as in bare test contexts without mitmproxy's proxyserver addon, are skipped)."""
    for name, value in REQUIRED.items():
        if name in options.keys() and getattr(options, name) != value:
            raise exceptions.OptionsError(
                f"{name}: tproxy needs {name}={value} (nothing may be dialled before a request is decided), "
                f"not {getattr(options, name)!r}; add --set {name}={value}"
            )


def check_log_level(level: str) -> None:
    if level.lower() not in LOG_LEVELS:
        raise exceptions.OptionsError(f"tproxy_log_level: {level!r} is not one of debug, info, warning, error")


def check_audit_flush_ms(ms: int) -> None:
    if not 0 <= ms <= 10_000:
        raise exceptions.OptionsError(f"tproxy_audit_flush_ms: {ms} is not between 0 and 10000 (ms; 0 = unbatched)")


def check_audit_target(target: str) -> None:
    if not target:
        raise exceptions.OptionsError("tproxy_audit: empty; use '-' for stdout or a file path")


def check_metrics_port(port: int) -> None:
    if not 0 <= port <= 65535:
        raise exceptions.OptionsError(f"tproxy_metrics_port: {port} is not a TCP port (0-65535, 0 = off)")


def value(options, name: str):
    """A mitmproxy option's value, or None where it is not registered (bare test contexts)."""
    return getattr(options, name) if name in options.keys() else None
