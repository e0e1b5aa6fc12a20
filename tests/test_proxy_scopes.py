"""Scoped policy (proxy/scopes.py), namespace policies and the ceiling (proxy/delegated.py), and
``python -m proxy.policy explain`` (proxy/explain.py): precedence, bounds, bad input."""

from __future__ import annotations

import subprocess
import sys

import pytest

from proxy import delegated
from proxy.decision import RequestFacts, decide, finalize
from proxy.policy import Policy, PolicyError
from proxy.scopes import ScopedPolicy

POLICY = """
mode: enforce
rules: [{host: default.example}]
deny_hosts: ["*.evil.example", "203.0.113.66"]
scopes:
  - name: payments
    match: {namespaces: [payments]}
    mode: report
    rules: [{host: psp.example, methods: [POST]}]
  - name: payments-api
    match: {namespaces: [payments], labels: {app: api}}
    rules: [{host: api.psp.example}]
  - name: builders
    match: {serviceAccounts: [builder]}
    rules: [{host: mirror.example}]
  - name: builders-in-payments
    match: {namespaces: [payments], serviceAccounts: [builder]}
    mode: open
delegation:
  configMap: tproxy-egress
  ceiling:
    hosts: ["*.corp.example", "secret.example"]
    ranges: [198.18.0.0/15]
"""


@pytest.fixture(scope="module")
def scoped():
    return ScopedPolicy.from_yaml(POLICY, source="policy.yaml")


def facts(host: str, method: str = "GET", namespace: str | None = None) -> RequestFacts:
    return RequestFacts(
        method=method,
        path="/",
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


def verdict(scoped, host, namespace="", sa="", labels=None, method="GET", mine=None):
    scope = scoped.select(namespace, sa, labels or {}, mine)
    return scope, finalize(decide(facts(host, method, namespace or None), scope.policy, scoped.deny), scope.mode)


# -- backwards compatibility ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text",
    [
        "rules: [{host: a.example, namespaces: [x]}]\n",
        "mode: report\nrules: []\ndeny_ranges: [10.0.0.0/8]\nallow_ranges: [10.1.0.0/16]\n",
        "",
    ],
)
def test_todays_files_load_and_decide_as_before(text):
    if not text:
        pytest.raises(PolicyError, ScopedPolicy.from_yaml, text)  # an empty file was and stays an error
        pytest.raises(PolicyError, Policy.from_yaml, text)
        return
    old, new = Policy.from_yaml(text), ScopedPolicy.from_yaml(text)
    assert new.scopes == () and new.deny is None and new.mode == old.mode
    for ns in ("", "x", "y"):
        scope = new.select(ns, "sa", {"a": "b"})
        assert scope.name == "default"
        assert decide(facts("a.example", namespace=ns or None), scope.policy) == decide(
            facts("a.example", namespace=ns or None), old
        )


# -- precedence ----------------------------------------------------------------------------------------
def test_the_most_specific_scope_decides_alone(scoped):
    scope, v = verdict(scoped, "psp.example", "payments", method="POST")
    assert (scope.name, v.decision, v.rule.label) == ("payments", "allow", "rules[0] psp.example")
    # labels make payments-api more specific: psp.example is not in its list, no fall-through
    scope, v = verdict(scoped, "psp.example", "payments", labels={"app": "api"}, method="POST")
    assert (scope.name, v.decision, v.reason) == ("payments-api", "block", "no-matching-rule")
    # nor does a scope inherit the default's rules
    scope, v = verdict(scoped, "default.example", "payments", labels={"app": "api"})
    assert (scope.name, v.decision) == ("payments-api", "block")


def test_report_mode_is_the_scopes_own(scoped):
    scope, v = verdict(scoped, "unlisted.example", "payments")
    assert (scope.name, v.decision) == ("payments", "report")
    scope, v = verdict(scoped, "unlisted.example", "other")
    assert (scope.name, v.decision) == ("default", "block")


def test_service_account_scopes_and_ties(scoped):
    assert scoped.select("ci", "builder").name == "builders"
    # namespace + service account (2 terms) beats service account alone (1)
    assert scoped.select("payments", "builder").name == "builders-in-payments"
    # payments (namespace, 1 term) and builders (sa, 1 term) tie for a builder pod only when the
    # 2-term scope is absent: the first listed wins
    tie = ScopedPolicy.from_yaml(
        "rules: []\nscopes:\n"
        " - {name: a, match: {serviceAccounts: [s]}, rules: []}\n"
        " - {name: b, match: {namespaces: [n]}, rules: []}\n"
    )
    assert tie.select("n", "s").name == "a"


def test_the_deny_list_wins_in_every_scope_and_mode(scoped):
    for ns, sa in (("", ""), ("payments", ""), ("payments", "builder"), ("ci", "builder")):
        scope, v = verdict(scoped, "x.evil.example", ns, sa)
        assert (v.decision, v.reason, v.rule.label) == ("block", "denied-host", "deny_hosts[0] *.evil.example"), scope
    assert verdict(scoped, "evil.example", "payments", "builder")[1].decision == "allow"  # the apex: open scope
    assert verdict(scoped, "203.0.113.66", "payments", "builder")[1].reason == "denied-host"


def test_an_unknown_source_gets_the_default(scoped):
    mine = {"": delegated.parse("rules: [{host: psp.example}]", "x", scoped, "cm")}
    assert scoped.select("", "builder", {"app": "api"}, mine).name == "default"


# -- delegation and the ceiling ------------------------------------------------------------------------
def test_a_namespace_policy_applies_to_its_namespace_only(scoped):
    mine = {"team": delegated.parse("rules: [{host: registry.example}]\n", "team", scoped, "team/tproxy-egress")}
    scope, v = verdict(scoped, "registry.example", "team", mine=mine)
    assert (scope.name, v.decision) == ("namespace:team", "allow")
    assert verdict(scoped, "registry.example", "other", mine=mine)[1].decision == "block"
    # a file scope selecting the namespace at least as specifically wins over the namespace's own
    mine["payments"] = delegated.parse("rules: [{host: registry.example}]\n", "payments", scoped, "cm")
    assert scoped.select("payments", "", {}, mine).name == "payments"
    # the deny list still wins
    assert verdict(scoped, "a.evil.example", "team", mine=mine)[1].reason == "denied-host"


@pytest.mark.parametrize(
    "text, why",
    [
        ("rules: [{host: secret.example}]", "ceiling: rules[0] 'secret.example': the ceiling forbids it"),
        ("rules: [{host: a.corp.example}]", "the ceiling forbids it (*.corp.example)"),
        ("rules: [{host: '*.example'}]", "the wildcard covers hosts the ceiling forbids"),
        ("rules: [{host: '*.x.corp.example'}]", "the wildcard covers hosts the ceiling forbids"),
        ("rules: [{host: 198.18.0.7}]", "an address in the ceiling's ranges"),
        ("rules: [{host: 10.1.2.3}]", "an address in the cluster's deny_ranges"),
        ("mode: open\nrules: []", "mode 'open' is not allowed to namespaces"),
        ("rules: [{host: a.example, namespaces: [other]}]", "'namespaces' is not allowed"),
        ("deny_ranges: []\nrules: []", "unknown key(s) ['deny_ranges']"),
        ("rules: [{host: 'a b'}]", "rules[0].host"),
        ("rules: [", "not valid YAML"),
        ("- a\n- b", "must be a mapping"),
        (None, "no 'policy.yaml' key"),
    ],
)
def test_bad_namespace_policies_are_rejected_with_the_reason(scoped, text, why):
    with pytest.raises(PolicyError) as e:
        delegated.parse(text, "team", scoped, "team/tproxy-egress")
    assert why in str(e.value) and str(e.value).startswith("team/tproxy-egress: ")


def test_the_ceiling_allows_what_it_does_not_cover(scoped):
    for host in ("corp.example", "*.other.example", "example", "203.0.113.7"):
        delegated.parse(f"rules: [{{host: '{host}'}}]", "team", scoped, "cm")


def test_ceiling_ranges_bound_resolved_addresses(scoped):
    mine = delegated.parse("rules: [{host: a.example}]", "team", scoped, "cm")
    assert mine.policy.address_denied("198.18.3.4") and mine.policy.address_denied("::ffff:198.18.3.4")
    assert mine.policy.address_denied("10.0.0.1") and not mine.policy.address_denied("203.0.113.7")
    # file scopes are not bound by the ceiling (the admin wrote them)
    assert not scoped.select("ci", "builder").policy.address_denied("198.18.3.4")


# -- bad policy files -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, why",
    [
        ("rules: []\nscopes: {a: b}", "scopes: must be a list"),
        ("rules: []\nscopes: [{name: a, rules: []}]", "scopes[0] (a).match: required"),
        ("rules: []\nscopes: [{name: a, match: {}, rules: []}]", "scopes[0] (a).match: required"),
        ("rules: []\nscopes: [{name: a, match: {pods: [x]}}]", "unknown key(s) ['pods']"),
        ("rules: []\nscopes: [{name: a, match: {labels: {a: 1}}}]", "labels: must be a non-empty mapping"),
        ("rules: []\nscopes: [{name: a, match: {namespaces: [x]}, mode: strict}]", "mode: 'strict'"),
        ("rules: []\nscopes: [{name: a, match: {namespaces: [x]}, rules: [{host: '*'}]}]", "scopes[0] (a).rules[0].host"),
        ("rules: []\nscopes: [{name: a, match: {namespaces: [x]}}, {name: a, match: {namespaces: [y]}}]", "used twice"),
        ("rules: []\nscopes: [{name: default, match: {namespaces: [x]}}]", "used twice (or is 'default')"),
        ("rules: []\nscopes: [{match: {namespaces: [x]}}]", "scopes[0].name: required"),
        ("rules: []\ndeny_hosts: [a..b]", "deny_hosts[0].host"),
        ("rules: []\ndeny_hosts: a.example", "deny_hosts: must be a non-empty list"),
        ("rules: []\ndelegation: {configMap: 3}", "delegation.configMap"),
        ("rules: []\ndelegation: {ceiling: {ranges: [nope]}}", "delegation.ceiling.ranges[0]"),
        ("rules: []\ndelegation: {ceiling: {modes: [strict]}}", "delegation.ceiling.modes"),
        ("rules: []\ndelegation: {ceiling: {hostz: [a]}}", "unknown key(s) ['hostz']"),
    ],
)
def test_bad_policy_files_are_rejected_with_the_place(text, why):
    with pytest.raises(PolicyError) as e:
        ScopedPolicy.from_yaml(text, source="p.yaml")
    assert why in str(e.value) and str(e.value).startswith("p.yaml: ")


# -- explain -------------------------------------------------------------------------------------------
def explain(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "proxy.policy", "explain", *args], capture_output=True, text=True, timeout=60)


def test_explain_names_the_scope_and_the_rule(tmp_path):
    p = tmp_path / "policy.yaml"
    p.write_text(POLICY)
    r = explain(
        "--policy", str(p), "--namespace", "payments", "--labels", "app=api,tier=web", "https://api.psp.example/v1/charge"
    )
    assert r.returncode == 0, r.stderr
    assert "scope: payments-api (namespace in payments and label app=api; mode enforce" in r.stdout
    assert "decision: allow (reason rule)" in r.stdout and "rule: rules[0] api.psp.example" in r.stdout
    r = explain("--policy", str(p), "--namespace", "payments", "--method", "GET", "https://psp.example/")
    assert "scope: payments " in r.stdout and "decision: report (reason no-matching-rule)" in r.stdout
    r = explain("--policy", str(p), "https://x.evil.example/")
    assert "scope: default" in r.stdout and "rule: deny_hosts[0] *.evil.example" in r.stdout


def test_explain_checks_a_namespace_policy_against_the_ceiling(tmp_path):
    p, mine = tmp_path / "policy.yaml", tmp_path / "mine.yaml"
    p.write_text(POLICY)
    mine.write_text("rules: [{host: registry.example}]\n")
    r = explain("--policy", str(p), "--namespace", "team", "--namespace-policy", str(mine), "https://registry.example/")
    assert r.returncode == 0 and "scope: namespace:team" in r.stdout and "decision: allow" in r.stdout
    mine.write_text("rules: [{host: a.corp.example}]\n")
    r = explain("--policy", str(p), "--namespace", "team", "--namespace-policy", str(mine), "https://registry.example/")
    assert r.returncode == 2 and "the ceiling forbids it (*.corp.example)" in r.stderr and not r.stdout


@pytest.mark.parametrize(
    "content, args, why",
    [
        ("rules: [{hots: a}]", ["https://a.example/"], "rules[0]: unknown key(s) ['hots']"),
        (None, ["https://a.example/"], "cannot read policy"),
        ("rules: []", ["ftp://a.example/"], "is not an http:// or https:// URL"),
        ("rules: []", ["--labels", "novalue", "https://a.example/"], "'novalue' is not key=value"),
    ],
)
def test_explain_fails_clearly_on_bad_input(tmp_path, content, args, why):
    p = tmp_path / "policy.yaml"
    if content is not None:
        p.write_text(content)
    r = explain("--policy", str(p), *args)
    assert r.returncode == 2 and why in r.stderr and r.stderr.startswith("error: "), r.stderr
