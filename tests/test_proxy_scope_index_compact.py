"""The index's compact memo entries (proxy/scope_index.py) on randomized policies of many scopes:
every request, in every scope, is allowed by exactly the rule object a straightforward linear scan
of that scope's list names (``rules[j]`` of that scope), through the index and through the full
``decide`` (same verdict, reason and rule as the scope's own Policy), memo cold and warm. A fixed
seed: the same policies and requests every run."""

from __future__ import annotations

import random

import pytest

from proxy import scope_index
from proxy.clients import ClientInfo
from proxy.decision import RequestFacts, decide, finalize
from proxy.policy import Policy, Rule, normalize_path
from proxy.scopes import Scope, ScopedPolicy, Selector

HOSTS = ["a.example", "b.example", "x.a.example", "y.x.a.example", "203.0.113.7", "c.b.example"]
PATTERNS = ["a.example", "b.example", "*.a.example", "*.example", "203.0.113.7", "x.a.example", "*.b.example"]


def _random_rule(rng: random.Random) -> dict:
    r: dict = {"host": rng.choice(PATTERNS)}
    if rng.random() < 0.3:
        r["methods"] = rng.sample(["GET", "POST", "PUT"], rng.randint(1, 2))
    if rng.random() < 0.2:
        r["schemes"] = [rng.choice(["http", "https"])]
    if rng.random() < 0.25:
        r["paths"] = rng.sample(["/a/", "/b/", "/a/b"], rng.randint(1, 2))
    if rng.random() < 0.15:
        r["namespaces"] = rng.sample(["n1", "n2", "n3"], rng.randint(1, 2))
    return r


def _linear(rules: list[dict], host: str, method: str, scheme: str, path: str, namespace) -> int | None:
    """Reference: the lowest index whose pattern covers ``host`` and whose conditions all hold."""
    npath = normalize_path(path)
    for j, r in enumerate(rules):
        p = r["host"]
        covers = host.endswith("." + p[2:]) if p.startswith("*.") else host == p
        if (
            covers
            and method in r.get("methods", [method])
            and scheme in r.get("schemes", [scheme])
            and namespace in r.get("namespaces", [namespace])
            and any(npath.startswith(x) for x in r.get("paths", ["/"]))
        ):
            return j
    return None


def _facts(host: str, method: str, scheme: str, path: str, namespace) -> RequestFacts:
    tls = scheme == "https"
    return RequestFacts(
        method=method,
        path=path,
        scheme=scheme,
        host_headers=[host],
        authority="",
        http2=False,
        absolute_target=None,
        regular=False,
        request_host=host,
        request_port=443 if tls else 80,
        destination_port=443 if tls else 80,
        client_tls=tls,
        sni=host if tls else None,
        namespace=namespace,
    )


def _policy(rng: random.Random, scopes: int) -> tuple[ScopedPolicy, list[list[dict]]]:
    lists = [[_random_rule(rng) for _ in range(rng.randint(0, 8))] for _ in range(scopes + 1)]
    doc = {
        "mode": rng.choice(["enforce", "report"]),
        "rules": lists[0],
        "deny_hosts": ["c.b.example"],
        "scopes": [
            {"name": f"s{i}", "match": {"namespaces": [f"s{i}"]}, "mode": rng.choice(["enforce", "report", "open"]), "rules": rs}
            for i, rs in enumerate(lists[1:], 1)
        ],
    }
    return ScopedPolicy.from_dict(doc), lists


def test_compact_entries_decide_like_a_linear_scan_on_random_policies():
    rng = random.Random(20261205)
    checked = allowed = 0
    for _ in range(40):
        scoped, lists = _policy(rng, rng.randint(1, 12))
        requests = [
            (
                rng.choice(HOSTS),
                rng.choice(["GET", "POST", "PUT"]),
                rng.choice(["http", "https"]),
                rng.choice(["/", "/a/", "/a/b", "/b/x", "/a/../b/"]),
                rng.choice(["n1", "n2", "n3", None]),
            )
            for _ in range(30)
        ]
        for scope, rules in zip((scoped.default, *scoped.scopes), lists):
            conn = _conn()  # one client connection asking about every host in turn
            for host, method, scheme, path, ns in requests * 2:  # the second time from the memo
                j = _linear(rules, host, method, scheme, path, ns)
                got = scope.allowing(host, method, scheme, path, ns)
                assert got is (None if j is None else scope.policy.rules[j]), (scope.name, host, method, scheme, path, ns)
                f = _facts(host, method, scheme, path, ns)
                via_scope = finalize(decide(f, scope, scoped.deny), scope.mode)
                via_policy = finalize(decide(f, scope.policy, scoped.deny), scope.policy.mode)
                assert via_scope == via_policy
                for c in (conn, conn, _conn()):  # the connection's memo: another host, this host, a new one
                    assert finalize(decide(f, scope, scoped.deny, c), scope.mode) == via_policy
                if via_scope.reason == "rule":
                    assert via_scope.rule is got
                checked += 1
                allowed += got is not None
    assert checked > 5000 and 0.1 < allowed / checked < 0.9  # the random policies allow some, not all


def _conn() -> ClientInfo:
    return ClientInfo("198.18.0.1", {"namespace": "n1", "name": "p", "serviceAccount": "default"}, False, "", None, 0)


def test_a_connection_remembers_its_host_entry_and_still_checks_each_request(monkeypatch):
    rules = [{"host": "api.example", "methods": ["GET"], "paths": ["/v1/"]}, {"host": "open.example"}]
    scoped = ScopedPolicy.from_dict({"rules": [], "scopes": [{"name": "s", "match": {"namespaces": ["s"]}, "rules": rules}]})
    scope = scoped.select("s")
    conn = _conn()
    assert scope.allowing_on(conn, "api.example", "GET", "https", "/v1/x", None) is scope.policy.rules[0]
    assert conn.memo_scope is scope and conn.memo_host == "api.example"

    def no_index(*a):
        raise AssertionError("the connection's host entry was not used")

    monkeypatch.setattr(scoped.index, "entry", no_index)
    # same host again: from the connection, but the method and path are checked for every request
    assert scope.allowing_on(conn, "api.example", "GET", "https", "/v1/y", None) is scope.policy.rules[0]
    assert scope.allowing_on(conn, "api.example", "PUT", "https", "/v1/y", None) is None
    assert scope.allowing_on(conn, "api.example", "GET", "https", "/v1/../admin", None) is None
    with pytest.raises(AssertionError, match="not used"):  # another host: back to the index
        scope.allowing_on(conn, "open.example", "GET", "https", "/", None)


def test_a_connection_memo_never_outlives_its_scope():
    """A policy reload builds new Scope objects: a connection's remembered entry (the old policy's
    rule) must not decide under the new policy, nor one scope's entry for another scope."""
    doc = {"rules": [], "scopes": [{"name": "s", "match": {"namespaces": ["s"]}, "rules": [{"host": "a.example"}]}]}
    old = ScopedPolicy.from_dict(doc)
    new = ScopedPolicy.from_dict({**doc, "scopes": [{**doc["scopes"][0], "rules": [{"host": "b.example"}]}]})
    conn = _conn()
    f = _facts("a.example", "GET", "https", "/", "s")
    assert decide(f, old.select("s"), old.deny, conn).decision == "allow"
    assert decide(f, new.select("s"), new.deny, conn).decision == "block"
    assert decide(f, new.default, new.deny, conn).decision == "block"  # another scope, same host
    assert decide(f, old.select("s"), old.deny, conn).decision == "allow"


def test_a_namespace_policy_scope_decides_on_a_connection_through_its_own_policy():
    scoped = ScopedPolicy.from_dict({"rules": [{"host": "a.example"}]})
    own = Scope("namespace:s", Selector(frozenset({"s"})), Policy.from_dict({"rules": [{"host": "b.example"}]}), "cm", 0)
    assert own.index is None
    conn = _conn()
    for _ in range(2):
        assert own.allowing_on(conn, "b.example", "GET", "https", "/", "s") is own.policy.rules[0]
        assert own.allowing_on(conn, "a.example", "GET", "https", "/", "s") is None
        assert scoped.default.allowing_on(conn, "a.example", "GET", "https", "/", "s") is scoped.default.policy.rules[0]


def test_the_memo_entry_kinds_and_shared_condition_sets():
    rules = [{"host": "api.example", "methods": ["GET", "POST"], "paths": ["/v1/"]}, {"host": "open.example"}]
    scoped = ScopedPolicy.from_dict(
        {"rules": [], "scopes": [{"name": f"s{i}", "match": {"namespaces": [f"s{i}"]}, "rules": rules} for i in range(3)]}
    )
    index = scoped.index
    entries = []
    for scope in scoped.scopes:
        assert scope.allowing("api.example", "GET", "https", "/v1/x", None) is scope.policy.rules[0]
        assert scope.allowing("api.example", "PUT", "https", "/v1/x", None) is None
        assert scope.allowing("open.example", "PUT", "https", "/", None) is scope.policy.rules[1]
        assert scope.allowing("nothing.example", "GET", "https", "/", None) is None
        assert index._memo["open.example"][scope] is scope.policy.rules[1]  # an unconditional winner: the Rule
        assert index._memo["nothing.example"][scope] == ()  # no candidate
        (entry,) = index._memo["api.example"][scope]
        assert isinstance(entry[-1], Rule) and entry[-1] is scope.policy.rules[0]
        entries.append(entry)
    # every scope's entry points at one shared methods set and one paths tuple, not its rule's own
    assert len({id(e[0]) for e in entries}) == 1 and len({id(e[2]) for e in entries}) == 1
    assert entries[0][0] == frozenset({"GET", "POST"}) and entries[0][2] == ("/v1/",)


def test_candidates_after_an_unconditional_one_are_left_out():
    rules = [{"host": "*.example", "methods": ["POST"]}, {"host": "*.example"}, {"host": "a.example", "paths": ["/x/"]}]
    scoped = ScopedPolicy.from_dict({"rules": [], "scopes": [{"name": "s", "match": {"namespaces": ["s"]}, "rules": rules}]})
    scope = scoped.select("s")
    assert scope.allowing("a.example", "POST", "https", "/x/", None) is scope.policy.rules[0]
    assert scope.allowing("a.example", "GET", "https", "/x/", None) is scope.policy.rules[1]
    assert [e[-1].index for e in scoped.index._memo["a.example"][scope]] == [0, 1]


def test_a_full_memo_starts_again_and_still_decides(monkeypatch):
    monkeypatch.setattr(scope_index, "MEMO_LIMIT", 3)
    scoped = ScopedPolicy.from_dict({"rules": [{"host": "*.example"}]})
    for i in range(20):
        assert scoped.default.allowing(f"h{i}.example", "GET", "https", "/", None) is scoped.default.policy.rules[0]
        assert scoped.default.allowing(f"h{i}.other", "GET", "https", "/", None) is None
        assert scoped.index._size <= 3
