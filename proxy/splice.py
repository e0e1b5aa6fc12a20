"""Splicing: a TLS connection forwarded by its SNI without decryption, where a rule says ``splice: true``.

At the client's ClientHello (mitmproxy's ``tls_clienthello`` hook) :func:`connection_verdict` decides
the connection the way a request is decided (proxy/decision.py ``decide``: the pod's scope, the
cluster-wide ``deny_hosts`` first, report mode), with the SNI as the host, the port the client
connected to, and no method or path -- so only a rule that checks nothing but the host (and scheme,
namespace) can decide it. The connection is spliced only when that verdict is an ``allow`` by a rule
with ``splice: true``; the caller then resolves the SNI name, screens its addresses against
``deny_ranges`` (:func:`screen`), and pins the upstream connection to the checked address of that
*name* (proxy/pinning.py): never the address the client dialled.

Everything else -- no SNI, an IP-literal SNI, a refused SNI, a rule without ``splice``, a denied
address, a DNS failure -- returns None here and the connection is intercepted as before, where the
request hook refuses (or allows) it request by request exactly as without this module.
"""

from __future__ import annotations

import dataclasses

from proxy.decision import ALLOW, RULE, Reason, RequestFacts, Verdict, decide, finalize, screen_addresses
from proxy.policy import Policy, is_ip_literal

# No rule lists this method (methods are letters), so a rule with methods never decides a connection.
_NO_METHOD = ""


def any_splice_rule(scoped) -> bool:
    """True when some rule of the policy file (its default scope or a file scope) says ``splice: true``;
    without one the hook returns at once (namespace policies may not splice: proxy/delegated.py)."""
    return any(r.splice for scope in (scoped.default, *scoped.scopes) for r in scope.policy.rules)


def connection_verdict(
    sni: str | None, port: int, namespace: str | None, regular: bool, policy: Policy, deny: Policy | None = None
) -> Verdict | None:
    """The ``allow`` verdict (reason ``spliced``) for splicing a TLS connection whose ClientHello named
    ``sni``, on ``port``, or None when it must be intercepted as usual. ``policy``: the deciding
    scope's; ``deny``: the cluster-wide ``deny_hosts`` index."""
    if not sni or is_ip_literal(sni):
        return None
    facts = RequestFacts(
        _NO_METHOD,
        "/",
        "https",
        [sni],
        "",
        False,
        None,
        regular,
        sni,
        port,
        port,
        True,
        sni,
        namespace,
    )
    v = finalize(decide(facts, policy, deny), policy.mode)
    rule = v.rule
    if v.decision != ALLOW or v.reason != RULE or rule is None or not getattr(rule, "splice", False):
        return None
    return dataclasses.replace(v, reason=Reason.SPLICED)


def screen(v: Verdict, addresses: list[str], policy: Policy) -> Verdict | None:
    """``v`` with the address to pin in ``upstream`` when every resolved address is outside
    ``deny_ranges``; else None (intercepted as usual: the request hook blocks or reports it)."""
    screened = screen_addresses(v, addresses, policy)
    if screened is not v:
        return None
    return dataclasses.replace(v, upstream=addresses[0])
