"""Health and metrics endpoint for the controllers: ``/metrics``, ``/healthz``, ``/readyz``.

Why one small server: Kubernetes probes and Prometheus scrape the same port, and a controller
is *ready* only after its informers have synced (``ready`` callback), while it is *alive* as long
as the process serves HTTP. ``ready`` may return ``True``/``False`` or ``(False, "why")``; the reason is
the 503 body, so ``kubectl describe`` shows why a pod is not ready.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

import prometheus_client
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

__all__ = ["HealthServer", "serve_in_thread", "stop_serving"]


def serve_in_thread(httpd: ThreadingHTTPServer, name: str) -> threading.Thread:
    """Serve ``httpd`` from a daemon thread (the health server's, the webhook's); returns the thread."""
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.2}, name=name, daemon=True)
    thread.start()
    return thread


def stop_serving(httpd: ThreadingHTTPServer, thread: threading.Thread | None) -> None:
    """Stop a server started with :func:`serve_in_thread` and close its socket."""
    httpd.shutdown()
    httpd.server_close()
    if thread is not None:
        thread.join(timeout=5)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class HealthServer:
    """Serve ``/metrics`` (Prometheus text), ``/healthz`` (200 ``ok``) and ``/readyz`` on ``host:port``.

    ``port=0`` picks a free port; read the actual one from ``.port`` after ``start()``.
    """

    def __init__(
        self, port: int, *, host: str = "0.0.0.0", ready: Callable[[], object] = lambda: True, registry=prometheus_client.REGISTRY
    ):
        self.host = host
        self.port = port
        self.ready = ready
        self.registry = registry
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    def _readiness(self) -> tuple[bool, str]:
        try:
            result = self.ready()
        except Exception as exc:  # noqa: BLE001 - a broken check means "not ready", with the reason
            return False, f"readiness check failed: {exc}"
        if isinstance(result, tuple):
            ok = bool(result[0])
            why = str(result[1]) if len(result) > 1 and result[1] else ("ok" if ok else "not ready")
            return ok, why
        return bool(result), "ok" if result else "not ready"

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _send(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def do_GET(self):  # noqa: N802 - http.server naming
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, generate_latest(server.registry), CONTENT_TYPE_LATEST)
                elif path in ("/healthz", "/livez"):
                    self._send(200, b"ok\n")
                elif path == "/readyz":
                    ok, why = server._readiness()
                    self._send(200 if ok else 503, (why + "\n").encode())
                else:
                    self._send(404, b"not found: try /metrics, /healthz, /readyz\n")

            do_HEAD = do_GET

            def log_message(self, *args):  # probes every few seconds would flood the log
                pass

        return Handler

    def start(self) -> "HealthServer":
        if self._httpd is not None:
            return self
        self._httpd = _Server((self.host, self.port), self._handler())
        self.port = self._httpd.server_address[1]
        self._thread = serve_in_thread(self._httpd, f"health-{self.port}")
        return self

    def stop(self) -> None:
        if self._httpd is None:
            return
        stop_serving(self._httpd, self._thread)
        self._httpd = None
