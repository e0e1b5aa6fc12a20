"""Policy per workload: deciding under 1,000 namespace scopes of 100 rules vs one 10-rule policy.

What the proxy does per request (proxy/core.py): the connection's scope (chosen once per
connection, then a cached lookup: ``Clients.scope``), the pure ``decide`` against that scope's
policy with the cluster deny list, ``finalize`` for its mode. Both sides run exactly that path, on
prebuilt request facts (half allowed, half not), measured in alternating short rounds in one
process so that machine noise hits both alike; the figure is the median of the per-round ratios. A side row measures
what is paid once per *new connection*: choosing the scope (``ScopedPolicy.select``), and also the
plain pre-scopes ``decide(facts, Policy)`` as a reference.
"""

from __future__ import annotations

import random
import statistics
import time

from bench import common

TARGET = 1.05


def _policy_doc(namespaces: int, rules: int) -> dict:
    scopes = []
    for i in range(namespaces):
        rs = []
        for j in range(rules):
            if j % 10 == 9:
                rs.append({"host": f"*.cdn{j}.ns{i}.example"})
            elif j % 10 == 8:
                rs.append({"host": f"api{j}.ns{i}.example", "methods": ["GET", "POST"], "paths": ["/v1/"]})
            else:
                rs.append({"host": f"svc{j}.ns{i}.example"})
        scopes.append({"name": f"ns{i}", "match": {"namespaces": [f"ns{i}"]}, "rules": rs})
    return {"mode": "enforce", "rules": [{"host": "storage.googleapis.com"}], "deny_hosts": ["*.evil.example"], "scopes": scopes}


def _single_doc(rules: int) -> dict:
    rs = []
    for j in range(rules):
        if j % 10 == 9:
            rs.append({"host": f"*.cdn{j}.nsx.example"})
        elif j % 10 == 8:
            rs.append({"host": f"api{j}.nsx.example", "methods": ["GET", "POST"], "paths": ["/v1/"]})
        else:
            rs.append({"host": f"svc{j}.nsx.example"})
    return {"mode": "enforce", "rules": rs, "deny_hosts": ["*.evil.example"]}


def _facts(host: str, namespace: str, path: str = "/v1/x"):
    from proxy.decision import RequestFacts

    return RequestFacts(
        method="GET",
        path=path,
        scheme="https",
        host_headers=[host],
        authority="",
        http2=False,
        absolute_target=None,
        regular=False,
        request_host=host,
        request_port=443,
        destination_port=443,
        client_tls=True,
        sni=host,
        namespace=namespace,
    )


def _workload(n: int, namespaces: int, rules: int, rng: random.Random, scoped: bool, pool: int) -> list:
    """(client info, facts) pairs: half a host the pod's list allows, half one it does not, drawn
    from ``pool`` distinct (pod, host) pairs: the node's working set. Both sides get the same pool
    size, so the host-name caches (normalisation, candidates) are as warm on both: the figure is
    the cost of the policy's size, not of the traffic's variety."""
    from proxy.clients import ClientInfo

    infos = {}
    out = []
    for k in range(pool):
        i = rng.randrange(namespaces)
        ns = f"ns{i}"
        info = infos.get(ns)
        if info is None:
            info = infos[ns] = ClientInfo(
                f"198.18.{i // 250}.{i % 250 + 1}",
                {"namespace": ns, "name": "p", "serviceAccount": "default", "labels": {}},
                False,
                "",
                None,
                0,
            )
        j = rng.randrange(rules if scoped else 10)  # pods of every namespace on both sides
        suffix = f".ns{i}.example" if scoped else ".nsx.example"  # names as long on both sides
        if k % 2:
            host = f"unlisted{k}{suffix}"  # names the client chooses: as varied on both sides
        elif j % 10 == 9:
            host = f"img{k}.cdn{j}{suffix}"
        elif j % 10 == 8:
            host = f"api{j}{suffix}"
        else:
            host = f"svc{j}{suffix}"
        out.append((info, _facts(host, ns)))
    return [out[rng.randrange(pool)] for _ in range(n)]


def _round(policy, delegated, work) -> float:
    """Seconds per request of the proxy's per-request decision path over ``work``."""
    from proxy.clients import Clients
    from proxy.decision import decide, finalize

    scope_of = Clients.scope
    deny = policy.deny
    t0 = time.perf_counter()
    for info, f in work:
        scope = scope_of(info, policy, delegated)
        finalize(decide(f, scope.policy, deny), scope.policy.mode)
    return (time.perf_counter() - t0) / len(work)


def _plain_round(policy, work) -> float:
    from proxy.decision import decide, finalize

    t0 = time.perf_counter()
    for _, f in work:
        finalize(decide(f, policy), policy.mode)
    return (time.perf_counter() - t0) / len(work)


def measure(namespaces: int, rules: int, requests: int, rounds: int, seed: int = 7, pool: int = 2000) -> dict:
    from proxy.policy import Policy
    from proxy.scopes import ScopedPolicy

    t0 = time.perf_counter()
    many = ScopedPolicy.from_dict(_policy_doc(namespaces, rules), source="bench-scoped")
    parse_s = time.perf_counter() - t0
    single = ScopedPolicy.from_dict(_single_doc(10), source="bench-single")
    plain = Policy.from_dict({k: v for k, v in _single_doc(10).items() if k != "deny_hosts"}, source="bench-plain")
    rng = random.Random(seed)
    w_many = _workload(requests, namespaces, rules, rng, scoped=True, pool=pool)
    w_single = _workload(requests, namespaces, rules, rng, scoped=False, pool=pool)
    delegated: dict = {}
    # warm up: scopes chosen and cached per connection, candidate memos filled (as in a running proxy)
    for _ in range(2):
        _round(many, delegated, w_many)
        _round(single, delegated, w_single)
        _plain_round(plain, w_single)
    a, b, c = [], [], []
    for _ in range(rounds):  # alternating, so drift and noise hit both sides alike
        a.append(_round(many, delegated, w_many))
        b.append(_round(single, delegated, w_single))
        c.append(_plain_round(plain, w_single))
    allowed = sum(1 for info, f in w_many if decide_ok(many, info, f)) / len(w_many)
    sel = _selection(many, namespaces)
    sel1 = _selection(single, 1)
    return {
        "namespaces": namespaces,
        "rules_per_namespace": rules,
        "requests": requests,
        "rounds": rounds,
        "pool": pool,
        "distinct_hosts": {
            "scoped": len({f.request_host for _, f in w_many}),
            "single": len({f.request_host for _, f in w_single}),
        },
        "parse_s": parse_s,
        "allowed_fraction": allowed,
        "scoped_ns": [x * 1e9 for x in a],
        "single_ns": [x * 1e9 for x in b],
        "plain_ns": [x * 1e9 for x in c],
        # paired per round (the two sides ran back to back): drift hits both
        "ratio": statistics.median(x / y for x, y in zip(a, b)),
        "ratio_vs_plain": statistics.median(x / y for x, y in zip(a, c)),
        "ratio_of_medians": statistics.median(a) / statistics.median(b),
        "select_ns": sel * 1e9,
        "select_single_ns": sel1 * 1e9,
    }


def decide_ok(policy, info, f) -> bool:
    from proxy.clients import Clients
    from proxy.decision import decide

    scope = Clients.scope(info, policy, {})
    return decide(f, scope.policy, policy.deny).decision == "allow"


def _selection(policy, namespaces: int, n: int = 20000) -> float:
    names = [f"ns{i % namespaces}" for i in range(n)]
    t0 = time.perf_counter()
    for ns in names:
        policy.select(ns, "default", {"app": "x"})
    return (time.perf_counter() - t0) / n


def run(cfg: common.BenchConfig) -> dict:
    namespaces = cfg.pick(100, 1000)
    requests = cfg.pick(10000, 20000)
    rounds = cfg.pick(9, 61)
    common.log(f"policy scopes: {namespaces} namespaces x 100 rules vs one 10-rule policy, {requests} requests x {rounds} rounds")
    m = measure(namespaces, 100, requests, rounds)
    med = {k: statistics.median(m[k]) for k in ("scoped_ns", "single_ns", "plain_ns")}
    res = dict(m, status="ok")
    res["summary"] = [
        {
            "metric": f"decide: {namespaces} namespaces x 100 rules ÷ one 10-rule policy (median of per-round ratios)",
            "value": round(m["ratio"], 3),
            "target": f"≤ {TARGET}",
        },
        {
            "metric": "decide: scoped ÷ the pre-scopes path (plain Policy, no scope lookup)",
            "value": round(m["ratio_vs_plain"], 3),
            "target": "reference",
        },
    ]
    res["tables"] = [
        {
            "title": "Policy per workload: per-request decision (ns, medians of alternating rounds; the ratio is the median of per-round ratios)",
            "columns": ["case", "ns/request", "spread"],
            "rows": [
                [f"{namespaces} scopes x 100 rules", round(med["scoped_ns"], 1), common.spread(m["scoped_ns"])["rel_spread"]],
                ["one 10-rule policy (default scope)", round(med["single_ns"], 1), common.spread(m["single_ns"])["rel_spread"]],
                ["one 10-rule Policy, pre-scopes path", round(med["plain_ns"], 1), common.spread(m["plain_ns"])["rel_spread"]],
                [f"choose the scope (new connection), {namespaces} scopes", round(m["select_ns"], 1), None],
                ["choose the scope (new connection), no scopes", round(m["select_single_ns"], 1), None],
                [f"parse {namespaces * 100} scoped rules (s)", round(m["parse_s"], 2), None],
            ],
        }
    ]
    return res
