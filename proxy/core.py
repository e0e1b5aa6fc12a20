"""The teapot-blocking addon: policy decisions, no-bypass enforcement, audit, metrics, hot reload.

Loaded by mitmdump through ``proxy/addon.py``. The invariant it keeps is *the proxy dials what
policy allowed, never what the client pointed at*:

1. ``request`` decides on the request's Host (HTTP/1 ``Host`` / HTTP/2 ``:authority``), after checking
   that an HTTPS request's SNI names the same host and that an HTTP/1 absolute-form target names the
   same host, scheme and port (proxy/README.md, "Which view of the destination decides"). If
   allowed, it resolves that host itself, checks every resolved address against ``deny_ranges``,
   rewrites ``flow.request.host`` to the policy host's *name* (so the client-chosen destination IP
   is never used), forwards HTTP/1 in origin-form and records an *approval* (client connection,
   host, port) → pinned address.
2. ``server_connect`` is the choke point for every upstream connection mitmproxy tries to open
   (HTTP, raw TCP, anything): a connection without an approval gets ``server.error`` and is never
   opened; an approved one is pinned to the address that was checked (no DNS rebinding between
   the check and the connect). ``connection_strategy=lazy`` is required (the addon refuses to
   start otherwise): nothing is dialled before the request hook has run.

Everything else (raw TCP on the intercepted ports, CONNECT in transparent mode, TLS without SNI)
therefore fails closed by construction; the hooks for them only add audit lines and metrics.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import socket
import sys
import threading
import time
from typing import Awaitable, Callable, Optional

import structlog
from mitmproxy import ctx, exceptions, http
from mitmproxy.connection import ConnectionState
from mitmproxy.net.http import url
from mitmproxy.proxy import mode_specs

from proxy.identity import IdentityMap, canonical_ip
from proxy.metrics import Metrics
from proxy import request_target
from proxy.policy import Policy, PolicyError, is_ip_literal, normalize_host
from controllerkit.probe import ANSWER_HEADER, NONCE_HEADER, PROBE_ADDRESS, PROBE_HOST, PROBE_PATH, PROBE_PORT

BLOCK_STATUS = 418
BLOCK_BODY = b"Access Denied by Administrator"
BLOCK_HEADERS = {"Content-Type": "text/html"}
POLICY_POLL_SECONDS = 0.5
DNS_CACHE_SECONDS = 2.0

# A lazy proxy (no .bind() here): it must pick up setup_logging's configuration, which the script
# entry point installs after importing this module.
log = structlog.get_logger()

Resolver = Callable[[str, int], Awaitable[list]]

_quote = json.encoder.encode_basestring_ascii  # the C escaper json.dumps uses: '"..."', ASCII-safe


def _jstr(value) -> str:
    """A JSON string (or null) for an audit field."""
    return "null" if value is None else _quote(value if isinstance(value, str) else str(value))


def _jint(value) -> str:
    """A JSON number (or null) for an audit field."""
    return "null" if value is None else str(int(value))


NO_RULE_MEMBERS = '"rule":null,"rule_index":null'
# Blocks that report mode does not turn into "report": the request itself is malformed.
MALFORMED_REASONS = frozenset({"missing-host", "invalid-host", "multiple-host-headers", "invalid-target"})


async def system_resolve(host: str, port: int) -> list[str]:
    """All addresses of ``host`` (TCP), in the resolver's order, through the event loop (non-blocking)."""
    if is_ip_literal(host):
        return [host.strip("[]")]
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    seen: list[str] = []
    for *_, sockaddr in infos:
        if sockaddr[0] not in seen:
            seen.append(sockaddr[0])
    return seen


def set_host_port(req: http.Request, host: str, port: int, host_headers: list[str] | None = None) -> None:
    """``req.host = host; req.port = port`` with the same end state, minus the work that changes nothing.

    mitmproxy's ``host`` and ``port`` setters each rebuild ``host[:port]`` and rewrite the Host
    header / ``:authority`` (a case-insensitive multidict scan each), even when they already say
    exactly that -- the usual case here, where the request's own Host named the policy host. This
    writes ``req.data`` directly and touches the header / authority only when they differ from
    what the setters would have written (``url.hostport`` of the new scheme, host and port). An
    HTTP/1 absolute-form target is dropped: the upstream gets origin-form (``/path?query``).
    ``host_headers``: the request's Host values if the caller has just read them (saves a scan)."""
    data = req.data
    data.host = host
    data.port = port
    val = url.hostport(req.scheme, host, port)
    if host_headers is None:
        host_headers = data.headers.get_all("Host")
    if host_headers and host_headers != [val]:  # present and not already right
        data.headers["Host"] = val
    if data.authority:
        if req.is_http2 or req.is_http3:
            if req.authority != val:
                req.authority = val
        else:  # HTTP/1: origin-form (RFC 9112 3.2.1), never the client's absolute-form target
            data.authority = b""


def split_host_port(authority: str) -> tuple[str, Optional[int]]:
    """``"a.example:8080"`` → ``("a.example", 8080)``; ``"[2001:db8::1]:443"``; bare IPv6 kept whole."""
    a = authority.strip()
    if a.startswith("["):
        host, _, rest = a[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif a.count(":") == 1:
        host, port = a.split(":")
    else:
        host, port = a, ""
    if port and not port.isdigit():
        raise ValueError(f"bad port in {authority!r}")
    return host, (int(port) if port else None)


@dataclasses.dataclass(slots=True)
class ClientInfo:
    """What the audit and the decision need from a client connection, worked out once per connection."""
    client_ip: str
    pod: dict                           # namespace, name, serviceAccount ("" when unknown)
    regular: bool                       # standard (regular) mode rather than transparent
    audit_members: str                  # its audit fields, JSON-encoded, without braces
    identity: object                    # the IdentityMap and its generation this was looked up in
    generation: int


@dataclasses.dataclass(slots=True)
class Verdict:
    """What the addon decided about one request (becomes one audit line)."""
    decision: str                       # allow | block | report
    reason: str                         # rule | no-matching-rule | sni-host-mismatch | ...
    host: str = ""
    port: int = 0
    rule: object = None
    upstream: str = ""
    host_headers: list | None = None    # the request's Host values as evaluate read them


class AuditLog:
    """One JSON object per line, to stdout (``-``) or appended to a file; thread-safe.

    Unbuffered until :meth:`attach` is called (by the addon's ``running`` hook, i.e. inside a
    running mitmproxy): from then on lines written on the event loop's thread are collected and
    written together at most ``flush_seconds`` later (or at once when ``MAX_PENDING`` lines wait),
    one ``write`` + ``flush`` per batch instead of per request. A crash (kill -9) can therefore
    lose the last ``flush_seconds`` of lines; a clean shutdown (``done``) writes them all. Lines
    from other threads, and every line before ``attach``, are written at once.
    """

    FLUSH_SECONDS = 0.05  # default of the tproxy_audit_flush_ms option
    MAX_PENDING = 256

    def __init__(self, target: str, flush_seconds: float = FLUSH_SECONDS):
        self.target = target
        self.flush_seconds = flush_seconds  # 0: every line written at once, also when attached
        self._lock = threading.Lock()
        self._pending: list[str] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._timer: asyncio.TimerHandle | None = None
        if target == "-":
            self._file = None
        else:
            try:
                self._file = open(target, "a", encoding="utf-8", buffering=1)
            except OSError as e:
                raise exceptions.OptionsError(f"tproxy_audit: cannot open {target!r}: {e.strerror or e}") from None

    # json.dumps with any non-default argument builds a new JSONEncoder per call; build it once.
    _encode = json.JSONEncoder(default=str, separators=(",", ":")).encode

    def attach(self, loop: asyncio.AbstractEventLoop, thread: int | None = None) -> None:
        """Batch the lines written on the thread running ``loop`` (default: the calling thread)."""
        self._loop, self._loop_thread = loop, thread or threading.get_ident()

    def write(self, record: dict) -> None:
        self.write_line(self._encode(record))

    def write_line(self, line: str) -> None:
        """Write one already-encoded JSON object (no newline)."""
        with self._lock:
            self._pending.append(line + "\n")
            if self._loop is not None and self.flush_seconds > 0 and threading.get_ident() == self._loop_thread \
                    and len(self._pending) < self.MAX_PENDING:
                if self._timer is None:
                    self._timer = self._loop.call_later(self.flush_seconds, self.flush)
                return
            self._write_pending()

    def flush(self) -> None:
        with self._lock:
            self._write_pending()

    def _write_pending(self) -> None:  # with self._lock held
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._pending:
            return
        data = "".join(self._pending)
        self._pending.clear()
        f = self._file or sys.stdout
        try:
            f.write(data)
            f.flush()
        except (OSError, ValueError) as e:  # a closed or full target must not take the proxy down
            log.error("audit_write_failed", target=self.target, error=str(e), lines=data.count("\n"))

    def close(self) -> None:
        self.flush()
        self._loop = None
        if self._file:
            self._file.close()


class TproxyAddon:
    """The mitmproxy addon. ``resolver`` is injectable for unit tests (default: the system resolver)."""

    def __init__(self, resolver: Resolver = system_resolve):
        self._resolver = resolver
        self._dns: dict[tuple[str, int], tuple[float, list[str]]] = {}
        self.metrics = Metrics()
        self.policy: Policy = Policy.builtin()
        self.metrics.set_policy(self.policy)
        self.identity = IdentityMap("")
        self.audit = AuditLog("-")
        self.health = None
        self.hostname = socket.gethostname()
        self.node = os.environ.get("NODE_NAME", "")
        # client connection id -> {(host, port): pinned address}
        self._approved: dict[str, dict[tuple[str, int], str]] = {}
        # client connection id -> ClientInfo (dropped in client_disconnected)
        self._clients: dict[str, ClientInfo] = {}
        # server connection id -> (host name, port) while it is being dialled by address
        self._dialled_by_name: dict[str, tuple[str, int]] = {}
        self._watch_stop = threading.Event()
        self._watch_thread: threading.Thread | None = None
        self._policy_sig = None
        self._bundle = ""  # trust bundle written for tproxy_extra_ca
        self._running = False
        self._ts_sec, self._ts_prefix = -1, ""

    # -- options ---------------------------------------------------------------------------------
    def load(self, loader):
        request_target.install()  # keeps an absolute-form target's scheme and port for the decision
        loader.add_option("tproxy_policy", str, "",
                          "Policy YAML file (watched, hot-reloaded). Empty: the tutorial's built-in policy "
                          "(only https://storage.googleapis.com/solutions-public-assets/).")
        loader.add_option("tproxy_identity", str, "",
                          "Pod identity JSON written by podwatch (client IP -> namespace/name/serviceAccount).")
        loader.add_option("tproxy_metrics_port", int, 0, "Port for /metrics, /healthz, /readyz (0 = off).")
        loader.add_option("tproxy_metrics_host", str, "0.0.0.0", "Address for the metrics server.")
        loader.add_option("tproxy_audit", str, "-", "Audit log: a file to append JSON lines to, or '-' for stdout.")
        loader.add_option("tproxy_audit_flush_ms", int, round(AuditLog.FLUSH_SECONDS * 1000),
                          "Audit lines are written in batches at most this many ms apart (0: one write per "
                          "line; a kill -9 can lose at most this much).")
        loader.add_option("tproxy_log_level", str, "info", "Log level of tproxy's own JSON log lines (stderr).")
        loader.add_option("tproxy_extra_ca", str, "",
                          "PEM file of extra CA certificates trusted for upstream TLS *in addition to* the "
                          "public roots (mitmproxy's ssl_verify_upstream_trusted_ca alone replaces them).")

    def configure(self, updated):
        o = ctx.options
        if "connection_strategy" in updated and o.connection_strategy != "lazy":
            # Refuse rather than change another addon's option (nothing may be dialled before a
            # request is decided). At start (mitmproxy configures a script with every option once
            # loaded) the error is logged and mitmdump exits; later the change is rolled back.
            raise exceptions.OptionsError(
                f"connection_strategy: tproxy needs connection_strategy=lazy (nothing may be dialled before a "
                f"request is decided), not {o.connection_strategy!r}; add --set connection_strategy=lazy")
        if "tproxy_log_level" in updated and o.tproxy_log_level.lower() not in (
                "debug", "info", "warning", "warn", "error", "critical"):
            raise exceptions.OptionsError(
                f"tproxy_log_level: {o.tproxy_log_level!r} is not one of debug, info, warning, error")
        if "tproxy_policy" in updated:
            try:
                policy = Policy.load(o.tproxy_policy) if o.tproxy_policy else Policy.builtin()
            except PolicyError as e:
                self.metrics.policy_reloads.labels("error").inc()
                log.error("policy_rejected", path=o.tproxy_policy, error=str(e), kept=self.policy.source)
                raise exceptions.OptionsError(f"tproxy_policy: {e}") from None
            self._install_policy(policy)
            self._policy_sig = self._stat(o.tproxy_policy) if o.tproxy_policy else None
        if "tproxy_identity" in updated:
            self.identity = IdentityMap(o.tproxy_identity, on_error=self._identity_error)
        if "tproxy_audit_flush_ms" in updated:
            if not 0 <= o.tproxy_audit_flush_ms <= 10_000:
                raise exceptions.OptionsError(
                    f"tproxy_audit_flush_ms: {o.tproxy_audit_flush_ms} is not between 0 and 10000 (ms; 0 = unbatched)")
            self.audit.flush_seconds = o.tproxy_audit_flush_ms / 1000
        if "tproxy_audit" in updated:
            if not o.tproxy_audit:
                raise exceptions.OptionsError("tproxy_audit: empty; use '-' for stdout or a file path")
            old, self.audit = self.audit, AuditLog(o.tproxy_audit, self.audit.flush_seconds)
            if old._loop is not None:
                self.audit.attach(old._loop, old._loop_thread)
            old.close()
        if "tproxy_extra_ca" in updated and o.tproxy_extra_ca:
            bundle = self._trust_bundle(o.tproxy_extra_ca)
            o.update(ssl_verify_upstream_trusted_ca=bundle)
            if self._bundle:
                os.unlink(self._bundle)
            self._bundle = bundle
            log.info("upstream_trust", extra_ca=o.tproxy_extra_ca, bundle=bundle)
        if "tproxy_metrics_port" in updated or "tproxy_metrics_host" in updated:
            port = o.tproxy_metrics_port
            if not 0 <= port <= 65535:
                raise exceptions.OptionsError(f"tproxy_metrics_port: {port} is not a TCP port (0-65535, 0 = off)")
            self._restart_health(o.tproxy_metrics_host, port)

    @staticmethod
    def _trust_bundle(extra: str) -> str:
        """Write public roots (certifi, as mitmproxy uses by default, plus the OS bundle when present)
        followed by ``extra`` into a private file; return its path."""
        import tempfile

        import certifi
        try:
            with open(extra, encoding="ascii") as f:
                extra_pem = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise exceptions.OptionsError(f"tproxy_extra_ca: cannot read {extra!r}: {getattr(e, 'strerror', None) or e}") \
                from None
        if "-----BEGIN CERTIFICATE-----" not in extra_pem:
            raise exceptions.OptionsError(f"tproxy_extra_ca: {extra!r} holds no PEM certificate")
        parts = []
        for path in (certifi.where(), "/etc/ssl/certs/ca-certificates.crt"):
            try:
                with open(path, encoding="ascii", errors="replace") as f:
                    parts.append(f.read())
            except OSError:
                pass
        parts.append(extra_pem)
        fd, bundle = tempfile.mkstemp(prefix="tproxy-upstream-ca-", suffix=".pem")
        with os.fdopen(fd, "w") as f:
            f.write("\n".join(p.strip() + "\n" for p in parts))
        return bundle

    def readiness(self) -> tuple[bool, str]:
        """/readyz: ready once mitmproxy runs (listening) with a policy in force."""
        if not self._running:
            return False, "mitmproxy is not running yet"
        return True, f"policy {self.policy.source} ({self.policy.mode}, {len(self.policy.rules)} rules)"

    def running(self):
        self._running = True
        try:
            from controllerkit.log import setup_logging
            setup_logging("proxy", ctx.options.tproxy_log_level)
        except ImportError:  # pragma: no cover - controllerkit is part of the image
            pass
        self.start_watcher()
        try:
            self.audit.attach(asyncio.get_running_loop())
        except RuntimeError:  # not inside mitmproxy's event loop (bare test contexts): unbuffered
            pass
        log.info("proxy_ready", policy=self.policy.source, mode=self.policy.mode, rules=len(self.policy.rules),
                 identity=ctx.options.tproxy_identity or None, metrics_port=ctx.options.tproxy_metrics_port,
                 connection_strategy=self._option("connection_strategy"),
                 stream_large_bodies=self._option("stream_large_bodies"))
        if "stream_large_bodies" in ctx.options.keys() and not ctx.options.stream_large_bodies:
            log.warning("stream_large_bodies_unset", effect="responses with a Content-Length are buffered whole; "
                        "the chart and the image pass --set stream_large_bodies=1m")

    @staticmethod
    def _option(name: str):
        """A mitmproxy option's value, or None where it is not registered (bare test contexts)."""
        return getattr(ctx.options, name) if name in ctx.options.keys() else None

    def done(self):
        self._watch_stop.set()
        if self.health:
            self.health.stop()
            self.health = None
        self.audit.close()
        if self._bundle:
            try:
                os.unlink(self._bundle)
            except OSError:
                pass
            self._bundle = ""

    # -- policy reload ---------------------------------------------------------------------------
    def _install_policy(self, policy: Policy) -> None:
        self.policy = policy
        self.metrics.policy_reloads.labels("success").inc()
        self.metrics.set_policy(policy)
        log.info("policy_loaded", path=policy.source, mode=policy.mode, rules=len(policy.rules))

    @staticmethod
    def _stat(path: str):
        try:
            st = os.stat(path)
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def check_policy_file(self) -> bool:
        """Reload the policy file if it changed; keep the last good policy if it is invalid.

        Returns True when a new policy was installed. Called by the watcher thread every
        ``POLICY_POLL_SECONDS``; tests call it directly.
        """
        path = ctx.options.tproxy_policy if ctx else ""
        if not path:
            return False
        sig = self._stat(path)
        if sig == self._policy_sig:
            return False
        self._policy_sig = sig  # judge each version of the file once
        try:
            policy = Policy.load(path)
        except PolicyError as e:
            self.metrics.policy_reloads.labels("error").inc()
            log.error("policy_rejected", path=path, error=str(e), kept=self.policy.source,
                      kept_rules=len(self.policy.rules))
            return False
        self._install_policy(policy)
        return True

    def start_watcher(self) -> None:
        if self._watch_thread and self._watch_thread.is_alive():
            return
        self._watch_stop.clear()

        def loop():
            while not self._watch_stop.wait(POLICY_POLL_SECONDS):
                try:
                    self.check_policy_file()
                except Exception as e:  # noqa: BLE001 - the watcher must survive anything
                    log.error("policy_watch_failed", error=repr(e))

        self._watch_thread = threading.Thread(target=loop, name="tproxy-policy-watch", daemon=True)
        self._watch_thread.start()

    def _identity_error(self, msg: str) -> None:
        self.metrics.identity_errors.inc()
        log.error("identity_unreadable", error=msg)

    def _restart_health(self, host: str, port: int) -> None:
        if self.health:
            self.health.stop()
            self.health = None
        if port:
            from controllerkit.serve import HealthServer
            try:
                self.health = HealthServer(port, host=host, ready=self.readiness, registry=self.metrics.registry)
                self.health.start()
            except OSError as e:
                self.health = None
                raise exceptions.OptionsError(f"tproxy_metrics_port: cannot listen on {host}:{port}: {e}") from None

    # -- helpers ---------------------------------------------------------------------------------
    async def resolve(self, host: str, port: int) -> list[str]:
        """The resolver's answer, cached for ``DNS_CACHE_SECONDS`` (a thread hop per request is the
        largest cost of a decision). The checked address is still pinned per connection."""
        now = time.monotonic()
        hit = self._dns.get((host, port))
        if hit and hit[0] > now:
            return hit[1]
        addresses = await self._resolver(host, port)
        if len(self._dns) > 4096:
            self._dns.clear()
        self._dns[(host, port)] = (now + DNS_CACHE_SECONDS, addresses)
        return addresses

    def _client(self, flow) -> ClientInfo:
        """The flow's client connection: address, pod identity, proxy mode and audit fields.

        Worked out once per connection and identity file: keep-alive requests reuse it until podwatch
        rewrites the file (checked at most once a second, as before), so a pod's namespace (which
        namespace-scoped rules decide on) is never older than the file. Dropped on disconnect."""
        client = flow.client_conn
        identity = self.identity
        identity.refresh()  # a clock read; a stat at most once a second
        info = self._clients.get(client.id)
        if info is not None and info.identity is identity and info.generation == identity.generation:
            return info
        client_ip = canonical_ip(str(client.peername[0])) if client.peername else ""
        pod = self.identity.lookup(client_ip) if client_ip else {"namespace": "", "name": "", "serviceAccount": ""}
        regular = isinstance(client.proxy_mode, mode_specs.RegularMode)
        members = AuditLog._encode({
            "client_ip": client_ip, "pod_namespace": pod["namespace"], "pod_name": pod["name"],
            "pod_service_account": pod["serviceAccount"], "node": self.identity.node or self.node,
            "proxy_mode": "regular" if regular else "transparent"})[1:-1]
        info = ClientInfo(client_ip, pod, regular, members, identity, identity.generation)
        if client.id and client.state is not ConnectionState.CLOSED:  # closed: client_disconnected has run
            self._clients[client.id] = info
        return info

    def _regular_mode(self, flow) -> bool:
        return self._client(flow).regular

    def _is_probe(self, flow: http.HTTPFlow) -> bool:
        if flow.request.path.split("?", 1)[0] != PROBE_PATH:
            return False
        dest = flow.server_conn.address
        if dest and canonical_ip(str(dest[0])) == PROBE_ADDRESS and dest[1] == PROBE_PORT:
            return True
        try:
            host, _ = split_host_port(flow.request.host_header or flow.request.host or "")
        except ValueError:
            return False
        return host.lower().rstrip(".") == PROBE_HOST

    def _answer_probe(self, flow: http.HTTPFlow) -> None:
        nonce = flow.request.headers.get(NONCE_HEADER, "")
        self.metrics.probes.inc()
        if not nonce:
            flow.response = http.Response.make(400, f"missing {NONCE_HEADER}\n".encode(),
                                               {"Content-Type": "text/plain"})
            return
        body = f"tproxy proxy on {self.node or self.hostname}\n".encode()
        flow.response = http.Response.make(200, body, {"Content-Type": "text/plain", ANSWER_HEADER: nonce})

    def _approve(self, flow, host: str, port: int, address: str) -> None:
        client = flow.client_conn
        if client.state is not ConnectionState.CLOSED:  # (gone while we awaited DNS: nothing to keep)
            self._approved.setdefault(client.id, {})[(host, port)] = address

    def _block_response(self, flow, reason: str) -> None:
        flow.response = http.Response.make(BLOCK_STATUS, BLOCK_BODY, {**BLOCK_HEADERS, "X-Tproxy-Reason": reason})

    def _timestamp(self, now: float) -> str:
        """``2026-11-27T06:05:28.123Z`` (UTC, milliseconds); the date-time part formatted once a second."""
        sec = int(now)
        if sec != self._ts_sec:
            self._ts_sec, self._ts_prefix = sec, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        return f"{self._ts_prefix}.{int(now * 1000) % 1000:03d}Z"

    def _audit(self, flow, v: Verdict, *, status: int | None, nbytes: int | None, error: str | None = None):
        """The audit line of a request's decision."""
        req = flow.request
        flow.metadata["tproxy_audited"] = True
        self._audit_line(flow, method=req.method, scheme=req.scheme, host=v.host or req.pretty_host,
                         port=v.port or req.port, path=req.path, decision=v.decision, reason=v.reason,
                         rule=v.rule, upstream=v.upstream or None, status=status, nbytes=nbytes, error=error)

    def _audit_line(self, flow, *, method, scheme, host, port, path, decision, reason, rule, upstream,
                    status, nbytes, error=None) -> None:
        """Write one audit line (every audit line has these fields, in this order). Assembled from
        pre-encoded parts (client, rule) and escaped fields: one line per request is the proxy's
        hottest path after mitmproxy itself."""
        self.audit.write_line(
            f'{{"ts":"{self._timestamp(time.time())}","event":"decision",{self._client(flow).audit_members},'
            f'"policy_mode":{_jstr(self.policy.mode)},"method":{_jstr(method)},"scheme":{_jstr(scheme)},'
            f'"host":{_jstr(host)},"port":{_jint(port)},"path":{_jstr(path)},'
            f'"sni":{_jstr(flow.client_conn.sni)},"decision":{_jstr(decision)},"reason":{_jstr(reason)},'
            f'{rule.audit_members if rule is not None else NO_RULE_MEMBERS},"upstream":{_jstr(upstream)},'
            f'"status":{_jint(status)},"bytes":{_jint(nbytes)}' + (f',"error":{_jstr(error)}}}' if error else "}"))

    # -- the decision ----------------------------------------------------------------------------
    def evaluate(self, flow: http.HTTPFlow, namespace: str | None = None) -> Verdict:
        """Policy decision for a request, without side effects (no DNS, no flow changes).

        Every view of the destination the request carries must agree (proxy/README.md, "Which view
        decides"): the HTTP/1 absolute-form target, the Host header (HTTP/2: ``:authority``), the
        TLS SNI and the connection's scheme and port."""
        req = flow.request
        data = req.data
        path = data.path
        if path[:1] != b"/" and not (path == b"*" and data.method == b"OPTIONS"):
            # Only an HTTP/2 or 3 :path can be anything else (HTTP/1 targets are parsed into a path,
            # or "*"); forwarded to an HTTP/1 origin it would be its request target (RFC 9113 8.3.1).
            return Verdict("block", "invalid-target")
        regular = self._regular_mode(flow)
        hosts = data.headers.get_all("Host")
        if len(hosts) > 1:  # RFC 9112 3.2: a request with more than one Host field line is invalid
            return Verdict("block", "multiple-host-headers")
        h2 = req.is_http2 or req.is_http3
        # = req.host_header (HTTP/2 and 3: :authority first), without a second header scan
        authority = ((data.authority and req.authority) if h2 else "") or \
            (hosts[0] if hosts else "") or (req.host if regular else "")
        if not authority:
            return Verdict("block", "missing-host")
        try:
            raw_host, host_port = split_host_port(authority)
            host = normalize_host(raw_host)
        except Exception:  # noqa: BLE001 - idna raises several types; any is "invalid"
            return Verdict("block", "invalid-host", host=authority)
        if regular:
            port = req.port
        else:  # the port the client connected to; a port in the Host header is not dialled
            dest = flow.server_conn.address
            port = dest[1] if dest else (443 if req.scheme == "https" else 80)
        target = None if h2 else request_target.absolute_target(req)
        if target is None and data.authority and not h2:  # parser not wrapped (bare test contexts)
            try:
                t_host, t_port = split_host_port(req.authority)
            except ValueError:
                return Verdict("block", "invalid-host", host=req.authority)
            target = (req.scheme, t_host, t_port or url.default_port(req.scheme))
        if target is not None:
            # HTTP/1 absolute-form: the origin would use the target and ignore Host (RFC 9112 3.2.2)
            mismatch = self._target_mismatch(target, host, host_port if hosts else None, req.scheme, port)
            if mismatch:
                return Verdict("block", mismatch, host=host, port=port)
        policy = self.policy
        if policy.mode == "open":  # no filtering at all (still dials the Host by name, audited)
            return Verdict("allow", "open-mode", host=host, port=port)
        scheme = req.scheme
        if scheme == "https" and flow.client_conn.tls:
            sni = flow.client_conn.sni
            if not sni:
                if not is_ip_literal(host):
                    return Verdict("block", "tls-without-sni", host=host, port=port)
            else:
                try:
                    sni_norm = normalize_host(sni)
                except Exception:  # noqa: BLE001
                    sni_norm = None
                if sni_norm != host:
                    return Verdict("block", "sni-host-mismatch", host=host, port=port)
        d = policy.decide(host, method=req.method, scheme=scheme, path=req.path, namespace=namespace)
        if d.allowed:
            return Verdict("allow", "rule", host=host, port=port, rule=d.rule, host_headers=hosts)
        reason = "ip-literal" if is_ip_literal(host) else d.reason
        return Verdict("block", reason, host=host, port=port)

    @staticmethod
    def _target_mismatch(target: tuple[str, str, int], host: str, host_port: int | None, scheme: str,
                         port: int) -> str | None:
        """Why an absolute-form target disagrees with the Host header (``host``, its explicit port
        ``host_port`` or None) or the connection (``scheme``, ``port``), or None if it agrees."""
        t_scheme, t_host, t_port = target
        try:
            if normalize_host(t_host) != host:
                return "authority-host-mismatch"
        except Exception:  # noqa: BLE001
            return "invalid-host"
        if t_scheme != scheme:
            return "authority-scheme-mismatch"
        if t_port != port or (host_port or url.default_port(t_scheme)) != t_port:
            return "authority-port-mismatch"
        return None

    def _finalize(self, v: Verdict) -> Verdict:
        """Report mode turns a would-be block into 'report' (allowed, logged)."""
        if v.decision == "block" and self.policy.mode == "report" and v.reason not in MALFORMED_REASONS:
            return dataclasses.replace(v, decision="report")
        return v

    # -- hooks -----------------------------------------------------------------------------------
    async def request(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error:
            return
        if self._is_probe(flow):
            flow.metadata["tproxy_probe"] = True
            self._answer_probe(flow)
            return
        t0 = time.perf_counter()
        namespace = self._client(flow).pod["namespace"]
        v = self._finalize(self.evaluate(flow, namespace or None))
        self.metrics.decision_seconds.observe(time.perf_counter() - t0)
        if v.decision == "block":
            return self._deny(flow, v)
        try:
            addresses = await self.resolve(v.host, v.port)
        except (OSError, UnicodeError) as e:
            self.metrics.count_request(v.decision, v.rule)
            flow.response = http.Response.make(502, f"tproxy: cannot resolve {v.host}: {e}\n".encode(),
                                               {"Content-Type": "text/plain"})
            self._audit(flow, v, status=502, nbytes=None, error=f"dns: {e}")
            return
        denied = [a for a in addresses if self.policy.address_denied(a)]
        if not addresses or denied:
            blocked = dataclasses.replace(v, decision="block", reason="denied-range",
                                          upstream=",".join(denied or addresses))
            if self.policy.mode == "enforce":
                return self._deny(flow, blocked)
            v = dataclasses.replace(blocked, decision="report" if self.policy.mode == "report" else "allow",
                                    reason="denied-range" if self.policy.mode == "report" else v.reason)
        pinned = addresses[0]
        v.upstream = pinned  # v is this request's own Verdict (fresh from evaluate)
        # Dial the policy host by name (mitmproxy keeps it as SNI and for certificate verification);
        # server_connect pins the connection to the address checked above.
        set_host_port(flow.request, v.host, v.port, v.host_headers)
        self._approve(flow, v.host, v.port, pinned)
        self.metrics.count_request(v.decision, v.rule)
        flow.metadata["tproxy"] = v

    def _deny(self, flow, v: Verdict) -> None:
        self.metrics.count_request("block", None)
        self._block_response(flow, v.reason)
        self._audit(flow, v, status=BLOCK_STATUS, nbytes=len(BLOCK_BODY))

    async def http_connect(self, flow: http.HTTPFlow) -> None:
        """Regular (standard) mode CONNECT.

        ``CONNECT host:443`` passes when some rule for the host allows https: the tunnelled requests
        are then decided one by one in ``request`` (a blocked client gets 418 here instead of a TLS
        error later). A rule whose ``methods`` list ``CONNECT`` allows a raw tunnel to any port of the
        host: the tunnel itself is approved (resolved, range-checked, pinned) and audited. Anything
        else is refused with 418. (In transparent mode mitmproxy refuses CONNECT itself.)
        """
        if flow.response:
            return
        try:
            host = normalize_host(flow.request.host)
        except Exception:  # noqa: BLE001
            return self._deny(flow, Verdict("block", "invalid-host", host=flow.request.host,
                                            port=flow.request.port))
        port = flow.request.port
        namespace = self._client(flow).pod["namespace"] or None
        candidates = [r for r in self.policy.candidates(host) if not r.namespaces or namespace in r.namespaces]
        tunnel_rule = min((r for r in candidates if "CONNECT" in r.methods), key=lambda r: r.index, default=None)
        if tunnel_rule is not None:
            v = Verdict("allow", "rule", host=host, port=port, rule=tunnel_rule)
            try:
                addresses = await self.resolve(host, port)
            except (OSError, UnicodeError) as e:
                flow.response = http.Response.make(502, f"tproxy: cannot resolve {host}: {e}\n".encode(),
                                                   {"Content-Type": "text/plain"})
                return self._audit(flow, v, status=502, nbytes=None, error=f"dns: {e}")
            denied = [a for a in addresses if self.policy.address_denied(a)]
            if not addresses or (denied and self.policy.mode == "enforce"):
                return self._deny(flow, dataclasses.replace(v, decision="block", reason="denied-range",
                                                            upstream=",".join(denied or addresses)))
            v = dataclasses.replace(v, upstream=addresses[0])
            self._approve(flow, host, port, addresses[0])
            self.metrics.count_request("allow", tunnel_rule)
            return self._audit(flow, v, status=200, nbytes=None)
        https_ok = port == 443 and any(not r.schemes or "https" in r.schemes for r in candidates)
        if https_ok or self.policy.mode in ("open", "report"):
            return
        self._deny(flow, Verdict("block", "connect-not-allowed", host=host, port=port))

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        """Count the bytes of streamed bodies (mitmproxy keeps no copy of them).

        A body of unknown size (chunked, or delimited by the connection's close) is streamed from
        its first byte: left to mitmproxy, it would be buffered up to ``stream_large_bodies`` and
        then streamed without passing through any hook, and the audit line would miss its bytes."""
        if "tproxy" not in flow.metadata:
            return
        response = flow.response
        if response.stream is True or (not response.stream and "content-length" not in response.headers):
            counter = {"n": 0}
            flow.metadata["tproxy_bytes"] = counter

            def count(chunk: bytes) -> bytes:
                counter["n"] += len(chunk)
                return chunk

            response.stream = count

    def response(self, flow: http.HTTPFlow) -> None:
        v = flow.metadata.pop("tproxy", None)
        if v is None:
            return
        counted = flow.metadata.get("tproxy_bytes")
        nbytes = counted["n"] if counted else len(flow.response.raw_content or b"")
        self._audit(flow, v, status=flow.response.status_code, nbytes=nbytes)

    def error(self, flow: http.HTTPFlow) -> None:
        msg = flow.error.msg if flow.error else "error"
        v = flow.metadata.pop("tproxy", None)
        if v is not None:  # an allowed request that failed upstream
            self._audit(flow, v, status=None, nbytes=None, error=msg)
            return
        if flow.metadata.get("tproxy_audited") or flow.metadata.get("tproxy_probe") or flow.request is None:
            return
        # Refused by mitmproxy before our request hook (CONNECT in transparent mode, smuggling
        # attempts, malformed requests): nothing was dialled; record it as a block.
        reason = "connect-not-allowed" if flow.request.method == "CONNECT" else "invalid-request"
        self.metrics.count_request("block", None)
        self._audit(flow, Verdict("block", reason, host=flow.request.host, port=flow.request.port),
                    status=400, nbytes=None, error=msg)

    def server_connect(self, data) -> None:
        """The choke point: only approved (client, host, port) may be dialled, at the checked address."""
        address = data.server.address
        if not address:
            data.server.error = "tproxy: no destination"
            return
        try:
            host = normalize_host(str(address[0]))
        except Exception:  # noqa: BLE001
            host = str(address[0])
        pinned = self._approved.get(data.client.id, {}).get((host, address[1]))
        if pinned is None:
            self.metrics.blocked_connections.labels("not-approved").inc()
            log.warning("upstream_connection_refused", client=str(data.client.peername),
                        destination=f"{address[0]}:{address[1]}", reason="not allowed by a request decision")
            data.server.error = "tproxy: connection not allowed by policy"
            return
        # Dial the checked address. The name is put back once connected (server_connected), because
        # mitmproxy reuses an upstream connection only for requests whose (host, port) equals its
        # address: without that, every keep-alive request would open a new connection and the 6th
        # would wait forever on mitmproxy's 5-connections-per-address semaphore.
        self._dialled_by_name[data.server.id] = address
        data.server.address = (pinned, address[1])

    def server_connected(self, data) -> None:
        name_address = self._dialled_by_name.pop(data.server.id, None)
        if name_address is not None:
            # Connection.__setattr__ refuses address changes on open connections; this one only
            # restores the name the connection was approved and verified (SNI) for.
            object.__setattr__(data.server, "address", name_address)

    def server_connect_error(self, data) -> None:
        self._dialled_by_name.pop(data.server.id, None)

    def tcp_start(self, flow) -> None:
        """Non-HTTP bytes on an intercepted port: audit and count; server_connect refuses the dial."""
        self.metrics.blocked_connections.labels("raw-tcp").inc()
        dest = flow.server_conn.address
        self._audit_line(flow, method=None, scheme="tcp", host=str(dest[0]) if dest else None,
                         port=dest[1] if dest else None, path=None, decision="block", reason="raw-tcp", rule=None,
                         upstream=None, status=None, nbytes=0)

    def client_disconnected(self, client) -> None:
        self._approved.pop(client.id, None)
        self._clients.pop(client.id, None)


def hook_table(addon) -> dict:
    """``{hook name: bound method or None}`` for every hook mitmproxy knows (see proxy/addon.py)."""
    # Importing the layers registers their hooks in mitmproxy.hooks.all_hooks (a running mitmproxy
    # has done so already; this makes the table complete in any context).
    import mitmproxy.addonmanager  # noqa: F401
    import mitmproxy.proxy.layers  # noqa: F401
    import mitmproxy.proxy.server_hooks  # noqa: F401
    from mitmproxy import hooks
    # add_log is mitmproxy's deprecated log event: merely having the attribute (even None) makes
    # AddonManager.register warn "The add_log event has been deprecated" on every (re)load.
    return {name: getattr(addon, name, None) for name in hooks.all_hooks if name != "add_log"}
