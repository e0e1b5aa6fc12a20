"""The decision: request facts in, a Verdict out. Pure: no flow, no mitmproxy, no DNS, no I/O.

Every view of the destination a request carries must agree with the one that decides (proxy/README.md,
"Which view of the destination decides"): the HTTP/1 absolute-form target, the Host header (HTTP/2:
``:authority``), the TLS SNI and the connection's scheme and port. :func:`decide` checks them and then
asks the policy; :func:`screen_addresses` and :func:`screen_tunnel` judge the policy host's resolved
addresses (the caller resolves); :func:`decide_connect` judges a standard-mode CONNECT. Every verdict
names its reason, one of :class:`Reason` (the audit line's ``reason`` and the ``X-Tproxy-Reason``
header); proxy/README.md lists the same set, and a test holds the two together.

The caller (proxy/core.py) gathers the facts from the flow through proxy/mitm.py, applies the verdict
(response, approval, audit) and records the address it pins in ``Verdict.upstream``.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import TYPE_CHECKING, Optional

from proxy.authority import default_port, split_host_port
from proxy.policy import Policy, is_ip_literal, normalize_host

if TYPE_CHECKING:
    from proxy.scopes import Scope


class Reason(enum.StrEnum):
    """Why a request was allowed, blocked or reported (the audit line's ``reason``)."""

    RULE = "rule"  # allowed by a rule (audit: rule, rule_index)
    SPLICED = "spliced"  # a TLS connection allowed by a splice rule, forwarded by SNI undecrypted (one line)
    OPEN_MODE = "open-mode"  # mode: open, nothing filtered
    NO_MATCHING_RULE = "no-matching-rule"
    SNI_HOST_MISMATCH = "sni-host-mismatch"
    TLS_WITHOUT_SNI = "tls-without-sni"
    IP_LITERAL = "ip-literal"  # an IP-literal Host no rule names
    DENIED_RANGE = "denied-range"  # a resolved address in deny_ranges (or no address)
    DENIED_HOST = "denied-host"  # in the cluster-wide deny_hosts (every scope, mode)
    MISSING_HOST = "missing-host"
    INVALID_HOST = "invalid-host"
    MULTIPLE_HOST_HEADERS = "multiple-host-headers"
    INVALID_TARGET = "invalid-target"  # an HTTP/2, 3 :path that is not a path
    AUTHORITY_HOST_MISMATCH = "authority-host-mismatch"  # HTTP/1 absolute-form target vs Host
    AUTHORITY_SCHEME_MISMATCH = "authority-scheme-mismatch"
    AUTHORITY_PORT_MISMATCH = "authority-port-mismatch"
    CONNECT_NOT_ALLOWED = "connect-not-allowed"  # CONNECT refused (standard mode, or by mitmproxy)
    INVALID_REQUEST = "invalid-request"  # refused by mitmproxy before any hook
    RAW_TCP = "raw-tcp"  # non-HTTP bytes on an intercepted port


# Module-level names for the hot path (a global is cheaper than an enum class attribute).
RULE, OPEN_MODE, SNI_HOST_MISMATCH, TLS_WITHOUT_SNI = (
    Reason.RULE,
    Reason.OPEN_MODE,
    Reason.SNI_HOST_MISMATCH,
    Reason.TLS_WITHOUT_SNI,
)
IP_LITERAL, DENIED_RANGE, MISSING_HOST, INVALID_HOST = (
    Reason.IP_LITERAL,
    Reason.DENIED_RANGE,
    Reason.MISSING_HOST,
    Reason.INVALID_HOST,
)
MULTIPLE_HOST_HEADERS, INVALID_TARGET = Reason.MULTIPLE_HOST_HEADERS, Reason.INVALID_TARGET
DENIED_HOST, NO_MATCHING_RULE = Reason.DENIED_HOST, Reason.NO_MATCHING_RULE

ALLOW, BLOCK, REPORT = "allow", "block", "report"  # Verdict.decision

# Blocks that report mode does not turn into "report": the request itself is malformed.
MALFORMED_REASONS = frozenset({Reason.MISSING_HOST, Reason.INVALID_HOST, Reason.MULTIPLE_HOST_HEADERS, Reason.INVALID_TARGET})
# ... and the cluster-wide deny list, which wins over every scope and mode.
UNSOFTENED_REASONS = MALFORMED_REASONS | {Reason.DENIED_HOST}


@dataclasses.dataclass(slots=True)
class Verdict:
    """What was decided about one request (becomes one audit line)."""

    decision: str  # allow | block | report
    reason: str  # a Reason
    host: str = ""
    port: int = 0
    rule: object = None
    upstream: str = ""  # set by the caller: the pinned address (or the denied ones)
    host_headers: list | None = None  # the request's Host values as decide read them
    scope: object = None  # set by the caller: the proxy.scopes.Scope that decided


@dataclasses.dataclass(slots=True)
class RequestFacts:
    """What the decision needs to know about a request, read from the flow by proxy/mitm.py."""

    method: str
    path: str  # as the client sent it (HTTP/2: :path)
    scheme: str  # the connection's (mitmproxy sets it before any hook)
    host_headers: list  # every Host header value
    authority: str  # HTTP/1: absolute-form target's authority; HTTP/2, 3: :authority; else ""
    http2: bool  # HTTP/2 or HTTP/3
    absolute_target: Optional[tuple]  # HTTP/1 absolute-form (scheme, host, port) as written, if known
    regular: bool  # standard (regular) proxy mode rather than transparent
    request_host: str  # mitmproxy's request host (standard mode: the target's)
    request_port: int
    destination_port: Optional[int]  # transparent: the port the client connected to
    client_tls: bool
    sni: Optional[str]
    namespace: Optional[str]  # the client pod's namespace, None when unknown


def decide(f: RequestFacts, policy: "Policy | Scope", deny: Policy | None = None, conn=None) -> Verdict:
    """The policy decision for a request, before DNS. ``policy``: the deciding scope (the proxy passes
    the Scope: it decides through its policy file's one host index, proxy/scope_index.py) or its
    Policy (the same decision); ``deny``: the cluster-wide ``deny_hosts`` index (proxy/scopes.py),
    checked first in every mode; ``conn``: the client connection's info (proxy/clients.py) when
    ``policy`` is a Scope, which then remembers the connection's host entry (``Scope.allowing_on``)."""
    path = f.path
    if path[:1] != "/" and not (path == "*" and f.method == "OPTIONS"):
        # Only an HTTP/2 or 3 :path can be anything else (HTTP/1 targets are parsed into a path,
        # or "*"); forwarded to an HTTP/1 origin it would be its request target (RFC 9113 8.3.1).
        return Verdict(BLOCK, INVALID_TARGET)
    hosts = f.host_headers
    if len(hosts) > 1:  # RFC 9112 3.2: a request with more than one Host field line is invalid
        return Verdict(BLOCK, MULTIPLE_HOST_HEADERS)
    h2 = f.http2
    # HTTP/2 and 3: :authority first, then Host; standard mode: the target's host last
    authority = (f.authority if h2 else "") or (hosts[0] if hosts else "") or (f.request_host if f.regular else "")
    if not authority:
        return Verdict(BLOCK, MISSING_HOST)
    try:
        raw_host, host_port = split_host_port(authority)
        host = normalize_host(raw_host)
    except Exception:  # noqa: BLE001 - idna raises several types; any is "invalid"
        return Verdict(BLOCK, INVALID_HOST, host=authority)
    scheme = f.scheme
    # regular mode: the request's port; transparent: the port the client connected to (a port in
    # the Host header is not dialled)
    chosen = f.request_port if f.regular else f.destination_port
    port = chosen if chosen is not None else (443 if scheme == "https" else 80)
    target = None if h2 else f.absolute_target
    if target is None and f.authority and not h2:  # parser not wrapped (bare test contexts)
        try:
            t_host, t_port = split_host_port(f.authority)
        except ValueError:
            return Verdict(BLOCK, INVALID_HOST, host=f.authority)
        target = (scheme, t_host, t_port or default_port(scheme))
    if target is not None:
        # HTTP/1 absolute-form: the origin would use the target and ignore Host (RFC 9112 3.2.2)
        mismatch = target_mismatch(target, host, host_port if hosts else None, scheme, port)
        if mismatch:
            return Verdict(BLOCK, mismatch, host=host, port=port)
    if deny is not None:
        denied = next(iter(deny.candidates(host)), None)
        if denied is not None:
            return Verdict(BLOCK, DENIED_HOST, host=host, port=port, rule=denied)
    if policy.mode == "open":  # no filtering at all (still dials the Host by name, audited)
        return Verdict(ALLOW, OPEN_MODE, host=host, port=port)
    if scheme == "https" and f.client_tls:
        sni = f.sni
        if not sni:
            if not is_ip_literal(host):
                return Verdict(BLOCK, TLS_WITHOUT_SNI, host=host, port=port)
        else:
            try:
                sni_norm = normalize_host(sni)
            except Exception:  # noqa: BLE001
                sni_norm = None
            if sni_norm != host:
                return Verdict(BLOCK, SNI_HOST_MISMATCH, host=host, port=port)
    if conn is None:
        rule = policy.allowing(host, f.method, scheme, path, f.namespace)
    else:
        rule = policy.allowing_on(conn, host, f.method, scheme, path, f.namespace)  # type: ignore[union-attr]
    if rule is not None:
        return Verdict(ALLOW, RULE, host=host, port=port, rule=rule, host_headers=hosts)
    return Verdict(BLOCK, IP_LITERAL if is_ip_literal(host) else NO_MATCHING_RULE, host=host, port=port)


def target_mismatch(target: tuple[str, str, int], host: str, host_port: int | None, scheme: str, port: int) -> Reason | None:
    """Why an absolute-form target ``(scheme, host, port)`` disagrees with the Host header (``host``,
    normalised, and its explicit port ``host_port`` or None) or the connection (``scheme``,
    ``port``), or None if it agrees."""
    t_scheme, t_host, t_port = target
    try:
        if normalize_host(t_host) != host:
            return Reason.AUTHORITY_HOST_MISMATCH
    except Exception:  # noqa: BLE001
        return INVALID_HOST
    if t_scheme != scheme:
        return Reason.AUTHORITY_SCHEME_MISMATCH
    if t_port != port or (host_port or default_port(t_scheme)) != t_port:
        return Reason.AUTHORITY_PORT_MISMATCH
    return None


def finalize(v: Verdict, mode: str) -> Verdict:
    """Report mode turns a would-be block into 'report' (allowed, logged), except malformed requests."""
    if v.decision == BLOCK and mode == "report" and v.reason not in UNSOFTENED_REASONS:
        return dataclasses.replace(v, decision=REPORT)
    return v


def screen_addresses(v: Verdict, addresses: list[str], policy: Policy) -> Verdict:
    """An allowed (or reported) request's verdict once its host's addresses are known: ``v`` itself
    when every address is outside ``deny_ranges``; else ``denied-range`` with the offending
    addresses in ``upstream`` -- a block in enforce mode, a report in report mode, and in open
    mode still ``v``'s decision. The caller pins the first address."""
    denied = [a for a in addresses if policy.address_denied(a)]
    if addresses and not denied:
        return v
    blocked = dataclasses.replace(v, decision=BLOCK, reason=DENIED_RANGE, upstream=",".join(denied or addresses))
    if policy.mode == "enforce":
        return blocked
    if policy.mode == "report":
        return dataclasses.replace(blocked, decision=REPORT)
    return dataclasses.replace(blocked, decision=ALLOW, reason=v.reason)


def decide_connect(host: str, port: int, namespace: str | None, policy: Policy, deny: Policy | None = None) -> Verdict | None:
    """A standard-mode ``CONNECT host:port``.

    An ``allow`` verdict (reason ``rule``) when a rule for the host lists the ``CONNECT`` method: a
    raw tunnel to any port, to be resolved, screened (:func:`screen_tunnel`), pinned and audited.
    None when the tunnel may open because its requests will be decided one by one (some rule for
    the host allows https on 443, or the mode is open or report). Else a ``block``."""
    try:
        norm = normalize_host(host)
    except Exception:  # noqa: BLE001
        return Verdict(BLOCK, INVALID_HOST, host=host, port=port)
    denied = next(iter(deny.candidates(norm)), None) if deny is not None else None
    if denied is not None:
        return Verdict(BLOCK, DENIED_HOST, host=norm, port=port, rule=denied)
    candidates = [r for r in policy.candidates(norm) if not r.namespaces or namespace in r.namespaces]
    tunnel_rule = min((r for r in candidates if "CONNECT" in r.methods), key=lambda r: r.index, default=None)
    if tunnel_rule is not None:
        return Verdict(ALLOW, RULE, host=norm, port=port, rule=tunnel_rule)
    https_ok = port == 443 and any(not r.schemes or "https" in r.schemes for r in candidates)
    if https_ok or policy.mode in ("open", "report"):
        return None
    return Verdict(BLOCK, Reason.CONNECT_NOT_ALLOWED, host=norm, port=port)


def screen_tunnel(v: Verdict, addresses: list[str], policy: Policy) -> Verdict:
    """A CONNECT tunnel's verdict once its host's addresses are known: ``denied-range`` (block) when
    there is none, or when one is in ``deny_ranges`` in enforce mode; else ``v`` (still an
    ``allow``, in every mode) with the first address in ``upstream``."""
    denied = [a for a in addresses if policy.address_denied(a)]
    if not addresses or (denied and policy.mode == "enforce"):
        return dataclasses.replace(v, decision=BLOCK, reason=DENIED_RANGE, upstream=",".join(denied or addresses))
    return dataclasses.replace(v, upstream=addresses[0])
