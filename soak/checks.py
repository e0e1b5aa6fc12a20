"""The soak's invariant checks as pure functions, so each can be shown to fail (tests/test_soak_checks.py).

Everything here works on data (API objects, ``iptables-save`` text, samples); soak/run.py collects
the data from the running cluster.
"""

from __future__ import annotations

import re

ANNOTATION = "initializer.kubernetes.io/tproxy"
INIT_NAME = "tproxy"
#: the API server's create timeout (§1b): a create still blocked after this is hanging
SERVER_CREATE_TIMEOUT = 30.0


# -- creates: exactly one injection, never a hang ---------------------------------------------
def injection_problem(obj: dict, locked: bool) -> str | None:
    """None if the initialized Deployment ``obj`` carries our init container exactly once, first
    (``locked``), or not at all (plain); else what is wrong."""
    spec = ((obj.get("spec") or {}).get("template") or {}).get("spec") or {}
    inits = [c.get("name") for c in spec.get("initContainers") or []]
    n = inits.count(INIT_NAME)
    if (obj.get("metadata") or {}).get("initializers"):
        return f"returned while still pending: {obj['metadata']['initializers']}"
    if locked:
        if n != 1:
            return f"init container {INIT_NAME!r} present {n} times: {inits}"
        if inits[0] != INIT_NAME:
            return f"init container {INIT_NAME!r} not first: {inits}"
        vols = [v.get("name") for v in spec.get("volumes") or []]
        dup = sorted({v for v in vols if vols.count(v) > 1})
        if dup:
            return f"volumes injected more than once: {dup}"
    elif n:
        return f"plain deployment injected: {inits}"
    return None


def classify_create(duration: float, error: Exception | None) -> str:
    """``created``, ``failed`` (an error with a reason, before the server's timeout) or ``hang``
    (a 504 Timeout, no answer, or an answer only after the server's timeout)."""
    if error is None:
        return "hang" if duration > SERVER_CREATE_TIMEOUT + 5 else "created"
    code = getattr(error, "code", None)
    message = getattr(error, "message", "") or str(error)
    if code == 504 or duration > SERVER_CREATE_TIMEOUT + 5 or code is None:
        return "hang"
    return "failed" if message.strip() else "hang"


# -- podwatch convergence ----------------------------------------------------------------------
_REDIRECT = re.compile(r"^-A TPROXY-REDIRECT -s (\S+?)/32 .*-j REDIRECT")
_GUARD = re.compile(r"^-A TPROXY-GUARD -s (\S+?)/32 .*-j TPROXY-GUARD-LOCKED")


def node_rules(nat: str, filt: str) -> dict:
    """What the node's v4 ``iptables-save`` (nat, filter) says podwatch programmed."""
    pre = [l for l in nat.splitlines() if l.startswith("-A PREROUTING ")]
    fwd = [l for l in filt.splitlines() if l.startswith("-A FORWARD ")]
    locked_rules = [l for l in filt.splitlines() if l.startswith("-A TPROXY-GUARD-LOCKED ")]
    return {
        "prerouting_jump_first": bool(pre) and pre[0].endswith("-j TPROXY-REDIRECT"),
        "forward_jump_first": bool(fwd) and fwd[0].endswith("-j TPROXY-GUARD"),
        "guard_locked_rules": len(locked_rules),
        "redirect": {m.group(1) for l in nat.splitlines() if (m := _REDIRECT.match(l))},
        "guard": {m.group(1) for l in filt.splitlines() if (m := _GUARD.match(l))},
        "rule_lines": sum(1 for t in (nat, filt) for l in t.splitlines() if l.startswith("-A TPROXY-")),
    }


def convergence_gaps(rules: dict, must_have: set[str], must_not_have: set[str] = frozenset()) -> list[str]:
    """Empty when the node's rules cover every IP in ``must_have`` (redirect and guard), the jumps
    are first in PREROUTING and FORWARD, the locked chain rejects, and no IP in ``must_not_have``
    (pods gone) keeps a redirect; else what is missing."""
    gaps = []
    if not rules["prerouting_jump_first"]:
        gaps.append("nat PREROUTING does not jump to TPROXY-REDIRECT first")
    if not rules["forward_jump_first"]:
        gaps.append("filter FORWARD does not jump to TPROXY-GUARD first")
    if must_have and rules["guard_locked_rules"] < 2:
        gaps.append("TPROXY-GUARD-LOCKED has no reject rules")
    if missing := sorted(must_have - rules["redirect"]):
        gaps.append(f"no redirect for {missing}")
    if missing := sorted(must_have - rules["guard"]):
        gaps.append(f"no guard for {missing}")
    if stale := sorted(must_not_have & rules["redirect"]):
        gaps.append(f"stale redirect for {stale}")
    return gaps


def locked_pod_ips(pods: list[dict]) -> set[str]:
    """podwatch's definition of locked: annotation "true", a pod IP, not Succeeded/Failed, not hostNetwork."""
    out = set()
    for p in pods:
        ann = (p.get("metadata") or {}).get("annotations") or {}
        st = p.get("status") or {}
        if str(ann.get(ANNOTATION, "")).lower() != "true" or not st.get("podIP"):
            continue
        if st.get("phase") in ("Succeeded", "Failed") or (p.get("spec") or {}).get("hostNetwork"):
            continue
        out.add(st["podIP"])
    return out


# -- growth -------------------------------------------------------------------------------------
def slope(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope (units per second) of (t, value) points; None with fewer than 3."""
    if len(points) < 3:
        return None
    n = len(points)
    mt = sum(t for t, _ in points) / n
    mv = sum(v for _, v in points) / n
    var = sum((t - mt) ** 2 for t, _ in points)
    if var == 0:
        return None
    return sum((t - mt) * (v - mv) for t, v in points) / var


def growth_verdict(
    points: list[tuple[float, float]], per_minute_limit: float, warmup_s: float = 20.0, min_span_s: float = 30.0
) -> dict:
    """Slope of ``points`` after ``warmup_s`` from their start, per minute. ``grows`` when the slope
    exceeds ``per_minute_limit`` *and* the value really rose by more than that limit over the window
    (a noisy flat series is not growth). ``judged`` is False when the window is shorter than
    ``min_span_s`` (a process restarted by the chaos just before the end)."""
    if not points:
        return {"slope_per_min": None, "grows": False, "judged": False, "span_s": 0.0}
    t0 = points[0][0]
    window = [(t, v) for t, v in points if t - t0 >= warmup_s] or points
    span = window[-1][0] - window[0][0]
    s = slope(window)
    per_min = None if s is None else s * 60
    first = sum(v for _, v in window[:3]) / min(3, len(window))
    last = sum(v for _, v in window[-3:]) / min(3, len(window))
    judged = span >= min_span_s and per_min is not None
    grows = judged and per_min > per_minute_limit and (last - first) > per_minute_limit
    return {"slope_per_min": per_min, "grows": grows, "judged": judged, "span_s": span, "first": first, "last": last}
