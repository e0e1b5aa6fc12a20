"""A namespace's own policy (delegation): parsed, checked against the admin's ceiling, made a scope.

The namespace owner writes, in the ConfigMap named by ``delegation.configMap`` in their namespace,
key ``policy.yaml``::

    mode: enforce            # one of the ceiling's modes (default: enforce or report; never open)
    rules:                   # today's rule syntax, without 'namespaces' (the scope is the namespace)
      - host: api.psp.example
        methods: [POST]

Rejected, with the reason (:class:`proxy.policy.PolicyError`): text that does not parse, keys other
than ``mode`` and ``rules``, a mode the ceiling does not grant, a rule whose host the ceiling's
``hosts`` cover (or a wildcard that would cover one of them), a rule naming an IP literal in the
ceiling's ``ranges`` or in the cluster's ``deny_ranges``. Accepted ones decide with the cluster's
ranges plus the ceiling's ranges denied on top (:class:`proxy.scopes.BoundedPolicy`).
"""

from __future__ import annotations

import ipaddress
from typing import Any


from proxy.policy import MODES, Policy, PolicyError, Rule, is_ip_literal, parse_policy_yaml
from proxy.scopes import BoundedPolicy, Ceiling, Scope, ScopedPolicy, Selector

DATA_KEY = "policy.yaml"
_KEYS = {"mode", "rules"}
MAX_BYTES = 256 * 1024
MAX_RULES = 1000


def parse(text: Any, namespace: str, scoped: ScopedPolicy, origin: str) -> Scope:
    """The scope of namespace ``namespace`` from its ConfigMap's ``policy.yaml``; PolicyError if bad."""
    if not isinstance(text, str):
        raise PolicyError(f"{origin}: no '{DATA_KEY}' key in the ConfigMap's data")
    if len(text.encode("utf-8", "replace")) > MAX_BYTES:
        raise PolicyError(f"{origin}: {DATA_KEY} is larger than {MAX_BYTES} bytes")

    def build(doc: Any, source: str) -> Scope:
        try:
            return _scope(doc, namespace, scoped, source)
        except PolicyError as e:
            raise PolicyError(f"{source}: {e}") from None

    return parse_policy_yaml(text, origin, build)


def _scope(doc: Any, namespace: str, scoped: ScopedPolicy, origin: str) -> Scope:
    if not isinstance(doc, dict):
        raise PolicyError("the namespace policy must be a mapping with 'mode' and 'rules'")
    unknown = set(doc) - _KEYS
    if unknown:
        raise PolicyError(f"unknown key(s) {sorted(unknown)}; a namespace policy has only {sorted(_KEYS)}")
    ceiling = scoped.ceiling
    mode = doc.get("mode", "enforce")
    if mode not in MODES:
        raise PolicyError(f"mode: {mode!r} is not one of {list(MODES)}")
    if mode not in ceiling.modes:
        raise PolicyError(f"ceiling: mode {mode!r} is not allowed to namespaces (allowed: {list(ceiling.modes)})")
    raw = doc.get("rules") or []
    if not isinstance(raw, list):
        raise PolicyError("rules: must be a list")
    if len(raw) > MAX_RULES:
        raise PolicyError(f"rules: {len(raw)} rules, more than the {MAX_RULES} a namespace may have")
    rules = []
    for i, r in enumerate(raw):
        if isinstance(r, dict) and "namespaces" in r:
            raise PolicyError(f"rules[{i}]: 'namespaces' is not allowed in a namespace policy")
        if isinstance(r, dict) and r.get("splice"):  # no request lines, no path checks: the cluster's choice
            raise PolicyError(f"rules[{i}]: 'splice' is not allowed in a namespace policy")
        rule = Policy._rule(i, r)
        violation = ceiling_violation(rule, ceiling, scoped.default.policy)
        if violation:
            raise PolicyError(f"ceiling: rules[{i}] {rule.host!r}: {violation}")
        rules.append(rule)
    base = scoped.default.policy
    policy = BoundedPolicy(mode, rules, base.deny_ranges, base.allow_ranges, origin, ceiling_ranges=ceiling.ranges)
    return Scope(f"namespace:{namespace}", Selector(frozenset({namespace})), policy, origin, scoped.delegated_order)


def ceiling_violation(rule: Rule, ceiling: Ceiling, cluster: Policy) -> str:
    """Why ``rule`` breaks the ceiling ("" when it does not)."""
    host = rule.host
    if is_ip_literal(host):
        ip = ipaddress.ip_address(host)
        if any(ip in n for n in ceiling.ranges):
            return "an address in the ceiling's ranges"
        if cluster.address_denied(host):
            return "an address in the cluster's deny_ranges"
    if ceiling.hosts is None:
        return ""
    if host.startswith("*."):
        suffix = host[2:]
        if _covers_any(suffix, ceiling.hosts):
            return "the wildcard covers hosts the ceiling forbids"
        return ""
    forbidden = next(iter(ceiling.hosts.candidates(host)), None)
    if forbidden is not None:
        return f"the ceiling forbids it ({forbidden.host})"
    return ""


def _covers_any(suffix: str, hosts: Policy) -> bool:
    """Whether ``*.suffix`` covers some forbidden pattern: a forbidden host or wildcard below ``suffix``,
    or a forbidden wildcard above it (which covers all of ``*.suffix``)."""
    tail = "." + suffix
    for r in hosts.rules:
        pattern = r.host[2:] if r.host.startswith("*.") else r.host
        if pattern.endswith(tail):
            return True
        if r.host.startswith("*.") and (suffix == pattern or suffix.endswith("." + pattern)):
            return True
    return False
