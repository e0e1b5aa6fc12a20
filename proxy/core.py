"""The teapot-blocking addon: mitmproxy's hooks, wired to the modules that do the work.

Loaded by mitmdump through ``proxy/addon.py``. The invariant it keeps is *the proxy dials what
policy allowed, never what the client pointed at*:

1. ``request`` decides on the request's Host (proxy/decision.py, a pure function of the request's
   facts). If allowed, it resolves that host itself (proxy/dns.py), checks every resolved address
   against ``deny_ranges``, rewrites ``flow.request.host`` to the policy host's *name* (so the
   client-chosen destination IP is never used), forwards HTTP/1 in origin-form and records an
   *approval* (client connection, host, port) → pinned address (proxy/pinning.py).
2. ``server_connect`` is the choke point for every upstream connection mitmproxy tries to open:
   without an approval it is never opened; an approved one is pinned to the checked address.
   ``connection_strategy=lazy`` is required (proxy/options.py): nothing is dialled before the
   request hook has run.

Everything else (raw TCP on the intercepted ports, CONNECT in transparent mode, TLS without SNI)
therefore fails closed by construction; the hooks for them only add audit lines and metrics.
Audit lines: proxy/audit.py; the policy file's hot reload: proxy/policy_watch.py; mitmproxy
internals: proxy/mitm.py only.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time

import structlog
from mitmproxy import ctx, exceptions, http

from proxy import health, mitm, options, probe_answer, splice, trust
from proxy.audit import AuditLog
from proxy.clients import Clients
from proxy.decision import ALLOW, BLOCK, Reason, Verdict, decide, decide_connect, finalize, screen_addresses, screen_tunnel
from proxy.delegation import ConfigMapWatch, NamespacePolicies
from proxy.dns import DnsCache, Resolver, system_resolve
from proxy.identity import IdentityMap
from proxy.metrics import Metrics
from proxy.pinning import Pinning
from proxy.policy import PolicyError
from proxy.policy_watch import PolicyWatch
from proxy.scopes import Scope, ScopedPolicy

BLOCK_STATUS = 418
BLOCK_BODY = b"Access Denied by Administrator"
BLOCK_HEADERS = {"Content-Type": "text/html"}

# A lazy proxy (no .bind() here): it must pick up setup_logging's configuration, which the script
# entry point installs after importing this module.
log = structlog.get_logger()


class TproxyAddon:
    """The mitmproxy addon. ``resolver`` is injectable for unit tests (default: the system resolver)."""

    def __init__(self, resolver: Resolver = system_resolve):
        self.dns = DnsCache(resolver)
        self.metrics = Metrics()
        self.policy: ScopedPolicy = ScopedPolicy.builtin()
        self.delegated: dict[str, Scope] = {}  # namespace -> its own policy (proxy/delegation.py)
        self.namespace_policies = NamespacePolicies(self.policy, self._publish_delegated, self.metrics)
        self.delegation_watch: ConfigMapWatch | None = None
        self.metrics.set_policy(self.policy)
        self.identity = IdentityMap("")
        self.audit = AuditLog("-")
        self.health = None
        self.hostname = socket.gethostname()
        self.node = os.environ.get("NODE_NAME", "")
        self.clients = Clients(self.node)
        self.pinning = Pinning(self.metrics)
        self.policy_watch = PolicyWatch(lambda: self.policy, self._install_policy, self.metrics)
        self._bundle = ""  # trust bundle written for tproxy_extra_ca
        self._kubeconfig = ""  # tproxy_kubeconfig: for the namespace policies' watch ("" = in-cluster)
        self._running = False
        self._splicing = False  # some rule says splice: true (proxy/splice.py)

    # -- lifecycle and options -------------------------------------------------------------------
    def load(self, loader):
        mitm.install_request_target()  # keeps an absolute-form target's scheme and port for the decision
        options.declare(loader)

    def configure(self, updated):
        o = ctx.options
        if not updated.isdisjoint(options.REQUIRED):
            # Refuse rather than change another addon's option. At start (mitmproxy configures a
            # script with every option once loaded) the error is logged and mitmdump exits; later
            # the change is rolled back.
            options.check_required(o)
        if "tproxy_log_level" in updated:
            options.check_log_level(o.tproxy_log_level)
        if "tproxy_kubeconfig" in updated:
            self._kubeconfig = o.tproxy_kubeconfig
        if "tproxy_policy" in updated:
            try:
                policy = ScopedPolicy.load(o.tproxy_policy) if o.tproxy_policy else ScopedPolicy.builtin()
            except PolicyError as e:
                self.metrics.policy_reloads.labels("error").inc()
                log.error("policy_rejected", path=o.tproxy_policy, error=str(e), kept=self.policy.source)
                raise exceptions.OptionsError(f"tproxy_policy: {e}") from None
            self._install_policy(policy)
            self.policy_watch.watching(o.tproxy_policy)
        if "tproxy_identity" in updated:
            self.identity = IdentityMap(o.tproxy_identity, on_error=self._identity_error)
        if "tproxy_audit_flush_ms" in updated:
            options.check_audit_flush_ms(o.tproxy_audit_flush_ms)
            self.audit.flush_seconds = o.tproxy_audit_flush_ms / 1000
        if "tproxy_audit" in updated:
            options.check_audit_target(o.tproxy_audit)
            self.audit = self.audit.replaced_by(o.tproxy_audit)
        if "tproxy_extra_ca" in updated and o.tproxy_extra_ca:
            bundle = trust.write_bundle(o.tproxy_extra_ca)
            o.update(ssl_verify_upstream_trusted_ca=bundle)
            trust.remove_bundle(self._bundle)
            self._bundle = bundle
            log.info("upstream_trust", extra_ca=o.tproxy_extra_ca, bundle=bundle)
        if "tproxy_metrics_port" in updated or "tproxy_metrics_host" in updated:
            options.check_metrics_port(o.tproxy_metrics_port)
            old, self.health = self.health, None
            self.health = health.restart(old, o.tproxy_metrics_host, o.tproxy_metrics_port, self.readiness, self.metrics.registry)

    def readiness(self) -> tuple[bool, str]:
        """/readyz: ready once mitmproxy runs (listening) with a policy in force."""
        if not self._running:
            return False, "mitmproxy is not running yet"
        return True, (
            f"policy {self.policy.source} ({self.policy.mode}, {self.policy.rule_count} rules, {len(self.policy.scopes)} scopes)"
        )

    def running(self):
        self._running = True
        try:
            from controllerkit.log import setup_logging

            setup_logging("proxy", ctx.options.tproxy_log_level)
        except ImportError:  # pragma: no cover - controllerkit is part of the image
            pass
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not inside an event loop (bare test contexts): unbuffered, not watched
            loop = None
        if loop is not None:
            self.audit.attach(loop)
            self.policy_watch.start()
        o = ctx.options
        log.info(
            "proxy_ready",
            policy=self.policy.source,
            mode=self.policy.mode,
            rules=len(self.policy.rules),
            identity=o.tproxy_identity or None,
            metrics_port=o.tproxy_metrics_port,
            connection_strategy=options.value(o, "connection_strategy"),
            stream_large_bodies=options.value(o, "stream_large_bodies"),
        )
        if "stream_large_bodies" in o.keys() and not o.stream_large_bodies:
            log.warning(
                "stream_large_bodies_unset",
                effect="responses with a Content-Length are buffered whole; "
                "the chart and the image pass --set stream_large_bodies=1m",
            )

    def done(self):
        self.policy_watch.stop()
        self._watch_namespace_policies("")
        if self.health:
            self.health.stop()
            self.health = None
        self.audit.close()
        trust.remove_bundle(self._bundle)
        self._bundle = ""

    def _install_policy(self, policy: ScopedPolicy) -> None:
        self.policy = policy
        self._splicing = splice.any_splice_rule(policy)
        self.metrics.policy_reloads.labels("success").inc()
        self.metrics.set_policy(policy)
        log.info(
            "policy_loaded",
            path=policy.source,
            mode=policy.mode,
            rules=len(policy.rules),
            scopes=len(policy.scopes),
            scoped_rules=policy.rule_count - len(policy.rules),
            delegation=policy.config_map or None,
        )
        self.namespace_policies.repolicy(policy)
        self._watch_namespace_policies(policy.config_map)

    def _publish_delegated(self, scopes: dict[str, Scope]) -> None:
        self.delegated = scopes  # replaced, never mutated: the event loop reads it without a lock

    def _watch_namespace_policies(self, name: str) -> None:
        """Watch the namespaces' ConfigMaps called ``name`` ("" = stop; proxy/delegation.py)."""
        current = self.delegation_watch
        if current is not None and current.name == name:
            return
        if current is not None:
            current.stop()
            self.delegation_watch = None
            for ns in list(self.delegated):
                self.namespace_policies.on_delete({"metadata": {"namespace": ns}})
        if not name:
            return
        try:
            watch = ConfigMapWatch(name, self.namespace_policies, self._kubeconfig, self.node)
        except Exception as e:  # noqa: BLE001 - no API access: namespaces get the file's scopes only
            log.error(
                "namespace_policies_unavailable",
                configmap=name,
                error=str(e),
                effect="namespace ConfigMap policies are not loaded; the file's scopes and default apply",
            )
            return
        watch.start()
        self.delegation_watch = watch

    def check_policy_file(self) -> bool:
        """Reload the policy file if it changed (proxy/policy_watch.py); True when a new one is in force."""
        return self.policy_watch.check()

    def _identity_error(self, msg: str) -> None:
        self.metrics.identity_errors.inc()
        log.error("identity_unreadable", error=msg)

    # -- hooks -----------------------------------------------------------------------------------
    async def request(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error:
            return
        if probe_answer.is_probe(flow):
            flow.metadata["tproxy_probe"] = True
            self.metrics.probes.inc()
            probe_answer.answer(flow, self.node or self.hostname)
            return
        t0 = time.perf_counter()
        client = self.clients.get(flow.client_conn, self.identity)
        scope = self.clients.scope(client, self.policy, self.delegated)
        policy = scope.policy
        v = finalize(
            decide(mitm.request_facts(flow, client.regular, client.pod["namespace"] or None), scope, self.policy.deny, client),
            scope.mode,
        )
        v.scope = scope
        self.metrics.decision_seconds.observe(time.perf_counter() - t0)
        if v.decision == BLOCK:
            return self._deny(flow, v)
        try:
            addresses = await self.dns.resolve(v.host, v.port)
        except (OSError, UnicodeError) as e:
            self.metrics.count_request(v.decision, v.rule, client.pod["namespace"])
            flow.response = http.Response.make(
                502, f"tproxy: cannot resolve {v.host}: {e}\n".encode(), {"Content-Type": "text/plain"}
            )
            self._audit(flow, v, status=502, nbytes=None, error=f"dns: {e}")
            return
        v = screen_addresses(v, addresses, policy)
        if v.decision == BLOCK:
            return self._deny(flow, v)
        pinned = addresses[0]
        v.upstream = pinned  # v is this request's own Verdict (fresh from decide)
        # Dial the policy host by name (mitmproxy keeps it as SNI and for certificate verification);
        # server_connect pins the connection to the address checked above.
        mitm.set_host_port(flow.request, v.host, v.port, v.host_headers)
        self.pinning.approve(flow.client_conn, v.host, v.port, pinned)
        self.metrics.count_request(v.decision, v.rule, client.pod["namespace"])
        flow.metadata["tproxy"] = v

    def _deny(self, flow, v: Verdict) -> None:
        self.metrics.count_request(BLOCK, None, self.clients.get(flow.client_conn, self.identity).pod["namespace"])
        flow.response = http.Response.make(BLOCK_STATUS, BLOCK_BODY, {**BLOCK_HEADERS, "X-Tproxy-Reason": v.reason})
        self._audit(flow, v, status=BLOCK_STATUS, nbytes=len(BLOCK_BODY))

    async def http_connect(self, flow: http.HTTPFlow) -> None:
        """Regular (standard) mode CONNECT (proxy/decision.py, ``decide_connect``). In transparent mode
        mitmproxy refuses CONNECT itself."""
        if flow.response:
            return
        client = self.clients.get(flow.client_conn, self.identity)
        scope = self.clients.scope(client, self.policy, self.delegated)
        v = decide_connect(flow.request.host, flow.request.port, client.pod["namespace"] or None, scope.policy, self.policy.deny)
        if v is None:  # the tunnel opens; its requests are decided one by one
            return
        v.scope = scope
        if v.decision == BLOCK:
            return self._deny(flow, v)
        try:
            addresses = await self.dns.resolve(v.host, v.port)
        except (OSError, UnicodeError) as e:
            flow.response = http.Response.make(
                502, f"tproxy: cannot resolve {v.host}: {e}\n".encode(), {"Content-Type": "text/plain"}
            )
            return self._audit(flow, v, status=502, nbytes=None, error=f"dns: {e}")
        v = screen_tunnel(v, addresses, scope.policy)
        if v.decision == BLOCK:
            return self._deny(flow, v)
        self.pinning.approve(flow.client_conn, v.host, v.port, v.upstream)
        self.metrics.count_request(ALLOW, v.rule, client.pod["namespace"])
        return self._audit(flow, v, status=200, nbytes=None)

    def tls_clienthello(self, data):
        """Splice (forward undecrypted, by SNI) a TLS connection that a ``splice: true`` rule allows
        (proxy/splice.py); any other is intercepted as usual and its requests decided one by one.

        A plain method: without a splice rule in the policy it returns None at once, and mitmproxy
        has no coroutine to create and await for every TLS connection (it awaits what a hook returns)."""
        if not self._splicing:
            return None
        return self._splice(data)

    async def _splice(self, data) -> None:
        conn, sni, port = mitm.client_hello(data)
        if not sni or port is None:
            return
        client = self.clients.get(conn, self.identity)
        scope = self.clients.scope(client, self.policy, self.delegated)
        namespace = client.pod["namespace"]
        v = splice.connection_verdict(sni, port, namespace or None, client.regular, scope.policy, self.policy.deny)
        if v is None:
            return
        try:
            addresses = await self.dns.resolve(v.host, v.port)
        except (OSError, UnicodeError):
            return  # intercepted: the request hook answers 502 as for any unresolvable host
        v = splice.screen(v, addresses, scope.policy)
        if v is None:
            return  # intercepted: the request hook blocks (or reports) the denied range
        v.scope = scope
        mitm.splice(data, v.host, v.port)
        self.pinning.approve(conn, v.host, v.port, v.upstream)
        self.metrics.spliced.inc()
        self.metrics.count_request(ALLOW, v.rule, namespace)
        self.audit.decision(
            client.audit_members,
            scope.mode,
            scope.audit_members,
            None,
            "https",
            v.host,
            v.port,
            None,
            sni,
            ALLOW,
            v.reason,
            v.rule,
            v.upstream,
            None,
            None,
        )

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        """Count the bytes of streamed bodies (mitmproxy keeps no copy of them).

        A body of unknown size (chunked, or delimited by the connection's close) is streamed from
        its first byte: left to mitmproxy, it would be buffered up to ``stream_large_bodies`` and
        then streamed without passing through any hook, and the audit line would miss its bytes."""
        if "tproxy" not in flow.metadata:
            return
        response = flow.response
        if response is None:  # mitmproxy calls responseheaders with the response set
            return
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
        response = flow.response
        if response is None:  # mitmproxy calls response with the response set
            return
        counted = flow.metadata.get("tproxy_bytes")
        nbytes = counted["n"] if counted else len(response.raw_content or b"")
        self._audit(flow, v, status=response.status_code, nbytes=nbytes)

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
        reason = Reason.CONNECT_NOT_ALLOWED if flow.request.method == "CONNECT" else Reason.INVALID_REQUEST
        self.metrics.count_request(BLOCK, None, self.clients.get(flow.client_conn, self.identity).pod["namespace"])
        self._audit(
            flow, Verdict(BLOCK, reason, host=flow.request.host, port=flow.request.port), status=400, nbytes=None, error=msg
        )

    def server_connect(self, data) -> None:
        """The choke point: only approved (client, host, port) may be dialled, at the checked address."""
        self.pinning.server_connect(data)

    def server_connected(self, data) -> None:
        self.pinning.server_connected(data)

    def server_connect_error(self, data) -> None:
        self.pinning.server_connect_error(data)

    def tcp_start(self, flow) -> None:
        """Non-HTTP bytes on an intercepted port: audit and count; server_connect refuses the dial."""
        self.metrics.blocked_connections.labels("raw-tcp").inc()
        dest = flow.server_conn.address
        client = self.clients.get(flow.client_conn, self.identity)
        scope = self.clients.scope(client, self.policy, self.delegated)
        self.audit.decision(
            client.audit_members,
            scope.mode,
            scope.audit_members,
            None,
            "tcp",
            str(dest[0]) if dest else None,
            dest[1] if dest else None,
            None,
            flow.client_conn.sni,
            BLOCK,
            Reason.RAW_TCP,
            None,
            None,
            None,
            0,
        )

    def client_disconnected(self, client) -> None:
        self.pinning.forget(client)
        self.clients.forget(client)

    # -- audit -----------------------------------------------------------------------------------
    def _audit(self, flow, v: Verdict, *, status: int | None, nbytes: int | None, error: str | None = None):
        """The audit line of a request's decision."""
        req = flow.request
        flow.metadata["tproxy_audited"] = True
        client = self.clients.get(flow.client_conn, self.identity)
        scope: Scope = v.scope if isinstance(v.scope, Scope) else self.clients.scope(client, self.policy, self.delegated)
        self.audit.decision(
            client.audit_members,
            scope.mode,
            scope.audit_members,
            req.method,
            req.scheme,
            v.host or req.pretty_host,
            v.port or req.port,
            req.path,
            flow.client_conn.sni,
            v.decision,
            v.reason,
            v.rule,
            v.upstream or None,
            status,
            nbytes,
            error,
        )
