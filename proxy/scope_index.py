"""One host index over every scope of a policy file: host name -> {scope: what decides}.

A request in scope S for host H asks "which of S's rules cover H, and which of them allows this
request". With a Policy per scope, each scope kept its own index and per-host memo: 1,000 scopes,
1,000 small tables, and a request touched its scope's policy, its table and its table's entry
before reaching a rule (several cache lines of memory no other scope shares). Here the rules of
every file scope are indexed once by host pattern (exact names, ``*.suffix`` wildcards), each
entry holding the rules per scope, and the memo is one table keyed by host name, then by scope:
a request does one lookup for the host (a table as large as the single policy's: one entry per
name) and one for its scope.

What the memo holds for (host, scope), worked out on first use from the same candidates as
:meth:`Policy.candidates` (exact rules, then wildcard rules of ever shorter suffixes):

* no rule covers the host: :data:`proxy.policy.NO_MATCH`;
* the lowest-index candidate has no condition (no methods, schemes, paths, namespaces): it wins
  whatever the request, so its decision (``Rule.allows``);
* else the candidates sorted by index: the first whose conditions match the request allows it
  (the lowest index, as :meth:`Policy.decide` chooses).

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
        self._memo: dict[str, dict[object, Decision | tuple[Rule, ...]]] = {}
        self._size = 0
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

    def _settle(self, scope, host: str) -> Decision | tuple[Rule, ...]:
        cands = sorted(self.candidates(scope, host), key=lambda r: r.index)
        if not cands:
            return NO_MATCH
        if _unconditional(cands[0]):
            return cands[0].allows
        return tuple(cands)

    def decide(self, scope, host: str, method: str, scheme: str, path: str, namespace: str | None) -> Decision:
        """:meth:`Policy.decide` for ``scope``'s rules (``host`` normalised), through the memo."""
        per = self._memo.get(host)
        if per is None:
            per = self._memo[host] = {}
        hit = per.get(scope)
        if hit is None:
            if self._size >= MEMO_LIMIT:
                self._memo.clear()
                self._size = 0
                per = self._memo[host] = {}
            hit = per[scope] = self._settle(scope, host)
            self._size += 1
        if hit.__class__ is not tuple:
            return hit  # type: ignore[return-value]
        npath = None  # normalised only when a candidate has paths to compare
        for rule in hit:
            if rule.paths and npath is None:
                npath = normalize_path(path)
            if rule.matches(method, scheme, npath, namespace):
                return rule.allows
        return NO_MATCH
