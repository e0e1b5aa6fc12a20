"""The one host index over a policy file's scopes (proxy/scope_index.py): every scope decides through
it exactly as its own Policy does, and as the obvious linear scan over the scope's rules does."""

from __future__ import annotations

from hypothesis import given, settings, strategies as st

from proxy import scope_index
from proxy.decision import decide, finalize
from proxy.policy import normalize_path
from proxy.scopes import ScopedPolicy
from tests.test_proxy_scopes import facts

_labels = st.sampled_from(["a", "b", "c", "example", "xn--bcher-kva"])
_names = st.lists(_labels, min_size=1, max_size=4).map(".".join)
_patterns = st.one_of(_names, _names.map(lambda n: "*." + n), st.sampled_from(["203.0.113.7", "2001:db8::1"]))
_rules = st.lists(
    st.fixed_dictionaries(
        {"host": _patterns},
        optional={
            "paths": st.lists(st.sampled_from(["/a/", "/b/", "/a/b"]), min_size=1, max_size=2),
            "methods": st.lists(st.sampled_from(["GET", "POST"]), min_size=1, max_size=2),
            "schemes": st.lists(st.sampled_from(["http", "https"]), min_size=1, max_size=1),
            "namespaces": st.lists(st.sampled_from(["n1", "n2"]), min_size=1, max_size=2),
        },
    ),
    max_size=6,
)
_requests = st.tuples(
    st.one_of(_names, st.sampled_from(["203.0.113.7", "2001:db8::1"])),
    st.sampled_from(["/", "/a/", "/a/b", "/b/x", "/a/../b/", "/%61/"]),
    st.sampled_from(["GET", "POST", "PUT"]),
    st.sampled_from(["http", "https"]),
    st.sampled_from(["n1", "n2", None]),
)


def _linear(rules: list[dict], host: str, path: str, method: str, scheme: str, namespace) -> int | None:
    """Reference: the first rule (lowest index) whose pattern covers host and whose conditions hold."""
    npath = normalize_path(path)
    for i, r in enumerate(rules):
        pattern = r["host"]
        covers = host.endswith("." + pattern[2:]) if pattern.startswith("*.") else host == pattern
        if (
            covers
            and method in r.get("methods", [method])
            and scheme in r.get("schemes", [scheme])
            and namespace in r.get("namespaces", [namespace])
            and any(npath.startswith(normalize_path(x)) for x in r.get("paths", ["/"]))
        ):
            return i
    return None


def _named(lists: list[list[dict]]) -> st.SearchStrategy[str]:
    """Hosts the rules name: the exact ones, and names under the wildcards (a host picked at random
    from the labels rarely matches a rule)."""
    pats = [r["host"] for rules in lists for r in rules]
    return st.sampled_from(pats).flatmap(lambda p: _labels.map(lambda x: f"{x}.{p[2:]}") if p.startswith("*.") else st.just(p))


@settings(max_examples=400, deadline=None)
@given(st.lists(_rules, min_size=1, max_size=4), st.lists(_requests, min_size=1, max_size=6), st.data())
def test_every_scope_decides_through_the_index_as_its_policy_and_a_linear_scan(lists, requests, data):
    """Default scope = lists[0], one scope per further list; the same host may be named by several
    scopes (the index keeps them apart); each request asked twice (the second from the memo)."""
    if any(lists):
        hosts = data.draw(st.lists(_named(lists), min_size=len(requests), max_size=len(requests)))
        requests += [(h, *rest) for h, (_, *rest) in zip(hosts, requests)]
    doc = {
        "rules": lists[0],
        "scopes": [{"name": f"s{i}", "match": {"namespaces": [f"s{i}"]}, "rules": rs} for i, rs in enumerate(lists[1:], 1)],
    }
    scoped = ScopedPolicy.from_dict(doc)
    for scope, rules in zip((scoped.default, *scoped.scopes), lists):
        assert scope.index is scoped.index
        for host, path, method, scheme, ns in requests * 2:
            via_index = scope.decide(host, method=method, scheme=scheme, path=path, namespace=ns)
            own = scope.policy.decide(host, method=method, scheme=scheme, path=path, namespace=ns)
            assert via_index == own
            assert (via_index.rule.index if via_index.allowed else None) == _linear(rules, host, path, method, scheme, ns)


def test_decide_gives_the_same_verdict_for_the_scope_and_its_policy():
    scoped = ScopedPolicy.from_dict(
        {
            "rules": [{"host": "a.example"}],
            "deny_hosts": ["*.evil.example"],
            "scopes": [
                {
                    "name": "x",
                    "match": {"namespaces": ["x"]},
                    "mode": "report",
                    "rules": [{"host": "*.b.example", "methods": ["POST"]}],
                }
            ],
        }
    )
    for ns in ("", "x"):
        scope = scoped.select(ns)
        for host in ("a.example", "c.b.example", "x.evil.example", "203.0.113.9", "nope.example"):
            for method in ("GET", "POST"):
                f = facts(host, method, ns or None)
                assert finalize(decide(f, scope, scoped.deny), scope.mode) == finalize(
                    decide(f, scope.policy, scoped.deny), scope.policy.mode
                )
    assert finalize(decide(facts("c.b.example", "POST", "x"), scoped.select("x"), scoped.deny), "report").decision == "allow"
    assert finalize(decide(facts("c.b.example", "GET", "x"), scoped.select("x"), scoped.deny), "report").decision == "report"


def test_the_memo_stays_bounded_and_correct(monkeypatch):
    monkeypatch.setattr(scope_index, "MEMO_LIMIT", 50)
    scoped = ScopedPolicy.from_dict(
        {
            "rules": [{"host": "*.example"}],
            "scopes": [
                {"name": f"s{i}", "match": {"namespaces": [f"s{i}"]}, "rules": [{"host": f"*.s{i}.example"}]} for i in range(3)
            ],
        }
    )
    for i in range(200):
        for scope in (scoped.default, *scoped.scopes):
            n = scope.name[1:] if scope.name != "default" else "x"
            assert scope.decide(f"h{i}.s{n}.example", method="GET", scheme="https", path="/").allowed
            assert not scope.decide(f"h{i}.other", method="GET", scheme="https", path="/").allowed
            assert scoped.index._size <= 50
    assert sum(len(per) for per in scoped.index._memo.values()) <= 50


def test_a_namespace_policy_scope_decides_through_its_own_policy():
    """Scopes made outside the file (a namespace's ConfigMap, proxy/delegated.py) are not in the
    file's index: they decide through their Policy."""
    from proxy import delegated

    scoped = ScopedPolicy.from_dict({"rules": [], "delegation": {"configMap": "tproxy-egress"}})
    scope = delegated.parse("rules: [{host: own.example}]\n", "team", scoped, "cm")
    assert scope.index is None
    assert scope.decide("own.example", method="GET", scheme="https", path="/").allowed
    assert not scope.decide("other.example", method="GET", scheme="https", path="/").allowed


def test_the_lowest_index_wins_whichever_pattern_kind():
    """Candidates come exact first, then wildcards; the decision is still the lowest-index rule that
    matches, as in Policy.decide (a wildcard listed first beats an exact name listed after it)."""
    rules = [
        {"host": "*.b.example", "methods": ["POST"]},
        {"host": "*.example"},
        {"host": "a.b.example"},
        {"host": "c.example", "methods": ["GET"]},
        {"host": "*.example", "paths": ["/x/"]},
    ]
    scoped = ScopedPolicy.from_dict({"rules": [], "scopes": [{"name": "s", "match": {"namespaces": ["s"]}, "rules": rules}]})
    scope = scoped.select("s")
    for host, method, path, expected in [
        ("a.b.example", "POST", "/", 0),
        ("a.b.example", "GET", "/", 1),
        ("c.example", "GET", "/x/", 1),
        ("example", "GET", "/x/", None),
    ]:
        for _ in range(2):
            d = scope.decide(host, method=method, scheme="https", path=path)
            assert (d.rule.index if d.allowed else None) == expected, (host, method)
