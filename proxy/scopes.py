"""Scoped policy: rule sets per workload (namespace, service account, pod labels), a cluster-wide
deny list, and the ceiling that bounds the namespaces' own (delegated) policies.

A policy file of today (``mode``, ``rules``, ``deny_ranges``, ``allow_ranges``) is a scoped policy
with only the *default* scope, and decides exactly as before. The new top-level keys::

    deny_hosts: ["*.pastebin.example", "203.0.113.9"]   # cluster-wide deny list: always wins
    scopes:
      - name: payments                                  # audit lines name the scope
        match:                                          # every key given must match (AND)
          namespaces: [payments]                        #   any of these namespaces
          serviceAccounts: [api]                        #   any of these service accounts
          labels: {app: checkout}                       #   all of these pod labels
        mode: enforce                                   # enforce | report | open (default enforce)
        rules: [{host: api.psp.example, methods: [POST]}]   # today's rule syntax
    delegation:                                         # namespaces' own allow lists (proxy/delegation.py)
      configMap: tproxy-egress                          # the fixed ConfigMap name; "" = off
      ceiling:
        hosts: ["*.corp.example"]                       # hosts a namespace may never allow
        ranges: [198.18.0.0/15]                         # never reachable under a namespace policy
        modes: [enforce, report]                        # modes a namespace may choose

Precedence, for a request from a pod (namespace N, service account S, labels L):

1. ``deny_hosts`` always wins: a match is blocked (``denied-host``) whatever the scope or its mode.
2. Otherwise the *most specific* scope whose ``match`` selects the pod decides alone (no fall-through
   to the default: scopes do not inherit each other's allow lists). Specificity is the number of
   terms given: ``namespaces`` counts 1, ``serviceAccounts`` 1, each label 1. A namespace's own
   ConfigMap policy is a scope selecting that namespace (specificity 1). Ties go to the scope listed
   first in the file; the namespace's ConfigMap comes after every file scope.
3. Otherwise the *default* scope (the top-level ``mode`` and ``rules``). A source whose pod is unknown
   (not in podwatch's identity map) always gets the default: make it the most restrictive.

``deny_ranges`` / ``allow_ranges`` are cluster-wide and apply in every scope; a namespace policy is
further bounded by ``ceiling.ranges``.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import json
from typing import Any, Iterable, Mapping


from proxy.policy import (
    MODES,
    NO_MATCH,
    Decision,
    Policy,
    PolicyError,
    Rule,
    _networks,
    _strings,
    parse_policy_yaml,
    read_policy_file,
)
from proxy.scope_index import ScopeIndex, match

_SCOPE_KEYS = {"deny_hosts", "scopes", "delegation"}
_SCOPE_ENTRY_KEYS = {"name", "match", "mode", "rules"}
_MATCH_KEYS = {"namespaces", "serviceAccounts", "labels"}
_DELEGATION_KEYS = {"configMap", "ceiling"}
_CEILING_KEYS = {"hosts", "ranges", "modes"}
DEFAULT_SCOPE = "default"
DEFAULT_DELEGATED_MODES = ("enforce", "report")


@dataclasses.dataclass(frozen=True)
class Selector:
    namespaces: frozenset[str] = frozenset()
    service_accounts: frozenset[str] = frozenset()
    labels: tuple[tuple[str, str], ...] = ()

    @property
    def specificity(self) -> int:
        return bool(self.namespaces) + bool(self.service_accounts) + len(self.labels)

    def matches(self, namespace: str, service_account: str, labels: Mapping[str, str]) -> bool:
        if self.namespaces and namespace not in self.namespaces:
            return False
        if self.service_accounts and service_account not in self.service_accounts:
            return False
        return all(labels.get(k) == v for k, v in self.labels)

    def describe(self) -> str:
        parts = []
        if self.namespaces:
            parts.append("namespace in " + ",".join(sorted(self.namespaces)))
        if self.service_accounts:
            parts.append("serviceAccount in " + ",".join(sorted(self.service_accounts)))
        parts += [f"label {k}={v}" for k, v in self.labels]
        return " and ".join(parts) or "every pod"


class Scope:
    """A named rule set (a :class:`Policy`: mode, indexed rules, the ranges) and what it selects.

    Decides per request like its Policy (:meth:`decide`); a scope of a policy file does it through
    the file's one host index (proxy/scope_index.py) rather than its Policy's own."""

    # slots: what a request reads (mode, index) sits in the object itself, next to its header
    __slots__ = ("mode", "index", "policy", "name", "selector", "origin", "rank", "audit_members")

    def __init__(self, name: str, selector: Selector, policy: Policy, origin: str, order: int):
        self.name, self.selector, self.policy, self.origin = name, selector, policy, origin
        self.mode = policy.mode
        self.index: ScopeIndex | None = None  # set by the ScopedPolicy whose index holds this scope
        self.rank = (-selector.specificity, order)  # lower wins
        self.audit_members = f'"scope":{_json_str(name)}'

    def decide(self, host: str, *, method: str, scheme: str, path: str, namespace: str | None = None) -> Decision:
        """The scope's rules' decision for a request (``host`` normalised): :meth:`Policy.decide`."""
        rule = self.allowing(host, method, scheme, path, namespace)
        return NO_MATCH if rule is None else rule.allows

    def allowing(self, host: str, method: str, scheme: str, path: str, namespace: str | None) -> Rule | None:
        """The scope's rule allowing a request (``host`` normalised), or None: :meth:`Policy.allowing`."""
        index = self.index
        if index is None:
            return self.policy.allowing(host, method, scheme, path, namespace)
        return index.allowing(self, host, method, scheme, path, namespace)

    def allowing_on(self, conn, host: str, method: str, scheme: str, path: str, namespace: str | None) -> Rule | None:
        """:meth:`allowing` for a request on client connection ``conn`` (a
        :class:`proxy.clients.ClientInfo`), which remembers the index entry of the last host it asked
        about in this scope: a connection's requests go to one host (HTTPS: its SNI, which
        :func:`proxy.decision.decide` holds them to; HTTP in practice), so after its first request
        a connection skips the host index and its per-scope table. The entry is the index's (the
        same object, valid as long as this Scope: a new policy or namespace policy is a new Scope,
        and a new identity a new ClientInfo)."""
        index = self.index
        if index is None:
            return self.policy.allowing(host, method, scheme, path, namespace)
        if conn.memo_scope is self and conn.memo_host == host:
            hit = conn.memo_hit
        else:
            hit = index.entry(self, host)
            conn.memo_scope, conn.memo_host, conn.memo_hit = self, host, hit
        if hit.__class__ is not tuple:
            return hit
        return match(hit, method, scheme, path, namespace)

    def __repr__(self) -> str:
        return f"Scope({self.name!r}, {self.selector.describe()}, {self.mode}, {len(self.policy.rules)} rules)"


def _json_str(s: str) -> str:
    return json.dumps(s)


@dataclasses.dataclass(frozen=True)
class Ceiling:
    """What a namespace's own policy may never do."""

    hosts: Policy | None = None  # host patterns indexed like rules (only hosts used)
    ranges: tuple = ()
    modes: tuple[str, ...] = DEFAULT_DELEGATED_MODES


class BoundedPolicy(Policy):
    """A delegated (namespace) policy: the cluster's ranges, and the ceiling's ranges denied on top
    (whatever the cluster's ``allow_ranges`` say)."""

    def __init__(self, *args, ceiling_ranges: tuple = (), **kwargs):
        super().__init__(*args, **kwargs)
        self.ceiling_ranges = ceiling_ranges

    def _address_denied(self, address: str) -> bool:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            if any(ip.ipv4_mapped in n for n in self.ceiling_ranges):
                return True
        if any(ip in n for n in self.ceiling_ranges):
            return True
        return super()._address_denied(address)


@dataclasses.dataclass(frozen=True)
class ListedHost(Rule):
    """An entry of a host list (``deny_hosts``, the ceiling's ``hosts``), indexed like a rule."""

    where: str = "deny_hosts"

    @functools.cached_property
    def label(self) -> str:
        return f"{self.where}[{self.index}] {self.host}"


def _host_index(hosts: Any, where: str) -> Policy:
    """Host patterns (exact, ``*.suffix``, IP literal) indexed as rules of a Policy (host only)."""
    names = _strings(hosts, where)
    entries = []
    for i, h in enumerate(names):
        try:
            r = Policy._rule(i, {"host": h})
        except PolicyError as e:
            raise PolicyError(f"{where}{str(e)[len('rules') :]}") from None
        entries.append(ListedHost(i, r.host, where=where))
    return Policy("enforce", entries, (), (), where)


class ScopedPolicy:
    """The whole policy file: default scope, file scopes, deny list, delegation settings."""

    def __init__(
        self, default: Scope, scopes: Iterable[Scope], deny: Policy | None, ceiling: Ceiling, config_map: str, source: str
    ):
        self.default = default
        self.scopes = tuple(scopes)
        self.deny = deny
        self.ceiling = ceiling
        self.config_map = config_map
        self.source = source
        self._by_ns: dict[str, list[Scope]] = {}
        self._any_ns: list[Scope] = []
        for s in self.scopes:
            if s.selector.namespaces:
                for ns in s.selector.namespaces:
                    self._by_ns.setdefault(ns, []).append(s)
            else:
                self._any_ns.append(s)
        for lst in (*self._by_ns.values(), self._any_ns):
            lst.sort(key=lambda s: s.rank)
        self.index = ScopeIndex((self.default, *self.scopes))
        for s in (self.default, *self.scopes):
            s.index = self.index
        self.delegated_order = len(self.scopes)

    # -- what the rest of the proxy reads of "the policy in force" (the default scope's) ---------
    @property
    def mode(self) -> str:
        return self.default.policy.mode

    @property
    def rules(self) -> tuple[Rule, ...]:
        return self.default.policy.rules

    @property
    def rule_count(self) -> int:
        return len(self.rules) + sum(len(s.policy.rules) for s in self.scopes)

    def has_host(self, host: str) -> bool:
        return self.default.policy.has_host(host)

    def decide(self, host: str, **kwargs):
        """The default scope's :meth:`Policy.decide` (what a pod of unknown identity gets)."""
        return self.default.policy.decide(host, **kwargs)

    def allowing(self, host: str, method: str, scheme: str, path: str, namespace: str | None) -> Rule | None:
        """The default scope's :meth:`Policy.allowing`."""
        return self.default.policy.allowing(host, method, scheme, path, namespace)

    # -- selection ---------------------------------------------------------------------------------
    def select(
        self,
        namespace: str,
        service_account: str = "",
        labels: Mapping[str, str] | None = None,
        delegated: Mapping[str, Scope] | None = None,
    ) -> Scope:
        """The scope that decides for a pod; the default for an unknown one (``namespace`` "")."""
        if not namespace:
            return self.default
        labels = labels or {}
        best: Scope | None = None
        for group in (self._by_ns.get(namespace, ()), self._any_ns):
            for s in group:  # sorted by rank: the first match of a group is its best
                if best is not None and s.rank >= best.rank:
                    break
                if s.selector.matches(namespace, service_account, labels):
                    best = s
                    break
        if delegated:
            d = delegated.get(namespace)
            if d is not None and (best is None or d.rank < best.rank):
                best = d
        return best or self.default

    def denied_host(self, host: str) -> Rule | None:
        """The ``deny_hosts`` entry covering ``host`` (normalised), if any."""
        if self.deny is None:
            return None
        return next(iter(self.deny.candidates(host)), None)

    # -- construction ------------------------------------------------------------------------------
    @classmethod
    def builtin(cls) -> "ScopedPolicy":
        return cls.wrap(Policy.builtin())

    @classmethod
    def wrap(cls, policy: Policy) -> "ScopedPolicy":
        return cls(Scope(DEFAULT_SCOPE, Selector(), policy, policy.source, 1 << 30), (), None, Ceiling(), "", policy.source)

    @classmethod
    def load(cls, path: str) -> "ScopedPolicy":
        return cls.from_yaml(read_policy_file(path), source=path)

    @classmethod
    def from_yaml(cls, text: str, source: str = "<string>") -> "ScopedPolicy":
        return parse_policy_yaml(text, source, cls.from_dict)

    @classmethod
    def from_dict(cls, doc: Any, source: str = "<dict>") -> "ScopedPolicy":
        if not isinstance(doc, dict):
            raise PolicyError(f"{source}: the policy must be a mapping with a 'rules' list")
        base = Policy.from_dict({k: v for k, v in doc.items() if k not in _SCOPE_KEYS}, source=source)
        try:
            return cls._from_dict(doc, base, source)
        except PolicyError as e:
            raise PolicyError(f"{source}: {e}") from None

    @classmethod
    def _from_dict(cls, doc: dict, base: Policy, source: str) -> "ScopedPolicy":
        deny = _host_index(doc["deny_hosts"], "deny_hosts") if doc.get("deny_hosts") is not None else None
        raw = doc.get("scopes") or []
        if not isinstance(raw, list):
            raise PolicyError("scopes: must be a list")
        scopes, names = [], set()
        for i, entry in enumerate(raw):
            scope = _scope(i, entry, base, source)
            if scope.name in names or scope.name == DEFAULT_SCOPE:
                raise PolicyError(f"scopes[{i}].name: {scope.name!r} is used twice (or is 'default')")
            names.add(scope.name)
            scopes.append(scope)
        config_map, ceiling = _delegation(doc.get("delegation"))
        default = Scope(DEFAULT_SCOPE, Selector(), base, source, 1 << 30)
        return cls(default, scopes, deny, ceiling, config_map, source)


def _scope(i: int, entry: Any, base: Policy, source: str) -> Scope:
    where = f"scopes[{i}]"
    if not isinstance(entry, dict):
        raise PolicyError(f"{where}: must be a mapping with 'name', 'match' and 'rules'")
    unknown = set(entry) - _SCOPE_ENTRY_KEYS
    if unknown:
        raise PolicyError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_SCOPE_ENTRY_KEYS)}")
    name = entry.get("name")
    if not isinstance(name, str) or not name.strip():
        raise PolicyError(f"{where}.name: required, a non-empty string")
    where = f"scopes[{i}] ({name})"
    selector = _selector(entry.get("match"), f"{where}.match")
    mode = entry.get("mode", "enforce")
    if mode not in MODES:
        raise PolicyError(f"{where}.mode: {mode!r} is not one of {list(MODES)}")
    rules = _rules(entry.get("rules"), where)
    return Scope(name, selector, Policy(mode, rules, base.deny_ranges, base.allow_ranges, f"{source}#{name}"), source, i)


def _rules(raw: Any, where: str) -> list[Rule]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise PolicyError(f"{where}.rules: must be a list")
    out = []
    for j, r in enumerate(raw):
        try:
            out.append(Policy._rule(j, r))
        except PolicyError as e:
            raise PolicyError(f"{where}.{e}") from None
    return out


def _selector(raw: Any, where: str) -> Selector:
    if not isinstance(raw, dict) or not raw:
        raise PolicyError(f"{where}: required, a mapping with namespaces, serviceAccounts and/or labels")
    unknown = set(raw) - _MATCH_KEYS
    if unknown:
        raise PolicyError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_MATCH_KEYS)}")
    ns = frozenset(_strings(raw["namespaces"], f"{where}.namespaces")) if "namespaces" in raw else frozenset()
    sa = frozenset(_strings(raw["serviceAccounts"], f"{where}.serviceAccounts")) if "serviceAccounts" in raw else frozenset()
    labels: tuple[tuple[str, str], ...] = ()
    if "labels" in raw:
        lab = raw["labels"]
        if not isinstance(lab, dict) or not lab or not all(isinstance(k, str) and isinstance(v, str) for k, v in lab.items()):
            raise PolicyError(f"{where}.labels: must be a non-empty mapping of strings to strings")
        labels = tuple(sorted(lab.items()))
    return Selector(ns, sa, labels)


def _delegation(raw: Any) -> tuple[str, Ceiling]:
    if raw is None:
        return "", Ceiling()
    if not isinstance(raw, dict):
        raise PolicyError("delegation: must be a mapping with 'configMap' and 'ceiling'")
    unknown = set(raw) - _DELEGATION_KEYS
    if unknown:
        raise PolicyError(f"delegation: unknown key(s) {sorted(unknown)}; allowed: {sorted(_DELEGATION_KEYS)}")
    name = raw.get("configMap", "")
    if not isinstance(name, str):
        raise PolicyError("delegation.configMap: must be a string (a ConfigMap name; '' = off)")
    ceil = raw.get("ceiling") or {}
    if not isinstance(ceil, dict):
        raise PolicyError("delegation.ceiling: must be a mapping with hosts, ranges and/or modes")
    unknown = set(ceil) - _CEILING_KEYS
    if unknown:
        raise PolicyError(f"delegation.ceiling: unknown key(s) {sorted(unknown)}; allowed: {sorted(_CEILING_KEYS)}")
    hosts = _host_index(ceil["hosts"], "delegation.ceiling.hosts") if ceil.get("hosts") else None
    ranges = _networks(ceil.get("ranges") or [], "delegation.ceiling.ranges")
    modes = tuple(_strings(ceil["modes"], "delegation.ceiling.modes")) if "modes" in ceil else DEFAULT_DELEGATED_MODES
    bad = set(modes) - set(MODES)
    if bad:
        raise PolicyError(f"delegation.ceiling.modes: {sorted(bad)} not in {list(MODES)}")
    return name, Ceiling(hosts, ranges, modes)
