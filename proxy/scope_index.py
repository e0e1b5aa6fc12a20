"""One host index over every scope of a policy file: host name -> {scope: what decides}.

A request in scope S for host H asks "which of S's rules cover H, and which of them allows this
request". With a Policy per scope, each scope kept its own index and per-host memo: 1,000 scopes,
1,000 small tables, and a request touched its scope's policy, its table and its table's entry
before reaching a rule (several cache lines of memory no other scope shares). Here the rules of
every file scope are indexed once by host pattern (exact names, ``*.suffix`` wildcards), each
entry holding the rules per scope, and the memo is one table keyed by host name, then by scope:
a request does one lookup for the host (a table as large as the single policy's: one entry per
name) and one for its scope.

What the memo holds for (host, scope) is one small entry, worked out on first use from the same
candidates as :meth:`Policy.candidates` (exact rules, then wildcard rules of ever shorter suffixes),
so that a request reads the entry and, when it is allowed, the rule it names, and nothing else of
its scope's (no Decision object, no rule's attribute dictionary):

* no rule covers the host: the empty tuple (one shared object);
* the lowest-index candidate has no condition (no methods, schemes, paths, namespaces): it wins
  whatever the request, so that :class:`Rule` itself;
* else a tuple of ``(methods, schemes, paths, namespaces, rule)``, one per candidate in index
  order up to the first unconditional one (none after it can win): the first whose conditions hold
  allows the request (the lowest index, as :meth:`Policy.decide` chooses). Equal condition sets
  of different rules (every scope's ``methods: [GET, POST]``) are one shared object, so matching
  reads no memory of the scope's own but the entry.

The memo is bounded like the single policy's (hosts are chosen by clients): when it holds more
than :data:`MEMO_LIMIT` (host, scope) entries it starts again empty. Scopes not in the index (a
namespace's own ConfigMap policy, proxy/delegated.py) decide through their own Policy.
"""

from __future__ import annotations

from typing import Iterable

from proxy.policy import NO_MATCH, Decision, Rule, is_ip_literal, normalize_path

MEMO_LIMIT = 1 << 16  # (host, scope) entries


def _unconditional(rule: Rule) -> bool:
    return not (rule.methods or rule.schemes or rule.paths or rule.namespaces)


class ScopeIndex:
    """The host index of a set of scopes (each with a ``policy``: a :class:`proxy.policy.Policy`)."""

    def __init__(self, scopes: Iterable):
        self._exact: dict[str, dict[object, list[Rule]]] = {}
        self._wild: dict[str, dict[object, list[Rule]]] = {}
        self._memo: dict[str, dict[object, Rule | tuple]] = {}
        self._size = 0
        self._shared: dict = {}  # condition set -> the one equal object every entry uses
        for scope in scopes:
            for r in scope.policy.rules:
                if r.host.startswith("*."):
                    self._wild.setdefault(r.host[2:], {}).setdefault(scope, []).append(r)
                else:
                    self._exact.setdefault(r.host, {}).setdefault(scope, []).append(r)

    def candidates(self, scope, host: str) -> list[Rule]:
        """``scope``'s rules whose host pattern covers ``host`` (normalised): exact ones first, then
        wildcards from the longest suffix, as :meth:`Policy.candidates` lists them."""
        out = list(self._exact.get(host, {}).get(scope, ()))
        if is_ip_literal(host):
            return out
        rest = host
        while "." in rest:
            rest = rest.split(".", 1)[1]
            per = self._wild.get(rest)
            if per is not None:
                out += per.get(scope, ())
        return out

    def _settle(self, scope, host: str) -> Rule | tuple:
        cands = sorted(self.candidates(scope, host), key=lambda r: r.index)
        if not cands:
            return ()
        if _unconditional(cands[0]):
            return cands[0]
        shared = self._shared
        out = []
        for r in cands:
            conds = (r.methods, r.schemes, r.paths, r.namespaces)
            out.append(tuple(shared.setdefault(c, c) for c in conds) + (r,))
            if not (r.methods or r.schemes or r.paths or r.namespaces):
                break  # it allows whatever the request: no later candidate can win
        return tuple(out)

    def entry(self, scope, host: str) -> Rule | tuple:
        """What decides for ``scope``'s requests to ``host`` (normalised): the memo entry (see the
        module docstring), worked out on first use. Read it with :func:`match`."""
        per = self._memo.get(host)
        hit = None if per is None else per.get(scope)
        if hit is None:
            hit = self._remember(scope, host)
        return hit

    def allowing(self, scope, host: str, method: str, scheme: str, path: str, namespace: str | None) -> Rule | None:
        """:meth:`Policy.allowing` for ``scope``'s rules (``host`` normalised), through the memo."""
        return match(self.entry(scope, host), method, scheme, path, namespace)

    def _remember(self, scope, host: str) -> Rule | tuple:
        if self._size >= MEMO_LIMIT:
            self._memo.clear()
            self._size = 0
        per = self._memo.get(host)
        if per is None:
            per = self._memo[host] = {}
        hit = per[scope] = self._settle(scope, host)
        self._size += 1
        return hit

    def decide(self, scope, host: str, method: str, scheme: str, path: str, namespace: str | None) -> Decision:
        """:meth:`Policy.decide` for ``scope``'s rules (``host`` normalised), through the memo."""
        rule = self.allowing(scope, host, method, scheme, path, namespace)
        return NO_MATCH if rule is None else rule.allows


def match(hit: Rule | tuple, method: str, scheme: str, path: str, namespace: str | None) -> Rule | None:
    """The rule a memo entry (:meth:`ScopeIndex.entry`) allows the request by, or None."""
    if hit.__class__ is not tuple:
        return hit  # type: ignore[return-value]
    npath = None  # normalised only when a candidate has paths to compare
    for methods, schemes, paths, namespaces, rule in hit:
        if methods and method.upper() not in methods:
            continue
        if schemes and scheme not in schemes:
            continue
        if namespaces and namespace not in namespaces:
            continue
        if paths:
            if npath is None:
                npath = normalize_path(path)
            if not any(npath.startswith(p) for p in paths):
                continue
        return rule
    return None
