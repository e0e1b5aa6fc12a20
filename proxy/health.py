"""The proxy's ``/metrics``, ``/healthz`` and ``/readyz`` server (``controllerkit.serve.HealthServer``)."""

from __future__ import annotations

from typing import Callable

from mitmproxy import exceptions


def restart(old, host: str, port: int, ready: Callable[[], tuple[bool, str]], registry):
    """Stop ``old`` (a HealthServer or None) and start one on ``host:port`` (None when port is 0).
    OptionsError when it cannot listen."""
    if old:
        old.stop()
    if not port:
        return None
    from controllerkit.serve import HealthServer

    try:
        server = HealthServer(port, host=host, ready=ready, registry=registry)
        server.start()
    except OSError as e:
        raise exceptions.OptionsError(f"tproxy_metrics_port: cannot listen on {host}:{port}: {e}") from None
    return server
