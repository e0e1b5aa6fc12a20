"""The HTTPS API server: its state, metrics and lifecycle. The request path is spread over one module
per concern, combined here:

- :mod:`.transport` - the HTTP(S) server and handler, request bodies, responses;
- :mod:`.routing` - URL to request, the filter chain (authn, impersonation, negotiation, faults, authz);
- :mod:`.authn` - bearer tokens and service-account tokens;
- :mod:`.controllers` - bootstrap objects and the built-in SA/token/namespace controllers;
- :mod:`.defaulting` - decoding and defaulting a request's object, new-object metadata;
- :mod:`.admit` - the admission chain of creates and updates (defaulting -> admission -> validation);
- :mod:`.reads`, :mod:`.writes`, :mod:`.deletion` - the REST verbs;
- :mod:`.initwait` - the Initializers wait of a blocking create;
- :mod:`.clusterip` - cluster-IP allocation.

Design: ``ThreadingHTTPServer`` (one daemon thread per connection, HTTP/1.1 keep-alive, TLS
handshake in the connection's own thread), one :class:`~kubesim.apiserver.store.Store` behind a
global lock, and blocking creates that wait on a per-object watcher queue (no polling). Section
numbers (§) refer to docs/initializers-1.7.md.
"""

from __future__ import annotations

import base64
import os
import secrets
import socket
import ssl
import tempfile
import threading

import structlog

from . import resources, webhooks
from .admit import AdmissionMixin
from .authn import AuthnMixin
from .certs import make_ca_and_serving_cert
from .clusterip import ClusterIPMixin
from .controllers import ControllersMixin
from .defaulting import DefaultingMixin
from .deletion import DeleteVerbsMixin
from .discovery import GIT_VERSIONS
from .faults import FaultSpec
from .initwait import InitWaitMixin
from .rbac import Authorizer, TokenIssuer, User
from .reads import ReadVerbsMixin
from .routing import RoutingMixin
from .store import Store
from .transport import Handler, HTTPServer
from .writes import WriteVerbsMixin

log = structlog.get_logger("kubesim.apiserver")


class APIServer(
    RoutingMixin,
    AuthnMixin,
    ControllersMixin,
    DefaultingMixin,
    AdmissionMixin,
    ReadVerbsMixin,
    WriteVerbsMixin,
    DeleteVerbsMixin,
    InitWaitMixin,
    ClusterIPMixin,
):
    """An in-process Kubernetes 1.7 (or 1.13) API server emulator. See kubesim/README.md."""

    def __init__(
        self,
        k8s_version: str = "1.7",
        faults=None,
        seed: int = 0,
        sans=(),
        history: int = 100,
        initializer_config_refresh: float = 0.0,
        service_cidr: str = "10.96.0.0/12",
        log_requests: bool = False,
    ):
        if k8s_version not in GIT_VERSIONS:
            raise ValueError(f"k8s_version must be one of {sorted(GIT_VERSIONS)}, not {k8s_version!r}")
        self.k8s_version = k8s_version
        self.by_gvr = resources.served(k8s_version)
        self.seed = seed
        self.log_requests = log_requests
        self.sans = list(sans or ())
        self.store = Store(history=history)
        self.authorizer = Authorizer(self.store)
        self.tokens = TokenIssuer(secrets.token_bytes(32))
        self.admin_token = secrets.token_hex(24)
        self.static_tokens: dict[str, User] = {self.admin_token: User("admin", ("system:masters", "system:authenticated"))}
        self.faults = FaultSpec()
        self.set_faults(faults)
        self.initializer_config_refresh = float(initializer_config_refresh)
        import ipaddress

        self.service_net = ipaddress.ip_network(service_cidr)
        self._init_config_cache: tuple[float, list] = (-1e18, [])
        self._name_rng = __import__("random").Random(seed)
        self._name_lock = threading.Lock()
        self.url = ""
        self.ca_file = ""
        self.ca_pem = b""
        self._httpd: HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._tmpdir: tempfile.TemporaryDirectory | None = None
        self._pems: tuple[bytes, bytes, bytes] | None = None
        self.port = 0
        self._stopping = threading.Event()
        self.request_count = 0
        self.write_count = 0
        self._waiting_creates = 0
        self.log_source = None  # (pod, container) -> log file path: the kubelet's side of pods/log
        #: the MutatingAdmissionWebhook plugin (1.9+ servers); ``webhook_dialer(host, port, timeout)`` opens
        #: its connections to a Service's pods (the netns cluster dials inside the node namespace)
        self.webhooks = webhooks.Dispatcher(self) if k8s_version != "1.7" else None
        self.webhook_dialer = None
        self._init_metrics()
        self._bootstrap()

    # ---- metrics ------------------------------------------------------------------------
    def _init_metrics(self) -> None:
        """Prometheus metrics in a registry of this server's own (several servers per process)."""
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.metrics_registry = reg = CollectorRegistry()
        self.m_requests = Counter(
            "kubesim_apiserver_requests_total",
            "API requests by verb, resource and code",
            ["verb", "resource", "code"],
            registry=reg,
        )
        self.m_latency = Histogram(
            "kubesim_apiserver_request_duration_seconds",
            "Time to answer non-watch API requests (blocking creates included)",
            ["verb"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5, 30),
            registry=reg,
        )
        Gauge("kubesim_apiserver_watchers", "Open watches (including blocking creates waiting)", registry=reg).set_function(
            lambda: sum(len(w) for w in self.store.watchers.values())
        )
        Gauge("kubesim_apiserver_blocking_creates_waiting", "Creates waiting for initialization", registry=reg).set_function(
            lambda: self._waiting_creates
        )
        Gauge("kubesim_apiserver_resource_version", "Current global resourceVersion", registry=reg).set_function(
            lambda: self.store.rv
        )

    def metrics_text(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.metrics_registry)

    # ---- lifecycle ----------------------------------------------------------------------
    def start(self, host: str = "127.0.0.1", port: int = 0) -> "APIServer":
        """Serve HTTPS on ``host:port`` (0 = a free port) in a background thread; returns when serving.

        A stopped server can be started again (same objects, CA, tokens; pass ``port=srv.port`` to
        keep the address): that is how tests simulate an API-server restart."""
        if self._httpd is not None:
            raise RuntimeError("APIServer already started")
        if not self._pems:
            self._pems = make_ca_and_serving_cert(self.sans + ([host] if host not in ("0.0.0.0", "::") else []))
        ca, cert, key = self._pems
        self.ca_pem = ca
        self._tmpdir = tempfile.TemporaryDirectory(prefix="kubesim-apiserver-")
        d = self._tmpdir.name
        self.ca_file = os.path.join(d, "ca.crt")
        for name, data in (("ca.crt", ca), ("tls.crt", cert + ca), ("tls.key", key)):
            with open(os.path.join(d, name), "wb") as f:
                f.write(data)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(os.path.join(d, "tls.crt"), os.path.join(d, "tls.key"))
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        server_cls = type("_KubesimHTTPServer", (HTTPServer,), {"address_family": family})
        self._stopping.clear()
        try:
            self._httpd = server_cls((host, port), Handler)
        except OSError:
            self._tmpdir.cleanup()
            self._tmpdir = None
            raise
        self._httpd.ssl_context = ctx
        self._httpd.api = self
        self._httpd.connections = set()
        self._httpd.conn_lock = threading.Lock()
        self.port = self._httpd.server_address[1]
        shown = f"[{host}]" if ":" in host else host
        if host in ("0.0.0.0", "::"):
            shown = "127.0.0.1"
        self.url = f"https://{shown}:{self.port}"
        # Publish the CA into the token secrets created before start (bootstrap).
        self._refresh_token_secret_ca()
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="kubesim-apiserver", daemon=True
        )
        self._thread.start()
        log.info("apiserver_started", url=self.url, k8s_version=self.k8s_version, faults=self.faults.describe() or None)
        return self

    def stop(self) -> None:
        """Stop serving: end watches and waiting creates, drop every open connection (keep-alive
        ones too, so clients see the outage), remove the temporary certificate files."""
        self._stopping.set()
        self.store.stop_all()
        httpd, self._httpd = self._httpd, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
            with httpd.conn_lock:
                conns = list(httpd.connections)
            for handler in conns:
                try:
                    handler.request.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None
        log.info("apiserver_stopped")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    def set_faults(self, faults) -> None:
        if faults is None:
            self.faults = FaultSpec(seed=self.seed)
        elif isinstance(faults, FaultSpec):
            self.faults = faults
        else:
            self.faults = FaultSpec.parse(str(faults), seed=self.seed)

    def kubeconfig(self, token: str | None = None, server: str | None = None) -> dict:
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": "kubesim",
            "preferences": {},
            "clusters": [
                {
                    "name": "kubesim",
                    "cluster": {
                        "server": server or self.url,
                        "certificate-authority-data": base64.b64encode(self.ca_pem).decode(),
                    },
                }
            ],
            "users": [{"name": "kubesim", "user": {"token": token or self.admin_token}}],
            "contexts": [{"name": "kubesim", "context": {"cluster": "kubesim", "user": "kubesim"}}],
        }

    def write_kubeconfig(self, path: str, token: str | None = None, server: str | None = None) -> str:
        """Write a kubeconfig atomically (temp file + rename); admin unless ``token`` is given."""
        import yaml

        d = os.path.dirname(os.path.abspath(path))
        os.makedirs(d, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".kubeconfig-", dir=d)
        with os.fdopen(fd, "w") as f:
            yaml.safe_dump(self.kubeconfig(token, server), f, default_flow_style=False)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
        return path
