"""Prometheus metrics of the proxy, in their own registry (one per addon instance).

Why a private registry: the addon can be instantiated several times in one process (tests,
mitmproxy script reloads); a registry per instance avoids duplicate-registration errors and
keeps each instance's numbers its own. ``controllerkit.serve.HealthServer`` serves it.

Host labels are bounded: a request is labelled with the *rule pattern* that allowed it, and only
the first ``HOST_LABEL_LIMIT`` rules get their own label (``other`` beyond); blocked requests are
labelled ``unmatched`` (their host is chosen by the client: unbounded).
"""
from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

HOST_LABEL_LIMIT = 50


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("tproxy_requests", "Policy decisions on requests, by decision and host.",
                                ["decision", "host"], registry=r)
        self.blocked_connections = Counter(
            "tproxy_blocked_connections", "Connections refused before any upstream contact, by reason.",
            ["reason"], registry=r)
        self.policy_reloads = Counter("tproxy_policy_reloads", "Policy loads, by result (success|error).",
                                      ["result"], registry=r)
        self.policy_rules = Gauge("tproxy_policy_rules", "Rules in the policy in force.", registry=r)
        self.policy_info = Gauge("tproxy_policy_mode", "1 for the mode in force.", ["mode"], registry=r)
        self.decision_seconds = Histogram(
            "tproxy_decision_seconds", "Time to decide a request (policy match, without DNS).",
            buckets=(0.00001, 0.00003, 0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1), registry=r)
        self.probes = Counter("tproxy_probe_requests", "Interception probes answered.", registry=r)
        self.identity_errors = Counter("tproxy_identity_errors", "Unreadable pod identity files.", registry=r)
        self._request_children: dict[tuple[str, str], Any] = {}

    def count_request(self, decision: str, rule) -> None:
        """``requests.labels(decision, host_label(rule)).inc()``, with the label children cached
        (``.labels()`` validates and locks on every call; the label set is bounded, see above)."""
        key = (decision, self.host_label(rule))
        child = self._request_children.get(key)
        if child is None:
            child = self._request_children[key] = self.requests.labels(*key)
        child.inc()

    @staticmethod
    def host_label(rule) -> str:
        if rule is None:
            return "unmatched"
        return rule.host if rule.index < HOST_LABEL_LIMIT else "other"

    def set_policy(self, policy) -> None:
        self.policy_rules.set(len(policy.rules))
        for mode in ("enforce", "report", "open"):
            self.policy_info.labels(mode).set(1 if mode == policy.mode else 0)
