"""Webhook mode: ``python3 -m initializer webhook``, a mutating admission webhook for clusters without
Initializers (1.14 and later; ``v1beta1`` reviews for 1.13-1.15).

Three parts:

* :class:`WebhookController`, the background half (a ``Controller`` subclass sharing its ConfigMap
  watches): the injection config and the proxy's CA bundle are watched by name and hot-reloaded
  exactly as in Initializer mode, and the bundle is copied into every namespace (a namespace informer;
  ``rootcerts.ensure_copy``) *outside* admission, so the webhook has ``sideEffects: None``.
* :class:`CertReloader`: the serving certificate and key files are polled (inode, size, mtime of
  both, following symlinks, so a Secret volume's atomic ``..data`` swap is seen); a changed pair that
  loads becomes the ``SSLContext`` of *new* connections, a pair that does not load is logged and the
  last good one kept. Connections already open keep the context they were accepted with.
* :class:`WebhookServer`: HTTPS, HTTP/1.1 keep-alive, ``POST /mutate`` only. The admission path does
  no API call and no disk I/O: it reads the config and the copy states from memory, so it answers in
  milliseconds, far inside kube-apiserver's 10 s default timeout. Bodies over ``max_body`` get 413
  without being read; a body that is not an AdmissionReview gets 400 with the reason.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Optional

import structlog

from controllerkit import errors
from controllerkit.kube import resource_path
from controllerkit.serve import serve_in_thread, stop_serving

from . import admission, metrics
from .controller import Controller
from .rootcerts import CopyRefused, RootCerts

DEFAULT_PORT = 8443
DEFAULT_PATH = "/mutate"
# kube-apiserver's own limit on a request body is 3 MiB; a review carries object and oldObject.
DEFAULT_MAX_BODY = 7 * 1024 * 1024
# A client that opens a connection and then sends nothing (or trickles) is dropped after this long.
DEFAULT_IO_TIMEOUT = 10.0
# A kept-alive connection may wait this long for its next request. Longer than the 90 s after which
# kube-apiserver's client (Go's transport defaults) closes idle connections itself, so the client, not
# the server, closes them: no request is ever sent on a connection the server is closing.
DEFAULT_IDLE_TIMEOUT = 120.0

PRESENT, PENDING, REFUSED = "present", "pending", "refused"


# ---------------------------------------------------------------------------------------------
# The background half: config, CA bundle and its copies


class WebhookController(Controller):
    """The Initializer controller's config and CA-bundle machinery without the Deployment informer.

    Copies of the bundle go into *every* namespace (except excluded ones and the source's): a webhook
    must not write during admission (``sideEffects: None``, ``dryRun``), and the namespaces that will
    need a copy cannot be known in advance (any Pod, Job, StatefulSet ... may be annotated), so the copy
    is made when the namespace appears, as Istio does for ``istio-ca-root-cert``. ``bundle_check`` (the
    admission path) only reads what this loop last found.
    """

    def __init__(self, client, **kwargs):
        kwargs.setdefault("workers", 1)
        super().__init__(client, **kwargs)
        self._states: dict[str, tuple[str, Optional[CopyRefused]]] = {}
        self._states_lock = threading.Lock()

    # -- namespaces -----------------------------------------------------------------------------
    def _make_informer(self):
        from controllerkit.informer import Informer

        from .controller import _InformerLog

        self._informer_log = _InformerLog(self.log)
        inf = Informer(
            self.client, resource_path("v1", "namespaces"), resync_period=self.resync_period, logger=self._informer_log
        )
        inf.add_handler(self._ns_added, lambda old, new=None: self._ns_added(new if new is not None else old), self._ns_deleted)
        return inf

    def _wants_copy(self, ns: str) -> bool:
        return bool(ns) and ns not in self.exclude_namespaces and ns != self.root_certs_namespace

    def _ns_added(self, obj: dict) -> None:
        ns = (obj.get("metadata") or {}).get("name", "")
        if self._wants_copy(ns) and (obj.get("status") or {}).get("phase") != "Terminating":
            with self._states_lock:
                if ns in self._states:
                    return
                self._states[ns] = (PENDING, None)
            self.copy_queue.add(ns)

    def _ns_deleted(self, obj: dict) -> None:
        with self._states_lock:
            self._states.pop((obj.get("metadata") or {}).get("name", ""), None)

    def copy_namespaces(self) -> set[str]:
        if self.informer is None:
            return set()
        return {
            n
            for n in ((o.get("metadata") or {}).get("name", "") for o in self.informer.store.list(copy=False))
            if self._wants_copy(n)
        }

    # sync_copy is the controller's; these hooks record each namespace's state for bundle_check
    def _copy_refused(self, namespace: str, exc: CopyRefused) -> None:
        self._set_state(namespace, REFUSED, exc)

    def _copy_target_gone(self, exc: errors.ApiError) -> bool:
        return isinstance(exc, errors.NotFound)  # the namespace went away

    def _copy_done(self, namespace: str, certs: RootCerts, outcome: str) -> None:
        super()._copy_done(namespace, certs, outcome)
        self._set_state(namespace, PRESENT, None)

    def _set_state(self, namespace: str, state: str, exc: Optional[CopyRefused]) -> None:
        with self._states_lock:
            self._states[namespace] = (state, exc)

    def bundle_state(self, namespace: str) -> tuple[str, Optional[CopyRefused]]:
        if not self.root_certs_configmap or not self._wants_copy(namespace):
            return PRESENT, None
        with self._states_lock:
            return self._states.get(namespace, (PENDING, None))

    def bundle_check(self, namespace: str, kind: str) -> Optional[tuple[int, str, str]]:
        """For the admission path (no I/O). A refused copy (forbidden, or the name taken by a ConfigMap
        that is not ours) refuses Deployments and Pods with the Initializer's Status. A copy not made yet
        refuses Pods only: a Deployment mounts nothing, and its pods come later (the ReplicaSet
        controller retries a refused pod create, with our message in its FailedCreate event)."""
        state, exc = self.bundle_state(namespace)
        if state == REFUSED and exc is not None:
            return exc.code, exc.reason, str(exc)
        if state == PENDING and kind == "Pod":
            return (
                503,
                "ServiceUnavailable",
                (
                    f"the proxy CA bundle (ConfigMap {namespace}/{self.root_certs_configmap}, a copy of "
                    f"{self._root_certs_ref().split(' ', 1)[1]}) is not confirmed in namespace {namespace} yet: "
                    f"the tproxy webhook copies it when a namespace appears; retry in a few seconds"
                ),
            )
        return None

    # -- readiness and lifecycle ----------------------------------------------------------------
    def ready(self) -> tuple[bool, str]:
        if self._config is None:
            return False, self._config_reason
        if self.root_certs_configmap:
            if self._root_certs is None:
                return False, self._root_certs_reason
            if self.informer is None or not self.informer.has_synced:
                why = self._informer_log.last_error if self._informer_log is not None else None
                return False, "namespace informer has not synced yet" + (f": {why}" if why else "")
        return True, "ok"

    def start(self) -> "WebhookController":
        from controllerkit.workqueue import run_workers

        self.log.info(
            "starting",
            mode="webhook",
            annotation=self.annotation,
            configmap=self._cm_ref(),
            require_annotation=self.require_annotation,
            exclude_namespaces=sorted(self.exclude_namespaces),
            root_certs=self._root_certs_ref() if self.root_certs_configmap else None,
        )
        targets = [(self._config_loop, "webhook-config")]
        if self.root_certs_configmap:
            targets += [(self._root_certs_loop, "webhook-root-certs"), (self._copies_loop, "webhook-root-certs-copies")]
        for target, name in targets:
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        if self.root_certs_configmap:
            self.informer = informer = self._make_informer()
            informer.start()
            self._threads += run_workers(self.copy_queue, self.sync_copy, workers=self.workers, stop=self._stop, logger=self.log)
        return self


# ---------------------------------------------------------------------------------------------
# The serving certificate


def _signature(*paths: str) -> tuple:
    out = []
    for p in paths:
        st = os.stat(p)
        out.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(out)


class CertReloader:
    """The ``SSLContext`` for new connections, rebuilt when the certificate or key files change.

    ``CertReloader(cert, key)`` loads them at once (``ssl.SSLError``/``OSError`` on failure: the server
    must not start without a certificate). ``check()`` looks at the files again; ``start(interval)``
    does so on a thread.
    """

    def __init__(self, cert_file: str, key_file: str, *, logger=None):
        self.cert_file = cert_file
        self.key_file = key_file
        self.log = logger or structlog.get_logger("initializer")
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._sig = _signature(cert_file, key_file)
        self._failed_sig: Optional[tuple] = None
        self._context = self._load()
        metrics.WEBHOOK_CERT_LOADED.set(time.time())

    def _load(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.cert_file, self.key_file)
        ctx.set_alpn_protocols(["http/1.1"])
        return ctx

    @property
    def context(self) -> ssl.SSLContext:
        with self._lock:
            return self._context

    def check(self) -> bool:
        """Reload if either file changed. True when a new context was installed."""
        try:
            sig = _signature(self.cert_file, self.key_file)
        except OSError as exc:
            if self._failed_sig != ("missing", str(exc)):
                self._failed_sig = ("missing", str(exc))
                metrics.WEBHOOK_CERT_ERRORS.inc()
                self.log.error(
                    "serving_certificate_unreadable",
                    error=str(exc),
                    cert_file=self.cert_file,
                    key_file=self.key_file,
                    hint="the last good certificate stays in use",
                )
            return False
        if sig == self._sig or sig == self._failed_sig:
            return False
        try:
            ctx = self._load()
        except (ssl.SSLError, OSError, ValueError) as exc:
            # e.g. the certificate written before its key: keep serving the old pair, try the next change
            self._failed_sig = sig
            metrics.WEBHOOK_CERT_ERRORS.inc()
            self.log.error(
                "serving_certificate_reload_failed",
                error=str(exc),
                cert_file=self.cert_file,
                key_file=self.key_file,
                hint="the last good certificate stays in use",
            )
            return False
        with self._lock:
            self._context = ctx
            self._sig = sig
            self._failed_sig = None
        metrics.WEBHOOK_CERT_RELOADS.inc()
        metrics.WEBHOOK_CERT_LOADED.set(time.time())
        self.log.info("serving_certificate_reloaded", cert_file=self.cert_file)
        return True

    def start(self, interval: float = 1.0) -> "CertReloader":
        def loop():
            while not self._stop.wait(interval):
                self.check()

        self._thread = threading.Thread(target=loop, name="webhook-cert-reload", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)


# ---------------------------------------------------------------------------------------------
# The HTTPS server


class _TLSServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False

    def __init__(self, address, handler, context_of: Callable[[], ssl.SSLContext], io_timeout: float):
        self._context_of = context_of
        self._io_timeout = io_timeout
        super().__init__(address, handler)

    def get_request(self):
        sock, addr = self.socket.accept()
        sock.settimeout(self._io_timeout)
        # The context current *now*: a rotated certificate applies to this and later connections only.
        # The handshake runs on the connection's own thread (first read), never on the accept loop.
        return self._context_of().wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr


class Webhook:
    """The admission logic between the HTTP layer and ``admission.review``: config, opt-in flags, the
    CA-bundle check, metrics and the audit line."""

    def __init__(
        self,
        *,
        config: Callable,
        annotation: str,
        require_annotation: bool,
        exclude_namespaces=(),
        bundle_check=None,
        config_reason: Callable[[], str] = lambda: "",
        logger=None,
    ):
        self.config = config
        self.annotation = annotation
        self.require_annotation = require_annotation
        self.exclude_namespaces = frozenset(n for n in exclude_namespaces if n)
        self.bundle_check = bundle_check
        self.config_reason = config_reason
        self.log = logger or structlog.get_logger("initializer")

    @classmethod
    def for_controller(cls, c: WebhookController) -> "Webhook":
        return cls(
            config=lambda: c.config,
            annotation=c.annotation,
            require_annotation=c.require_annotation,
            exclude_namespaces=c.exclude_namespaces,
            bundle_check=c.bundle_check if c.root_certs_configmap else None,
            config_reason=lambda: c._config_reason,
            logger=c.log,
        )

    def handle(self, body: bytes) -> dict:
        """One review body -> the AdmissionReview to answer (``admission.BadReview`` for a 400)."""
        start = time.monotonic()
        rv = admission.parse_review(body)
        try:
            answer = admission.review(
                rv,
                self.config(),
                annotation=self.annotation,
                require_annotation=self.require_annotation,
                exclude_namespaces=self.exclude_namespaces,
                config_reason=self.config_reason(),
                bundle_check=self.bundle_check,
            )
        except Exception as exc:  # noqa: BLE001 - a bug must refuse the object, not let it through unlocked
            self.log.exception("review_failed", uid=rv.uid, kind=rv.kind, namespace=rv.namespace, name=rv.name)
            answer = admission._deny(
                f"internal error in the tproxy webhook: {type(exc).__name__}: {exc}", code=500, reason="InternalError"
            )
        out = admission.response(rv, rv.uid, answer)
        elapsed = time.monotonic() - start
        metrics.WEBHOOK_REVIEWS.labels(rv.kind, rv.operation, answer.outcome).inc()
        metrics.WEBHOOK_LATENCY.observe(elapsed)
        log = self.log.warning if not answer.allowed else self.log.info
        log(
            "admission_review",
            uid=rv.uid,
            kind=f"{rv.group + '/' if rv.group else ''}{rv.version}/{rv.kind}",
            namespace=rv.namespace,
            name=rv.name,
            operation=rv.operation,
            dry_run=rv.dry_run,
            allowed=answer.allowed,
            outcome=answer.outcome,
            reason=answer.reason,
            patch_ops=len(answer.patch),
            patch_bytes=len(answer.patch_bytes),
            review_version=rv.api_version,
            duration_ms=round(elapsed * 1000, 3),
        )
        return out


class WebhookServer:
    """``WebhookServer(webhook, certs, port=8443).start()``; ``.port`` after start (``port=0`` picks one)."""

    def __init__(
        self,
        webhook: Webhook,
        certs: CertReloader,
        *,
        port: int = DEFAULT_PORT,
        host: str = "0.0.0.0",
        path: str = DEFAULT_PATH,
        max_body: int = DEFAULT_MAX_BODY,
        io_timeout: float = DEFAULT_IO_TIMEOUT,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        logger=None,
    ):
        self.webhook = webhook
        self.certs = certs
        self.host = host
        self.port = port
        self.path = path
        self.max_body = max_body
        self.io_timeout = io_timeout
        self.idle_timeout = idle_timeout
        self.log = logger or structlog.get_logger("initializer")
        self._httpd: Optional[_TLSServer] = None
        self._thread: Optional[threading.Thread] = None

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive: kube-apiserver reuses its connections

            def _send(self, code: int, body: bytes, ctype: str = "application/json", close: bool = False) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                if close:
                    self.send_header("Connection", "close")
                    self.close_connection = True
                self.end_headers()
                self.wfile.write(body)

            def _error(self, code: int, reason: str, message: str, close: bool = False) -> None:
                metrics.WEBHOOK_BAD_REQUESTS.labels(reason).inc()
                server.log.warning(
                    "admission_request_rejected",
                    code=code,
                    reason=reason,
                    error=message,
                    path=self.path,
                    client=self.client_address[0],
                )
                self._send(code, (f"tproxy webhook: {message}\n").encode(), "text/plain; charset=utf-8", close)

            def do_POST(self):  # noqa: N802 - http.server naming
                if self.path.split("?", 1)[0] != server.path:
                    self._drain_or_close()
                    return self._error(
                        404, "not_found", f"no webhook at {self.path.split('?', 1)[0]!r}; POST AdmissionReviews to {server.path}"
                    )
                if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                    return self._error(411, "length_required", "send the review with a Content-Length", True)
                try:
                    length = int(self.headers.get("Content-Length", ""))
                    if length < 0:
                        raise ValueError
                except ValueError:
                    return self._error(411, "length_required", "a Content-Length header is required", True)
                if length > server.max_body:
                    # not read: the connection is closed instead
                    return self._error(
                        413, "too_large", f"the body is {length} bytes, more than the {server.max_body} accepted", True
                    )
                body = self.rfile.read(length)
                if len(body) != length:
                    return self._error(400, "truncated", f"the body ended after {len(body)} of {length} bytes", True)
                ctype = (self.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
                if ctype != "application/json":
                    return self._error(415, "content_type", f"Content-Type must be application/json, got {ctype or 'none'!r}")
                try:
                    out = server.webhook.handle(body)
                except admission.BadReview as exc:
                    return self._error(400, "malformed", f"malformed AdmissionReview: {exc}")
                except Exception as exc:  # noqa: BLE001 - answer, never drop the connection silently
                    server.log.exception("review_crashed", error=str(exc))
                    return self._error(500, "internal", f"internal error: {type(exc).__name__}: {exc}")
                self._send(200, json.dumps(out, separators=(",", ":")).encode())

            def _drain_or_close(self):
                try:
                    length = int(self.headers.get("Content-Length", "0"))
                except ValueError:
                    length = -1
                if 0 <= length <= server.max_body:
                    self.rfile.read(length)
                else:
                    self.close_connection = True

            def do_GET(self):  # noqa: N802
                if self.path.split("?", 1)[0] in ("/healthz", "/livez"):
                    return self._send(200, b"ok\n", "text/plain; charset=utf-8")
                return self._error(
                    405 if self.path.split("?", 1)[0] == server.path else 404,
                    "method",
                    f"{self.command} {self.path.split('?', 1)[0]}: POST AdmissionReviews to {server.path}",
                )

            served = False

            def parse_request(self):
                # the request has begun: its headers and body must come within the I/O timeout
                self.connection.settimeout(server.io_timeout)
                return super().parse_request()

            def handle_one_request(self):
                if self.served:  # kept alive: waiting for the next request (the handshake had io_timeout)
                    self.connection.settimeout(server.idle_timeout)
                self.served = True
                try:
                    super().handle_one_request()
                except (ssl.SSLError, socket.timeout, ConnectionError, OSError) as exc:
                    # a failed handshake, an idle keep-alive timing out, a reset: this connection only
                    server.log.debug("webhook_connection_closed", client=self.client_address[0], error=str(exc))
                    self.close_connection = True

            def log_message(self, *args):  # one audit line per review instead
                pass

        return Handler

    def start(self) -> "WebhookServer":
        self._httpd = _TLSServer((self.host, self.port), self._handler(), lambda: self.certs.context, self.io_timeout)
        self.port = self._httpd.server_address[1]
        self._thread = serve_in_thread(self._httpd, f"webhook-{self.port}")
        self.log.info("serving_webhook", port=self.port, path=self.path, cert_file=self.certs.cert_file)
        return self

    def stop(self) -> None:
        if self._httpd is None:
            return
        stop_serving(self._httpd, self._thread)
        self._httpd = None
