"""The HTTPS API server: routing, authn/authz, the REST verbs and the Initializers semantics.

Design: ``ThreadingHTTPServer`` (one daemon thread per connection, HTTP/1.1 keep-alive, TLS
handshake in the connection's own thread), one :class:`~kubesim.apiserver.store.Store` behind a
global lock, and blocking creates that wait on a per-object watcher queue (no polling). Section
numbers (§) refer to docs/initializers-1.7.md.
"""
from __future__ import annotations

import base64
import copy
import datetime
import http.server
import json
import os
import queue
import secrets
import select
import socket
import ssl
import tempfile
import threading
import time
import uuid
from urllib.parse import parse_qsl, unquote, urlsplit

import structlog

from controllerkit import durations as _durations

from . import (admission, discovery, errors, impersonation, logs_subresource, openapi, pagination, patch as patchlib,
               protobuf, resources, reviews, scale, selectors, tables, validation, webhooks, workloads)
from .certs import make_ca_and_serving_cert
from .errors import APIError, FieldError
from .faults import FaultSpec
from .rbac import Authorizer, TokenIssuer, User, forbidden_message, forbidden_prefix, sa_user
from .resources import BY_GVR, RESOURCES, ResourceType
from .store import STOP, AlreadyExists, Gone, Store, Watcher, is_uninitialized

log = structlog.get_logger("kubesim.apiserver")

MAX_BODY = 3 * 1024 * 1024
DEFAULT_CREATE_TIMEOUT = 30.0
DEFAULT_WATCH_TIMEOUT = 1800.0
GIT_VERSIONS = discovery.GIT_VERSIONS
_TOKEN_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"   # k8s utilrand alphanums
# one Go-duration parser for the components and the emulator (re-exported: kubesim callers import it here)
parse_go_duration = _durations.parse_go_duration
format_go_duration = _durations.format_go_duration


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _truthy(v: str | None) -> bool:
    return v is not None and v.lower() not in ("", "false", "0")


class Request:
    """What the request-info resolver extracted from the URL (like apiserver's RequestInfo)."""

    def __init__(self):
        self.verb = ""
        self.rt: ResourceType | None = None
        self.namespace = ""
        self.name = ""
        self.subresource = ""
        self.query: dict[str, str] = {}


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server_version = "kubesim"
    sys_version = ""

    def setup(self):
        with self.server.conn_lock:
            self.server.connections.add(self)
        ctx = self.server.ssl_context
        if ctx is not None:
            self.request.settimeout(30)
            try:
                self.request = ctx.wrap_socket(self.request, server_side=True)
            except (ssl.SSLError, OSError):
                with self.server.conn_lock:
                    self.server.connections.discard(self)
                self.request.close()
                raise
            self.request.settimeout(None)
        super().setup()

    def handle(self):
        try:
            super().handle()
        except (ConnectionError, ssl.SSLError, TimeoutError, OSError):
            pass

    def finish(self):
        try:
            super().finish()
        except OSError:
            pass
        with self.server.conn_lock:
            self.server.connections.discard(self)

    def log_message(self, fmt, *args):  # silence http.server's stderr lines
        pass

    def do_GET(self):
        self.server.api.dispatch(self, "GET")

    def do_POST(self):
        self.server.api.dispatch(self, "POST")

    def do_PUT(self):
        self.server.api.dispatch(self, "PUT")

    def do_PATCH(self):
        self.server.api.dispatch(self, "PATCH")

    def do_DELETE(self):
        self.server.api.dispatch(self, "DELETE")


class _HTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024

    def handle_error(self, request, client_address):
        if getattr(self, "api", None) is not None and self.api.log_requests:
            log.info("connection_error", client=str(client_address))


class APIServer:
    """An in-process Kubernetes 1.7 (or 1.13) API server emulator. See kubesim/README.md."""

    def __init__(self, k8s_version: str = "1.7", faults=None, seed: int = 0, sans=(),
                 history: int = 100, initializer_config_refresh: float = 0.0,
                 service_cidr: str = "10.96.0.0/12", log_requests: bool = False):
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
        self.static_tokens: dict[str, User] = {
            self.admin_token: User("admin", ("system:masters", "system:authenticated"))}
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
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._tmpdir: tempfile.TemporaryDirectory | None = None
        self._pems: tuple[bytes, bytes, bytes] | None = None
        self.port = 0
        self._stopping = threading.Event()
        self.request_count = 0
        self.write_count = 0
        self._waiting_creates = 0
        self.log_source = None      # (pod, container) -> log file path: the kubelet's side of pods/log
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
        self.m_requests = Counter("kubesim_apiserver_requests_total", "API requests by verb, resource and code",
                                  ["verb", "resource", "code"], registry=reg)
        self.m_latency = Histogram("kubesim_apiserver_request_duration_seconds",
                                   "Time to answer non-watch API requests (blocking creates included)", ["verb"],
                                   buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5, 30),
                                   registry=reg)
        Gauge("kubesim_apiserver_watchers", "Open watches (including blocking creates waiting)",
              registry=reg).set_function(lambda: sum(len(w) for w in self.store.watchers.values()))
        Gauge("kubesim_apiserver_blocking_creates_waiting", "Creates waiting for initialization",
              registry=reg).set_function(lambda: self._waiting_creates)
        Gauge("kubesim_apiserver_resource_version", "Current global resourceVersion",
              registry=reg).set_function(lambda: self.store.rv)

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
        server_cls = type("_KubesimHTTPServer", (_HTTPServer,), {"address_family": family})
        self._stopping.clear()
        try:
            self._httpd = server_cls((host, port), _Handler)
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
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="kubesim-apiserver", daemon=True)
        self._thread.start()
        log.info("apiserver_started", url=self.url, k8s_version=self.k8s_version,
                 faults=self.faults.describe() or None)
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

    def add_token(self, token: str, user: str, groups=()) -> None:
        """Register a static bearer token for a plain user (tests of User/Group RBAC subjects)."""
        self.static_tokens[token] = User(user, tuple(groups) + ("system:authenticated",))

    def kubeconfig(self, token: str | None = None, server: str | None = None) -> dict:
        return {
            "apiVersion": "v1", "kind": "Config", "current-context": "kubesim", "preferences": {},
            "clusters": [{"name": "kubesim", "cluster": {
                "server": server or self.url,
                "certificate-authority-data": base64.b64encode(self.ca_pem).decode()}}],
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

    def service_account_token(self, namespace: str, name: str) -> str:
        """The token of ServiceAccount ``namespace/name`` from its token Secret (both created if missing)."""
        with self.store.lock:
            if self.store.get("namespaces", "", namespace) is None:
                self._create_internal(BY_GVR[("", "v1", "namespaces")], {"metadata": {"name": namespace}})
            sa = self.store.get("serviceaccounts", namespace, name)
            if sa is None:
                self._create_internal(BY_GVR[("", "v1", "serviceaccounts")],
                                      {"metadata": {"name": name, "namespace": namespace}})
                sa = self.store.get("serviceaccounts", namespace, name)
            for ref in sa.get("secrets") or []:
                sec = self.store.get("secrets", namespace, ref.get("name", ""))
                if sec and sec.get("type") == "kubernetes.io/service-account-token":
                    return base64.b64decode(sec["data"]["token"]).decode()
            secret = self._issue_token_secret(sa)
            return base64.b64decode(secret["data"]["token"]).decode()

    # ---- bootstrap and the built-in controllers ----------------------------------------
    def _bootstrap(self) -> None:
        cr = BY_GVR[("rbac.authorization.k8s.io", "v1beta1", "clusterroles")]
        crb = BY_GVR[("rbac.authorization.k8s.io", "v1beta1", "clusterrolebindings")]
        self._create_internal(cr, {"metadata": {"name": "cluster-admin",
                                                "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}},
                                   "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]},
                                             {"nonResourceURLs": ["*"], "verbs": ["*"]}]})
        self._create_internal(crb, {"metadata": {"name": "cluster-admin",
                                                 "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}},
                                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                                "name": "cluster-admin"},
                                    "subjects": [{"kind": "Group", "name": "system:masters",
                                                  "apiGroup": "rbac.authorization.k8s.io"}]})
        ns = BY_GVR[("", "v1", "namespaces")]
        for name in ("default", "kube-system", "kube-public"):
            self._create_internal(ns, {"metadata": {"name": name}})

    def _random_suffix(self, n: int = 5) -> str:
        with self._name_lock:
            return "".join(self._name_rng.choice(_TOKEN_ALPHABET) for _ in range(n))

    def _issue_token_secret(self, sa: dict) -> dict:
        """The 1.7 token controller: Secret ``<sa>-token-<5 chars>`` listed in the SA's ``secrets``."""
        ns, name, uid = sa["metadata"]["namespace"], sa["metadata"]["name"], sa["metadata"]["uid"]
        secret_rt = BY_GVR[("", "v1", "secrets")]
        sa_rt = BY_GVR[("", "v1", "serviceaccounts")]
        with self.store.lock:
            while True:
                secret_name = f"{name}-token-{self._random_suffix()}"
                if self.store.get("secrets", ns, secret_name) is None:
                    break
            token = self.tokens.issue(ns, name, uid, secret_name)
            b64 = lambda b: base64.b64encode(b if isinstance(b, bytes) else b.encode()).decode()
            secret = self._create_internal(secret_rt, {
                "metadata": {"name": secret_name, "namespace": ns, "annotations": {
                    "kubernetes.io/service-account.name": name, "kubernetes.io/service-account.uid": uid}},
                "type": "kubernetes.io/service-account-token",
                "data": {"token": b64(token), "ca.crt": b64(self.ca_pem), "namespace": b64(ns)}})
            cur = copy.deepcopy(self.store.get("serviceaccounts", ns, name))
            cur.setdefault("secrets", []).append({"name": secret_name})
            self.store.update(sa_rt.storage, cur)
            return secret

    def _refresh_token_secret_ca(self) -> None:
        ca_b64 = base64.b64encode(self.ca_pem).decode()
        with self.store.lock:
            items, _ = self.store.list("secrets")
            for sec in items:
                if sec.get("type") == "kubernetes.io/service-account-token" and sec["data"].get("ca.crt") != ca_b64:
                    new = copy.deepcopy(sec)
                    new["data"]["ca.crt"] = base64.b64encode(self.ca_pem).decode()
                    self.store.update("secrets", new)

    def _after_create(self, rt: ResourceType, obj: dict) -> None:
        """Controllers that react to creations: the ServiceAccount controller (a ``default`` SA in
        every new namespace) and the token controller (a token Secret for every new SA)."""
        if rt.storage == "namespaces":
            self._create_internal(BY_GVR[("", "v1", "serviceaccounts")],
                                  {"metadata": {"name": "default", "namespace": obj["metadata"]["name"]}})
        elif rt.storage == "serviceaccounts" and not obj.get("secrets"):
            self._issue_token_secret(obj)

    def _after_delete(self, rt: ResourceType, obj: dict) -> None:
        if rt.storage == "namespaces":
            ns = obj["metadata"]["name"]
            with self.store.lock:
                for r in {r.storage for r in RESOURCES if r.namespaced}:
                    items, _ = self.store.list(r, ns)
                    for item in items:
                        self.store.delete(r, ns, item["metadata"]["name"])
        elif rt.storage == "serviceaccounts":
            ns, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
            with self.store.lock:
                items, _ = self.store.list("secrets", ns)
                for sec in items:
                    ann = sec["metadata"].get("annotations") or {}
                    if (sec.get("type") == "kubernetes.io/service-account-token"
                            and ann.get("kubernetes.io/service-account.name") == name):
                        self.store.delete("secrets", ns, sec["metadata"]["name"])

    def _create_internal(self, rt: ResourceType, obj: dict) -> dict:
        obj = copy.deepcopy(obj)
        obj.setdefault("metadata", {})
        self._fill_new_meta(rt, obj)
        rt.apply_defaults(obj, self.k8s_version)
        stored = self.store.create(rt.storage, obj)
        self._after_create(rt, stored)
        return stored

    def _fill_new_meta(self, rt: ResourceType, obj: dict) -> None:
        meta = obj["metadata"]
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = _now()
        meta.pop("resourceVersion", None)
        meta.pop("selfLink", None)
        meta.pop("deletionTimestamp", None)
        if rt.tracks_generation:
            meta["generation"] = 1
        else:
            meta.pop("generation", None)
        obj.pop("apiVersion", None)
        obj.pop("kind", None)

    # ---- authentication -----------------------------------------------------------------
    def authenticate(self, header: str | None) -> User | None:
        # The scheme is case-insensitive, as in the real bearer-token authenticator: the official
        # client's in-cluster loader sends "bearer <token>".
        if not header or header[:7].lower() != "bearer ":
            return None
        token = header[7:].strip()
        user = self.static_tokens.get(token)
        if user is not None:
            return user
        claims = self.tokens.verify(token)
        if not claims:
            return None
        ns = claims.get("kubernetes.io/serviceaccount/namespace", "")
        sa_name = claims.get("kubernetes.io/serviceaccount/service-account.name", "")
        secret = self.store.get("secrets", ns, claims.get("kubernetes.io/serviceaccount/secret.name", ""))
        sa = self.store.get("serviceaccounts", ns, sa_name)
        if secret is None or sa is None:
            return None
        if sa["metadata"]["uid"] != claims.get("kubernetes.io/serviceaccount/service-account.uid"):
            return None
        try:
            if base64.b64decode(secret.get("data", {}).get("token", "")).decode() != token:
                return None
        except ValueError:
            return None
        return sa_user(ns, sa_name)

    def _authorize(self, user: User, verb: str, rt: ResourceType, subresource: str, name: str, ns: str):
        if not self.authorizer.allowed(user, verb, rt.group, rt.name, subresource, name, ns):
            message = forbidden_message(self.k8s_version, user, verb, rt.group, rt.name, subresource, name, ns)
            if self.k8s_version == "1.7":
                # 1.7's authorization filter (responsewriters.Forbidden) wrote text/plain, not a
                # Status: clients then report `... (get pods)`. RBAC gave no reason, so no suffix.
                raise errors.PlainError(403, message.split(" is forbidden: ", 1)[1])
            raise errors.forbidden(rt.name, rt.group, name, message)

    def _can_initialize(self, user: User, rt: ResourceType, name: str, ns: str, what: str) -> None:
        """The plugin's canInitialize (§3): verb ``initialize`` on the request's resource.

        Denied -> ``errors.NewForbidden(gr, name, fmt.Errorf("%s: %s", message, reason))``; RBAC's
        reason for a denial is empty (1.7 and 1.13 alike), hence the message ends in ``": "``."""
        if not self.authorizer.allowed(user, "initialize", rt.group, rt.name, "", name, ns):
            raise errors.forbidden(rt.name, rt.group, name, forbidden_prefix(rt.qualified, name) + f"{what}: ")

    # ---- HTTP plumbing ------------------------------------------------------------------
    def dispatch(self, h: _Handler, method: str) -> None:
        self.request_count += 1
        h.kubesim_req = None
        h.kubesim_code = 0
        h.kubesim_proto = False
        t0 = time.perf_counter()
        try:
            self._dispatch(h, method)
        except errors.PlainError as e:
            self._send_text(h, e.code, e.message)
        except APIError as e:
            self._send_json(h, e.code, e.status())
        except _Streamed:
            pass
        except (ConnectionError, ssl.SSLError, BrokenPipeError):
            h.close_connection = True
        except Exception as e:  # a bug: answer 500 and keep serving
            log.exception("request_failed", method=method, path=h.path)
            try:
                self._send_json(h, 500, errors.internal(f"{type(e).__name__}: {e}").status())
            except OSError:
                h.close_connection = True
        finally:
            req = h.kubesim_req
            elapsed = time.perf_counter() - t0
            if req is not None:
                self.m_requests.labels(req.verb, req.rt.qualified, str(h.kubesim_code)).inc()
                if req.verb != "watch":
                    self.m_latency.labels(req.verb).observe(elapsed)
            if self.log_requests:
                log.info("request", method=method, path=h.path, code=h.kubesim_code,
                         user=getattr(h, "kubesim_user", None), ms=round(elapsed * 1000, 2))

    def _send_text(self, h: _Handler, code: int, text: str) -> None:
        h.kubesim_code = code
        data = text.encode()
        h.send_response(code)
        h.send_header("Content-Type", "text/plain")
        h.send_header("X-Content-Type-Options", "nosniff")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def _send_json(self, h: _Handler, code: int, body, extra_headers=None) -> None:
        h.kubesim_code = code
        data = protobuf.encode_object(body) if getattr(h, "kubesim_proto", False) and isinstance(body, dict) else None
        ctype = protobuf.MEDIA_TYPE if data is not None else "application/json"
        if data is None:
            data = json.dumps(body, separators=(",", ":")).encode()
        h.send_response(code)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(data)))
        for k, v in (extra_headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(data)

    def _slurp_body(self, h: _Handler) -> None:
        """Read the request body before anything can fail, so an error answer never leaves unread
        bytes on a keep-alive connection. Oversized bodies are refused unread (413, connection closed)."""
        h.raw_body = b""
        if h.headers.get("Transfer-Encoding", "").lower() == "chunked":
            h.close_connection = True
            raise APIError(411, "BadRequest", "chunked request bodies are not supported; send Content-Length")
        length = h.headers.get("Content-Length")
        try:
            n = int(length or 0)
        except ValueError:
            h.close_connection = True
            raise errors.bad_request(f"invalid Content-Length {length!r}") from None
        if n > MAX_BODY:
            # Drain (without keeping) a body up to 64 MiB so the client sees the 413 instead of a
            # reset while it is still sending; then drop the connection.
            h.close_connection = True
            left = n if n <= 64 * 1024 * 1024 else 0
            while left > 0:
                got = h.rfile.read(min(left, 1 << 16))
                if not got:
                    break
                left -= len(got)
            raise APIError(413, "RequestEntityTooLarge", f"Request entity too large: limit is {MAX_BODY}")
        if n:
            h.raw_body = h.rfile.read(n)

    def _read_body(self, h: _Handler):
        raw = getattr(h, "raw_body", b"")
        if not raw.strip():
            raise errors.bad_request("the body of the request was empty")
        ctype = (h.headers.get("Content-Type") or "").split(";")[0].strip()
        if ctype == protobuf.MEDIA_TYPE:
            return protobuf.decode_object(raw)[2]
        if ctype in ("application/yaml", "application/x-yaml", "text/yaml"):
            import yaml
            try:
                return yaml.safe_load(raw)
            except yaml.YAMLError as e:
                raise errors.bad_request(f"the object provided is unrecognized: yaml parse error: {e}") from None
        try:
            return json.loads(raw)
        except ValueError as e:
            raise errors.bad_request(f"the object provided is unrecognized: couldn't get version/kind; "
                                     f"json parse error: {e}") from None

    def _dispatch(self, h: _Handler, method: str) -> None:
        parts = urlsplit(h.path)
        path = parts.path.rstrip("/") or "/"
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        if method != "GET":
            self._slurp_body(h)
        if path == "/metrics" and method == "GET":
            data = self.metrics_text()
            h.send_response(200)
            h.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            h.wfile.write(data)
            return
        if path in ("/healthz", "/healthz/ping", "/livez", "/readyz"):
            data = b"ok"
            h.send_response(200)
            h.send_header("Content-Type", "text/plain; charset=utf-8")
            h.send_header("Content-Length", "2")
            h.end_headers()
            h.wfile.write(data)
            return
        if path == "/openapi/v2" and method == "GET" and openapi.serve(h, self.k8s_version, GIT_VERSIONS[self.k8s_version]):
            return
        discovery = self._discovery(path, h)
        if discovery is not None:
            if method != "GET":
                raise APIError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
            self._send_json(h, 200, discovery)
            return
        user = self.authenticate(h.headers.get("Authorization"))
        h.kubesim_user = user.name if user else None
        if user is None:
            raise errors.unauthorized()
        user = impersonation.apply(self, h.headers, user)
        req = self._resolve(method, path, query)
        if req is None:
            # No route: the apiserver's mux answers with net/http's NotFound (text, not a Status);
            # Go clients turn it into "the server could not find the requested resource".
            raise errors.PlainError(404, "404 page not found\n")
        if req.verb not in req.rt.verbs and not req.subresource:
            raise errors.PlainError(405, "405: Method Not Allowed")
        h.kubesim_req = req
        proto = protobuf.prefers_protobuf(h.headers.get("Accept"))
        if proto is None:
            raise APIError(406, "NotAcceptable", "only the following media types are accepted: application/json, "
                           "application/yaml, application/vnd.kubernetes.protobuf")
        h.kubesim_proto = proto
        faults = self.faults
        exempt = h.headers.get("X-Kubesim-No-Faults") == "1"
        if not exempt and faults.active:
            if faults.latency_ms:
                time.sleep(faults.latency_ms / 1000.0)
            if faults.roll("error500"):
                raise errors.internal("injected fault (kubesim --faults error500)")
        if not reviews.open_to_everyone(req.rt):
            self._authorize(user, req.verb, req.rt, req.subresource, req.name, req.namespace)
        if req.subresource == "scale":
            return scale.handle(self, h, req, user, exempt)
        handler = getattr(self, "_verb_" + req.verb)
        handler(h, req, user, exempt)

    def _resolve(self, method: str, path: str, query: dict) -> Request | None:
        segs = [unquote(s) for s in path.split("/") if s]   # clients escape ':' in "system:..." names
        if segs[:2] == ["api", "v1"]:
            group, version, rest = "", "v1", segs[2:]
        elif len(segs) >= 3 and segs[0] == "apis":
            group, version, rest = segs[1], segs[2], segs[3:]
        else:
            return None
        req = Request()
        req.query = query
        legacy_watch = False
        if rest and rest[0] == "watch":
            legacy_watch, rest = True, rest[1:]
        if len(rest) >= 3 and rest[0] == "namespaces" and (group, version, rest[2]) in self.by_gvr:
            req.namespace, rest = rest[1], rest[2:]
        if not rest or len(rest) > 3:
            return None
        rt = self.by_gvr.get((group, version, rest[0]))
        if rt is None:
            return None
        if rt.namespaced is False and req.namespace:
            return None
        req.rt = rt
        if len(rest) >= 2:
            req.name = rest[1]
        if len(rest) == 3:
            req.subresource = rest[2]
            if req.subresource not in rt.subresources() + (
                    ("log",) if rt.storage == "pods" and method == "GET" else ()):
                return None
            if legacy_watch:
                return None
        # ?watch=true only turns a collection GET into a watch; a GET by name ignores it (1.7
        # RequestInfo); watching one object by name is the legacy /watch/ path.
        watch = legacy_watch or (_truthy(query.get("watch")) and not req.name)
        if method == "GET":
            req.verb = "watch" if watch else ("get" if req.name else "list")
        elif method == "POST":
            if req.name and not req.subresource:
                return None
            req.verb = "create"
        elif method == "PUT":
            req.verb = "update"
        elif method == "PATCH":
            req.verb = "patch"
        elif method == "DELETE":
            req.verb = "delete" if req.name else "deletecollection"
        if req.verb in ("update", "patch", "delete") and not req.name:
            return None
        if legacy_watch and method != "GET":
            return None
        if req.verb in ("list", "watch") and not req.name and self.k8s_version != "1.7":
            # 1.11+ (kubernetes#63469): fieldSelector=metadata.name=x names the request for
            # authorization, so resourceNames rules can allow it. 1.7 authorizes it without a name.
            name = selectors.exact_name(query.get("fieldSelector"))
            if name and "/" not in name and name not in (".", ".."):
                req.name = name
        return req

    # ---- discovery ----------------------------------------------------------------------
    def _discovery(self, path: str, h) -> dict | None:
        host = h.headers.get("Host") or self.url.split("//", 1)[-1]
        return discovery.document(path, self.k8s_version, host)

    # ---- input decoding -----------------------------------------------------------------
    def _decode(self, rt: ResourceType, body, req: Request) -> dict:
        """Check kind/apiVersion/namespace of a request body, drop read-only fields, apply the 1.7
        input conversion of init-container annotations."""
        if not isinstance(body, dict):
            raise errors.bad_request("the object provided is unrecognized: expected a JSON object")
        kind, api_version = body.get("kind"), body.get("apiVersion")
        if api_version is not None and api_version != rt.api_version:
            raise errors.bad_request(f"the API version in the data ({api_version}) does not match the expected "
                                     f"API version ({rt.api_version})")
        if kind is not None and kind != rt.kind:
            raise errors.bad_request(f"{kind} in version \"{rt.version}\" cannot be handled as a {rt.kind}: "
                                     f"the kind in the data ({kind}) does not match the expected kind ({rt.kind})")
        obj = copy.deepcopy(body)
        obj.pop("kind", None)
        obj.pop("apiVersion", None)
        meta = obj.get("metadata")
        if meta is None:
            meta = obj["metadata"] = {}
        if not isinstance(meta, dict):
            raise errors.bad_request("metadata must be an object")
        if rt.namespaced:
            ns = meta.get("namespace")
            if ns and ns != req.namespace:
                raise errors.bad_request("the namespace of the provided object does not match the namespace "
                                         "sent on the request")
            meta["namespace"] = req.namespace
        else:
            meta.pop("namespace", None)
        meta.pop("selfLink", None)
        if rt.convert is not None and isinstance(obj.get("spec"), (dict, type(None))):
            rt.convert.input(obj)
        def wrong(path, want="an object"):
            return errors.bad_request(f"{rt.kind} in version \"{rt.version}\" cannot be handled as a {rt.kind}: "
                                      f"{path} must be {want}")
        for key in ("spec", "status", "data"):
            if obj.get(key) is not None and not isinstance(obj[key], dict):
                raise wrong(key)
        if rt.pod_like == "template" and isinstance(obj.get("spec"), dict):
            tmpl = obj["spec"].get("template")
            if tmpl is not None:
                if not isinstance(tmpl, dict):
                    raise wrong("spec.template")
                for key in ("metadata", "spec"):
                    if tmpl.get(key) is not None and not isinstance(tmpl[key], dict):
                        raise wrong(f"spec.template.{key}")
        if self.k8s_version == "1.7" and rt.pod_like:
            target = obj if rt.pod_like == "pod" else (obj.get("spec") or {}).get("template")
            if isinstance(target, dict):
                msg = resources.pod_like_input(target)
                if msg:
                    raise errors.invalid(rt, meta.get("name", ""), [FieldError("Invalid", "metadata.annotations", msg)])
        return obj

    def _default(self, rt: ResourceType, obj: dict) -> None:
        """Apply the version's defaults; a body whose structure defeats them (a list where an object
        belongs, ...) is a 400 like a failed decode into the typed object."""
        if not rt.default:
            return
        try:
            rt.apply_defaults(obj, self.k8s_version)
        except (AttributeError, TypeError, KeyError) as e:
            raise errors.bad_request(f"{rt.kind} in version \"{rt.version}\" cannot be handled as a {rt.kind}: "
                                     f"unexpected structure ({e})") from None

    def _validate_common(self, rt: ResourceType, obj: dict) -> None:
        try:
            self._validate_object(rt, obj)
        except (AttributeError, TypeError, KeyError) as e:
            raise errors.bad_request(f"{rt.kind} in version \"{rt.version}\" cannot be handled as a {rt.kind}: "
                                     f"unexpected structure ({e})") from None

    def _validate_object(self, rt: ResourceType, obj: dict) -> None:
        errs = validation.validate_object(rt, obj, self.k8s_version)
        if errs:
            raise errors.invalid(rt, obj["metadata"].get("name", ""), errs)

    # ---- verbs --------------------------------------------------------------------------
    def _verb_get(self, h, req: Request, user, exempt) -> None:
        if req.subresource == "log":
            return logs_subresource.serve(self, h, req)
        obj = self.store.get(req.rt.storage, req.namespace, req.name)
        if obj is None:
            raise errors.not_found(req.rt, req.name)
        # §2: GET by name always returns the object, initialized or not.
        if tables.wanted(h.headers.get("Accept"), self.k8s_version):
            return self._send_json(h, 200, tables.table(req.rt, [req.rt.view(obj, self.k8s_version)], {
                "resourceVersion": obj["metadata"].get("resourceVersion", "")}, req.query.get("includeObject", "Metadata")))
        self._send_json(h, 200, req.rt.view(obj, self.k8s_version))

    def _predicate(self, req: Request):
        try:
            label = selectors.parse_label_selector(req.query.get("labelSelector"))
            field = selectors.parse_field_selector(req.query.get("fieldSelector"), req.rt.field_selectors)
        except selectors.SelectorError as e:
            raise errors.bad_request(str(e)) from None
        if not req.query.get("labelSelector") and not req.query.get("fieldSelector"):
            return None
        return lambda o: label((o.get("metadata") or {}).get("labels") or {}) and field(o)

    def _verb_list(self, h, req: Request, user, exempt) -> None:
        pred = self._predicate(req)
        include = _truthy(req.query.get("includeUninitialized"))   # §2: LIST hides uninitialized
        items, rv = self.store.list(req.rt.storage, req.namespace if req.rt.namespaced and req.namespace else None)
        out = []
        for o in items:
            if not include and is_uninitialized(o):
                continue
            if pred is not None and not pred(o):
                continue
            out.append(req.rt.view(o, self.k8s_version, in_list=True))
        prefix = "/api/v1" if not req.rt.group else f"/apis/{req.rt.group}/{req.rt.version}"
        out, more = pagination.page(out, req.query, rv, self.k8s_version)
        list_meta = dict({"selfLink": prefix + "/" + req.rt.name, "resourceVersion": str(rv)}, **more)
        if tables.wanted(h.headers.get("Accept"), self.k8s_version):
            objs = [dict(o, kind=req.rt.kind, apiVersion=req.rt.api_version) for o in out]
            return self._send_json(h, 200, tables.table(req.rt, objs, list_meta, req.query.get("includeObject", "Metadata")))
        self._send_json(h, 200, {"kind": f"{req.rt.kind}List", "apiVersion": req.rt.api_version,
                                 "metadata": list_meta, "items": out})

    def _verb_watch(self, h, req: Request, user, exempt) -> None:
        rt = req.rt
        pred = self._predicate(req)
        name = req.name or None
        include = _truthy(req.query.get("includeUninitialized"))
        rv_param = req.query.get("resourceVersion", "")
        since = None
        if rv_param not in ("", "0"):
            try:
                since = int(rv_param)
            except ValueError:
                raise errors.bad_request(f"invalid resource version: {rv_param}") from None
        timeout = DEFAULT_WATCH_TIMEOUT
        if req.query.get("timeoutSeconds"):
            try:
                timeout = float(req.query["timeoutSeconds"])
            except ValueError:
                raise errors.bad_request(f"invalid timeoutSeconds {req.query['timeoutSeconds']!r}") from None
        watcher = Watcher(rt.storage, req.namespace if rt.namespaced and req.namespace else None, name,
                          pred, include)
        faults = None if exempt else self.faults
        h.kubesim_code = 200
        h.send_response(200)
        as_proto = getattr(h, "kubesim_proto", False)      # length-delimited protobuf WatchEvents
        h.send_header("Content-Type", protobuf.WATCH_MEDIA_TYPE if as_proto else "application/json")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()

        def chunk(data: bytes) -> None:
            h.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

        as_table = tables.wanted(h.headers.get("Accept"), self.k8s_version)

        def send_event(typ, obj):
            body = obj if typ == "ERROR" else rt.view(obj, self.k8s_version)
            if as_table and typ != "ERROR":
                body = tables.table(rt, [body], {"resourceVersion": body["metadata"].get("resourceVersion", "")},
                                    req.query.get("includeObject", "Metadata"))
            if as_proto:
                return chunk(protobuf.watch_frame(typ, body))
            chunk(json.dumps({"type": typ, "object": body}, separators=(",", ":")).encode() + b"\n")

        try:
            try:
                if since is not None and faults is not None and faults.roll("gone"):
                    raise Gone(since, self.store.rv)
                backlog = self.store.watch(watcher, since)
            except Gone as e:
                send_event("ERROR", self._gone_status(e))
                return
            sent = 0
            deadline = time.monotonic() + timeout

            def cut() -> bool:
                if faults is None:
                    return False
                if faults.watch_cut_after and sent >= faults.watch_cut_after:
                    return True
                return faults.roll("watch_cut")

            for typ, obj in backlog:
                send_event(typ, obj)
                sent += 1
                if cut():
                    return
            while not self._stopping.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                try:
                    item = watcher.queue.get(timeout=min(remaining, 1.0))
                except queue.Empty:
                    if _peer_closed(h.request):
                        return
                    continue
                if item is STOP:
                    return
                send_event(*item)
                sent += 1
                if cut():
                    return
        finally:
            self.store.unwatch(watcher)
            try:
                h.wfile.write(b"0\r\n\r\n")
            except OSError:
                pass
            h.close_connection = True
            raise _Streamed()

    def _gone_status(self, e: Gone) -> dict:
        if self.k8s_version == "1.7":
            reason, msg = "Gone", f"too old resource version: {e.requested} ({e.oldest})"
        else:
            reason, msg = "Expired", f"too old resource version: {e.requested} ({e.oldest})"
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": msg, "reason": reason, "code": 410}

    def _find_initializers(self, rt: ResourceType) -> list[str]:
        """The plugin's configuration: all InitializerConfigurations, re-read every
        ``initializer_config_refresh`` seconds (0 = on every request; 1.7 polled every 1 s)."""
        if self.initializer_config_refresh > 0:
            at, configs = self._init_config_cache
            now = time.monotonic()
            if now - at >= self.initializer_config_refresh:
                configs, _ = self.store.list("initializerconfigurations")
                self._init_config_cache = (now, configs)
        else:
            configs, _ = self.store.list("initializerconfigurations")
        if not configs:
            return []
        return admission.find_initializers(configs, rt.group, rt.version, rt.name)

    def _verb_create(self, h, req: Request, user, exempt) -> None:
        rt = req.rt
        if req.subresource == "binding":
            return self._create_binding(h, req)
        if rt.storage.startswith("review:"):
            return reviews.create(self, h, req, user)
        body = self._read_body(h)
        obj = self._decode(rt, body, req)
        meta = obj["metadata"]
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + self._random_suffix()
        if rt.namespaced and self.store.get("namespaces", "", req.namespace) is None:
            raise errors.namespace_not_found(req.namespace)
        self._default(rt, obj)      # defaulting happens when the body is decoded, before admission
        # The Initializers admission plugin, create branch (§1a).
        inits = meta.get("initializers")
        if inits is not None:
            self._can_initialize(user, rt, meta.get("name", ""), req.namespace, "create with initializers denied")
            if not isinstance(inits, dict) or (not inits.get("pending") and inits.get("result") is None):
                meta.pop("initializers", None)     # pending: [] -> administrators' bypass
        else:
            meta.pop("initializers", None)
            mirror = rt.storage == "pods" and "kubernetes.io/config.mirror" in (meta.get("annotations") or {})
            names = [] if mirror else self._find_initializers(rt)
            if names:
                meta["initializers"] = {"pending": [{"name": n} for n in names]}
        dry_run = self._dry_run(req)
        if self.webhooks is not None and not rt.group.startswith("admissionregistration."):
            obj = self.webhooks.admit(rt, req, user, obj, None, "CREATE", dry_run)
            meta = obj["metadata"]
        self._validate_common(rt, obj)
        self._fill_new_meta(rt, obj)
        workloads.prepare_create(rt, obj, self.k8s_version)
        name = meta["name"]
        uninitialized = meta.get("initializers") is not None
        if self.k8s_version == "1.7":
            include = req.query.get("includeUninitialized") == "1"     # §1b: only the literal "1"
        else:
            include = _truthy(req.query.get("includeUninitialized"))
        if dry_run:   # admitted and validated, not stored
            if rt.namespaced and self.store.get(rt.storage, req.namespace, name) is not None:
                raise errors.already_exists(rt, name)
            self._send_json(h, 201, rt.view(obj, self.k8s_version))
            return
        waiter = None
        if uninitialized and not include:
            waiter = Watcher(rt.storage, meta.get("namespace") or "", name, None, True)

        def register(_obj):
            if waiter is not None:
                self.store.watchers[rt.storage].add(waiter)

        try:
            with self.store.lock:     # allocation and write in one critical section
                if rt.storage == "services" and self.store.get("services", req.namespace, name) is None:
                    self._allocate_cluster_ip(rt, obj)
                stored = self.store.create(rt.storage, obj, on_created=register)
        except AlreadyExists:
            raise errors.already_exists(rt, name) from None
        self.write_count += 1
        self._after_create(rt, stored)
        if waiter is None:
            self._send_json(h, 202 if uninitialized else 201, rt.view(stored, self.k8s_version))
            return
        self._waiting_creates += 1
        try:
            result = self._wait_initialized(rt, waiter, name, req.query.get("timeout", ""))
        finally:
            self._waiting_creates -= 1
            self.store.unwatch(waiter)
        self._send_json(h, 201, rt.view(result, self.k8s_version))

    def _allocate_cluster_ip(self, rt: ResourceType, obj: dict) -> None:
        """The service IP allocator: a free address of ``service_cidr`` unless one is asked for
        (``None`` = headless). Done under the store lock by the caller's create."""
        import ipaddress
        spec = obj.setdefault("spec", {})
        if spec.get("type") == "ExternalName" or spec.get("clusterIP") == "None":
            return
        with self.store.lock:
            items, _ = self.store.list("services")
            used = {(o.get("spec") or {}).get("clusterIP") for o in items}
            want = spec.get("clusterIP")
            if want:
                try:
                    ok = ipaddress.ip_address(want) in self.service_net
                except ValueError:
                    ok = False
                if not ok:
                    raise errors.invalid(rt, obj["metadata"]["name"], [FieldError(
                        "Invalid", "spec.clusterIP", f"provided IP is not in the valid range. The range of valid "
                        f"IPs is {self.service_net}", want)])
                if want in used:
                    raise errors.invalid(rt, obj["metadata"]["name"], [FieldError(
                        "Invalid", "spec.clusterIP", "provided IP is already allocated", want)])
                return
            for ip in self.service_net.hosts():
                if str(ip) not in used:
                    spec["clusterIP"] = str(ip)
                    return
            raise errors.internal("failed to allocate a serviceIP: range is full")

    def _wait_initialized(self, rt, waiter: Watcher, name: str, timeout_param: str) -> dict:
        """WaitForInitialized (§1b) inside finishRequest's timeout."""
        timeout = parse_go_duration(timeout_param) if timeout_param else None
        if timeout is None:
            timeout = DEFAULT_CREATE_TIMEOUT
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                item = waiter.queue.get(timeout=remaining)
            except queue.Empty:
                break
            if item is STOP:
                raise APIError(503, "ServiceUnavailable", "apiserver is shutting down")
            typ, obj = item
            inits = (obj.get("metadata") or {}).get("initializers")
            if typ == "MODIFIED":
                if inits is None:
                    return obj
                if inits.get("result") is not None:
                    raise self._from_status(inits["result"])
            elif typ == "DELETED":
                if inits is not None and inits.get("result") is not None:
                    raise self._from_status(inits["result"])
                raise errors.internal("object deleted while waiting for creation")
        if self.k8s_version == "1.7":
            msg = "Timeout: request did not complete within allowed duration"
        else:
            msg = f"Timeout: request did not complete within requested timeout {format_go_duration(timeout)}"
        raise APIError(504, "Timeout", msg, {})

    @staticmethod
    def _from_status(result: dict) -> APIError:
        """kubeerr.FromObject + ErrorToAPIStatus: code 0 on a Failure becomes 500 (§4)."""
        code = result.get("code") or 500
        e = APIError(int(code), result.get("reason", ""), result.get("message", ""), result.get("details"))
        return e

    def _create_binding(self, h, req: Request) -> None:
        body = self._read_body(h)
        target = (body or {}).get("target") or {}
        node = target.get("name")
        if not node:
            raise errors.invalid(BY_GVR[("", "v1", "pods")], req.name,
                                 [FieldError("Required", "target.name", "")])
        with self.store.lock:
            cur = self.store.get("pods", req.namespace, req.name)
            if cur is None:
                raise errors.not_found(req.rt, req.name)
            if (cur.get("spec") or {}).get("nodeName"):
                raise APIError(409, "Conflict", f'Operation cannot be fulfilled on pods/binding "{req.name}": '
                               f'pod {req.name} is already assigned to node "{cur["spec"]["nodeName"]}"')
            new = copy.deepcopy(cur)
            new["spec"]["nodeName"] = node
            self.store.update("pods", new)
        self._send_json(h, 201, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                                 "code": 201})

    def _verb_update(self, h, req: Request, user, exempt) -> None:
        body = self._read_body(h)
        obj = self._decode(req.rt, body, req)
        if obj["metadata"].get("name") and obj["metadata"]["name"] != req.name:
            raise errors.bad_request(f"the name of the object ({obj['metadata']['name']}) does not match the "
                                     f"name on the URL ({req.name})")
        obj["metadata"]["name"] = req.name
        if not exempt and self.faults.roll("conflict"):
            raise errors.conflict(req.rt, req.name)
        out, code = self._update(req, user, lambda cur: obj, precondition=True)
        self._send_json(h, code, req.rt.view(out, self.k8s_version))

    def _verb_patch(self, h, req: Request, user, exempt) -> None:
        ctype = (h.headers.get("Content-Type") or "").split(";")[0].strip()
        body = self._read_body(h)
        rt = req.rt

        def apply(cur: dict) -> dict:
            base = rt.view(cur, self.k8s_version)
            try:
                if ctype == "application/json-patch+json":
                    patched = patchlib.json_patch(base, body)
                elif ctype == "application/merge-patch+json":
                    patched = patchlib.json_merge_patch(base, body)
                elif ctype == "application/strategic-merge-patch+json":
                    pmk = self.k8s_version != "1.7"
                    patched = patchlib.strategic_merge_patch(
                        base, body, lambda p: patchlib.default_merge_key(p, pending_merge_key=pmk))
                else:
                    raise APIError(415, "UnsupportedMediaType",
                                   f"the server does not support the media type {ctype!r} for PATCH; use "
                                   f"application/json-patch+json, application/merge-patch+json or "
                                   f"application/strategic-merge-patch+json")
            except patchlib.PatchError as e:
                raise APIError(422, "Invalid", str(e)) from None
            if not isinstance(patched, dict):
                raise APIError(422, "Invalid", "the patch produced something that is not an object")
            new = self._decode(rt, patched, req)
            if new["metadata"].get("name") != req.name:
                raise errors.bad_request("the name of the object cannot be changed by a patch")
            return new

        def apply_with_fault(cur: dict) -> dict:
            new = apply(cur)
            # A patch carrying metadata.resourceVersion is an optimistic-lock precondition: the only
            # kind of PATCH a real server answers 409, so the only kind the conflict fault hits.
            if _patch_sets_resource_version(body) and not exempt and self.faults.roll("conflict"):
                raise errors.conflict(rt, req.name)
            return new

        out, code = self._update(req, user, apply_with_fault, precondition=True)
        self._send_json(h, code, rt.view(out, self.k8s_version))

    def _update(self, req: Request, user: User, build, precondition: bool) -> tuple[dict, int]:
        """GuaranteedUpdate with the mutating webhooks called outside the store lock (webhooks.py)."""
        dry_run = self._dry_run(req)
        if self.webhooks is None or req.rt.group.startswith("admissionregistration.") \
                or not self.webhooks.configured():
            return self._update_locked(req, user, build, precondition, dry_run)
        return webhooks.guaranteed_update(self, req, user, build, precondition, dry_run)

    def _dry_run(self, req: Request) -> bool:
        """``?dryRun=All`` (1.13+): admitted and validated, nothing stored."""
        value = req.query.get("dryRun")
        if value is None or self.k8s_version == "1.7":
            return False
        if value != "All":
            raise errors.bad_request(f'dryRun: Unsupported value: "{value}": supported values: "All"')
        return True

    def _update_locked(self, req: Request, user: User, build, precondition: bool, dry_run: bool = False,
                       admitted=None) -> tuple[dict, int]:
        """GuaranteedUpdate: read, build the new object, admit, validate, write (under the lock).
        ``admitted(new, cur)``: called after the built-in admission, may replace ``new`` or raise."""
        rt = req.rt
        with self.store.lock:
            cur = self.store.get(rt.storage, req.namespace, req.name)
            if cur is None:
                raise errors.not_found(rt, req.name)
            new = build(cur)
            meta = new["metadata"]
            rv = meta.get("resourceVersion")
            if precondition and rv and rv != cur["metadata"]["resourceVersion"]:
                raise errors.conflict(rt, req.name)
            for k in ("uid", "creationTimestamp"):
                meta[k] = cur["metadata"].get(k)
            for k in ("deletionTimestamp", "deletionGracePeriodSeconds"):  # set by a delete only
                if k in cur["metadata"]:
                    meta[k] = cur["metadata"][k]
                else:
                    meta.pop(k, None)
            if rt.namespaced:
                meta["namespace"] = req.namespace
            if req.subresource == "status":
                status = new.get("status")
                new = copy.deepcopy(cur)
                if status is not None:
                    new["status"] = status
                else:
                    new.pop("status", None)
                meta = new["metadata"]
            else:
                if rt.has_status:
                    if "status" in cur:
                        new["status"] = copy.deepcopy(cur["status"])
                    else:
                        new.pop("status", None)
                self._default(rt, new)
                self._admit_update(rt, req, user, new, cur)
                if admitted is not None:
                    new = admitted(new, cur)
                    meta = new["metadata"]
                self._validate_common(rt, new)
                self._check_pod_update(rt, new, cur)
                errs = workloads.validate_update(rt, new, cur, self.k8s_version)
                if errs:
                    raise errors.invalid(rt, req.name, errs)
            if rt.storage == "services" and isinstance(new.get("spec"), dict) and not new["spec"].get("clusterIP"):
                ip = (cur.get("spec") or {}).get("clusterIP")
                if ip:
                    new["spec"]["clusterIP"] = ip      # allocated once, carried over
            if rt.storage == "daemonsets" and isinstance(new.get("spec"), dict):
                old_t = (cur.get("spec") or {}).get("templateGeneration", 1)
                new["spec"]["templateGeneration"] = old_t + (
                    1 if new["spec"].get("template") != (cur.get("spec") or {}).get("template") else 0)
            if rt.tracks_generation:
                gen = cur["metadata"].get("generation", 1)
                meta["generation"] = gen + 1 if new.get("spec") != cur.get("spec") else gen
            else:
                meta.pop("generation", None)
            if dry_run:
                return new, 200
            stored, _ = self.store.update(rt.storage, new)
            self.write_count += 1
            inits = meta.get("initializers")
            if inits is not None and inits.get("result") is not None:
                # §4: persisted, then deleted at once; the PUT still returns 200 with the object.
                self.store.delete(rt.storage, req.namespace, req.name)
                self._after_delete(rt, stored)
            return stored, 200

    def _admit_update(self, rt: ResourceType, req: Request, user: User, new: dict, cur: dict) -> None:
        """The Initializers plugin, update branch (§3)."""
        meta = new["metadata"]
        updated = meta.get("initializers")
        existing = cur["metadata"].get("initializers")
        if self.k8s_version != "1.7" and isinstance(updated, dict) and not updated.get("pending") \
                and updated.get("result") is None:
            meta.pop("initializers", None)     # 1.9+ (#52558): empty pending means done
            updated = None
        if updated is None:
            meta.pop("initializers", None)
        if updated is None and existing is None:
            return
        errs = admission.validate_initializers_update(updated, existing)
        if errs:
            raise errors.invalid(rt, req.name, errs)
        self._can_initialize(user, rt, req.name, req.namespace, "update to uninitialized resource denied")

    def _check_pod_update(self, rt: ResourceType, new: dict, cur: dict) -> None:
        """1.7: an uninitialized pod's spec is immutable like any pod's, except images (§3 "Pods in 1.7")."""
        if rt.storage != "pods" or self.k8s_version != "1.7" or not is_uninitialized(cur):
            return

        def strip(spec):
            s = copy.deepcopy(spec or {})
            for key in ("containers", "initContainers"):
                for c in s.get(key) or []:
                    c.pop("image", None)
            s.pop("activeDeadlineSeconds", None)
            return s

        if strip(new.get("spec")) != strip(cur.get("spec")):
            raise errors.invalid(rt, new["metadata"]["name"], [FieldError(
                "Forbidden", "spec", "pod updates may not change fields other than `containers[*].image` or "
                "`spec.activeDeadlineSeconds`")])

    def _verb_delete(self, h, req: Request, user, exempt) -> None:
        rt = req.rt
        if req.subresource:
            raise APIError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
        raw = getattr(h, "raw_body", b"")
        try:
            if raw.strip() and (h.headers.get("Content-Type") or "").split(";")[0].strip() == protobuf.MEDIA_TYPE:
                opts = protobuf.decode_object(raw)[2]      # DeleteOptions from a typed client
            else:
                opts = json.loads(raw) if raw.strip() else {}
        except ValueError as e:
            raise errors.bad_request(f"json parse error: {e}") from None
        with self.store.lock:
            cur = self.store.get(rt.storage, req.namespace, req.name)
            if cur is None:
                raise errors.not_found(rt, req.name)
            uid = ((opts or {}).get("preconditions") or {}).get("uid") if isinstance(opts, dict) else None
            if uid and uid != cur["metadata"].get("uid"):
                raise APIError(409, "Conflict", f'Precondition failed: UID in precondition: {uid}, UID in object '
                               f'meta: {cur["metadata"].get("uid")}', {"name": req.name, "kind": rt.name})
            if rt.storage == "pods":
                graceful = self._graceful_pod_delete(cur, opts, req)
                if graceful is not None:
                    self._send_json(h, 200, rt.view(graceful, self.k8s_version))
                    return
            gone = self.store.delete(rt.storage, req.namespace, req.name)
            self.write_count += 1
            self._after_delete(rt, gone)
        details = {"name": req.name, "kind": rt.name, "uid": cur["metadata"].get("uid")}
        if rt.group:
            details["group"] = rt.group
        self._send_json(h, 200, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                                 "details": errors.status_details(details)})

    def _graceful_pod_delete(self, cur: dict, opts, req: Request) -> dict | None:
        """A pod's graceful deletion, as the real pod strategy does it (call with the store locked).

        A scheduled, running pod is not removed at once: it gets ``deletionTimestamp`` (now + the
        grace period) and ``deletionGracePeriodSeconds``, and stays until its kubelet has stopped the
        containers and deletes it again with grace 0. The grace period is the request's
        ``gracePeriodSeconds`` (DeleteOptions or query), else the pod's
        ``terminationGracePeriodSeconds`` (default 30); an unscheduled or finished pod, or grace 0,
        is deleted at once (returns None). A second delete can only shorten the grace period."""
        grace = None
        if isinstance(opts, dict) and opts.get("gracePeriodSeconds") is not None:
            grace = opts.get("gracePeriodSeconds")
        elif req.query.get("gracePeriodSeconds") not in (None, ""):
            grace = req.query.get("gracePeriodSeconds")
        spec, meta = cur.get("spec") or {}, cur["metadata"]
        if grace is None:
            grace = spec.get("terminationGracePeriodSeconds", 30)
        try:
            grace = int(grace)
        except (TypeError, ValueError):
            raise errors.bad_request(f"gracePeriodSeconds: {grace!r} is not an integer") from None
        if grace <= 0 or not spec.get("nodeName") or (cur.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            return None
        current = meta.get("deletionGracePeriodSeconds")
        if meta.get("deletionTimestamp") and current is not None and int(current) <= grace:
            return cur  # already terminating, no sooner than asked
        new = copy.deepcopy(cur)
        stamp = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=grace)
        new["metadata"]["deletionTimestamp"] = stamp.strftime("%Y-%m-%dT%H:%M:%SZ")
        new["metadata"]["deletionGracePeriodSeconds"] = grace
        stored, _prev = self.store.update("pods", new)
        self.write_count += 1
        return stored

    def _verb_deletecollection(self, h, req: Request, user, exempt) -> None:
        rt = req.rt
        pred = self._predicate(req)
        deleted = []
        with self.store.lock:
            items, _ = self.store.list(rt.storage, req.namespace if rt.namespaced and req.namespace else None)
            for o in items:          # §2: DeleteCollection includes uninitialized objects
                if pred is not None and not pred(o):
                    continue
                m = o["metadata"]
                gone = self.store.delete(rt.storage, m.get("namespace", ""), m["name"])
                self._after_delete(rt, gone)
                deleted.append(rt.view(gone, self.k8s_version, in_list=True))
        self._send_json(h, 200, {"kind": f"{rt.kind}List", "apiVersion": rt.api_version,
                                 "metadata": {"resourceVersion": str(self.store.rv)}, "items": deleted})


def _patch_sets_resource_version(body) -> bool:
    if isinstance(body, dict):
        return bool((body.get("metadata") or {}).get("resourceVersion")) if isinstance(body.get("metadata"), dict) else False
    if isinstance(body, list):
        return any(isinstance(op, dict) and op.get("path") == "/metadata/resourceVersion" for op in body)
    return False


def _peer_closed(sock) -> bool:
    """True when an idle watch connection has been closed by the client (it never sends anything
    during a watch, so readability means EOF or close_notify). Frees the watcher promptly instead
    of at timeoutSeconds."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        if not readable:
            return False
        sock.settimeout(0)
        try:
            return sock.recv(1) == b""
        finally:
            sock.settimeout(None)
    except (ssl.SSLWantReadError, BlockingIOError):
        return False
    except (OSError, ValueError):
        return True


class _Streamed(Exception):
    """Raised after a streamed (watch) response has been written in full."""
