"""Prometheus metrics of the proxy, in their own registry (one per addon instance).

Why a private registry: the addon can be instantiated several times in one process (tests,
mitmproxy script reloads); a registry per instance avoids duplicate-registration errors and
keeps each instance's numbers its own. ``controllerkit.serve.HealthServer`` serves it.

Host labels are bounded: a request is labelled with the *rule pattern* that allowed it, and only
the first ``HOST_LABEL_LIMIT`` rules of a scope, and at most ``HOST_LABEL_LIMIT`` distinct patterns
in all, get their own label (``other`` beyond); blocked requests are labelled ``unmatched`` (their
host is chosen by the client: unbounded).

Namespace labels are bounded too: the first ``NAMESPACE_LABEL_LIMIT`` namespaces seen get their own
label, later ones share ``other``; a client whose pod is unknown is ``unknown``. So
``tproxy_requests`` has at most 3 decisions x 51 hosts x 101 namespaces series.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

HOST_LABEL_LIMIT = 50
NAMESPACE_LABEL_LIMIT = 100


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "tproxy_requests",
            "Policy decisions on requests, by decision, host and namespace.",
            ["decision", "host", "namespace"],
            registry=r,
        )
        self.blocked_connections = Counter(
            "tproxy_blocked_connections", "Connections refused before any upstream contact, by reason.", ["reason"], registry=r
        )
        self.policy_reloads = Counter("tproxy_policy_reloads", "Policy loads, by result (success|error).", ["result"], registry=r)
        self.policy_rules = Gauge("tproxy_policy_rules", "Rules in the policy in force.", registry=r)
        self.policy_info = Gauge("tproxy_policy_mode", "1 for the mode in force.", ["mode"], registry=r)
        self.decision_seconds = Histogram(
            "tproxy_decision_seconds",
            "Time to decide a request (policy match, without DNS).",
            buckets=(0.00001, 0.00003, 0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1),
            registry=r,
        )
        self.spliced = Counter(
            "tproxy_spliced_connections", "TLS connections forwarded by SNI without decryption (splice rules).", registry=r
        )
        self.probes = Counter("tproxy_probe_requests", "Interception probes answered.", registry=r)
        self.identity_errors = Counter("tproxy_identity_errors", "Unreadable pod identity files.", registry=r)
        self.namespace_rejections = Counter(
            "tproxy_namespace_policy_rejections",
            "Namespace (delegated) policies rejected, by namespace and cause (parse|ceiling).",
            ["namespace", "cause"],
            registry=r,
        )
        self.namespace_policies = Gauge("tproxy_namespace_policies", "Namespace (delegated) policies in force.", registry=r)
        self._request_children: dict[tuple[str, str, str], Any] = {}
        self._namespaces: set[str] = set()
        self._hosts: set[str] = set()

    def count_request(self, decision: str, rule, namespace: str = "") -> None:
        """``requests.labels(decision, host_label(rule), namespace_label(namespace)).inc()``, with the
        label children cached (``.labels()`` validates and locks on every call; bounded, see above)."""
        key = (decision, self.host_label(rule), self.namespace_label(namespace))
        child = self._request_children.get(key)
        if child is None:
            child = self._request_children[key] = self.requests.labels(*key)
        child.inc()

    def host_label(self, rule) -> str:
        if rule is None:
            return "unmatched"
        host = rule.host
        if rule.index >= HOST_LABEL_LIMIT:
            return "other"
        if host not in self._hosts:
            if len(self._hosts) >= HOST_LABEL_LIMIT:
                return "other"
            self._hosts.add(host)
        return host

    def namespace_label(self, namespace: str) -> str:
        if not namespace:
            return "unknown"
        if namespace not in self._namespaces:
            if len(self._namespaces) >= NAMESPACE_LABEL_LIMIT:
                return "other"
            self._namespaces.add(namespace)
        return namespace

    def set_policy(self, policy) -> None:
        self.policy_rules.set(getattr(policy, "rule_count", len(policy.rules)))
        for mode in ("enforce", "report", "open"):
            self.policy_info.labels(mode).set(1 if mode == policy.mode else 0)
