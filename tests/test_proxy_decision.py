"""proxy.decision: a pure function from request facts to a Verdict, and the one enumeration of reasons."""

import builtins
import copy
import dataclasses
import os
import re
import socket
import subprocess
import sys

import pytest

from proxy import decision
from proxy.decision import Reason, RequestFacts, Verdict, decide, decide_connect, finalize, screen_addresses, screen_tunnel
from proxy.policy import Policy

README = os.path.join(os.path.dirname(__file__), "..", "proxy", "README.md")
REPO = os.path.join(os.path.dirname(__file__), "..")


def facts(**kw) -> RequestFacts:
    base = dict(
        method="GET",
        path="/",
        scheme="https",
        host_headers=["a.example"],
        authority="",
        http2=False,
        absolute_target=None,
        regular=False,
        request_host="203.0.113.9",
        request_port=443,
        destination_port=443,
        client_tls=True,
        sni="a.example",
        namespace=None,
    )
    base.update(kw)
    return RequestFacts(**base)


POLICY = Policy.from_yaml("rules: [{host: a.example}, {host: 203.0.113.7}, {host: c.example, methods: [CONNECT]}]\n")

# one request per reason decide() can give
CASES = {
    Reason.RULE: facts(),
    Reason.NO_MATCHING_RULE: facts(host_headers=["b.example"], sni="b.example"),
    Reason.SNI_HOST_MISMATCH: facts(sni="b.example"),
    Reason.TLS_WITHOUT_SNI: facts(sni=None),
    Reason.IP_LITERAL: facts(host_headers=["203.0.113.8"], sni=None),
    Reason.MISSING_HOST: facts(host_headers=[]),
    Reason.INVALID_HOST: facts(host_headers=["a b"]),
    Reason.MULTIPLE_HOST_HEADERS: facts(host_headers=["a.example", "b.example"]),
    Reason.INVALID_TARGET: facts(path="https://b.example/", http2=True),
    Reason.AUTHORITY_HOST_MISMATCH: facts(absolute_target=("https", "b.example", 443)),
    Reason.AUTHORITY_SCHEME_MISMATCH: facts(absolute_target=("http", "a.example", 443)),
    Reason.AUTHORITY_PORT_MISMATCH: facts(absolute_target=("https", "a.example", 8443)),
}


def test_the_readme_lists_exactly_the_reasons():
    text = open(README, encoding="utf-8").read()
    listed = re.search(r"`reason`: `([^`]*)`", text).group(1)
    assert {r.strip() for r in listed.split("|")} == {r.value for r in Reason}


def test_the_policys_own_reasons_are_reasons():
    assert Reason(POLICY.decide("z.example", method="GET", scheme="https", path="/").reason)


@pytest.mark.parametrize("reason", list(CASES), ids=str)
def test_every_request_reason_is_named_by_the_verdict(reason):
    v = decide(CASES[reason], POLICY)
    assert v.reason == reason and isinstance(v.reason, Reason)
    assert v.decision == ("allow" if reason == Reason.RULE else "block")


def test_open_mode_and_report_mode():
    open_policy = Policy.from_yaml("mode: open\nrules: []\n")
    assert decide(facts(host_headers=["b.example"], sni="x.example"), open_policy).reason == Reason.OPEN_MODE
    report = Policy.from_yaml("mode: report\nrules: []\n")
    assert finalize(decide(facts(), report), report.mode).decision == "report"
    malformed = finalize(decide(CASES[Reason.MULTIPLE_HOST_HEADERS], report), report.mode)
    assert malformed.decision == "block"  # malformed requests are blocked in report mode too


def test_resolved_addresses_are_screened_against_the_deny_ranges():
    v = decide(facts(), POLICY)
    assert screen_addresses(v, ["203.0.113.30"], POLICY) is v
    denied = screen_addresses(v, ["203.0.113.30", "10.0.0.1"], POLICY)
    assert (denied.decision, denied.reason, denied.upstream) == ("block", Reason.DENIED_RANGE, "10.0.0.1")
    assert screen_addresses(v, [], POLICY).reason == Reason.DENIED_RANGE


def test_connect_decisions():
    assert decide_connect("a.example", 443, None, POLICY) is None  # decided request by request inside
    tunnel = decide_connect("C.example", 22, None, POLICY)
    assert (tunnel.decision, tunnel.reason, tunnel.host) == ("allow", Reason.RULE, "c.example")
    assert screen_tunnel(tunnel, ["203.0.113.5"], POLICY).upstream == "203.0.113.5"
    assert screen_tunnel(tunnel, ["127.0.0.1"], POLICY).reason == Reason.DENIED_RANGE
    assert decide_connect("b.example", 443, None, POLICY).reason == Reason.CONNECT_NOT_ALLOWED
    assert decide_connect("a b", 443, None, POLICY).reason == Reason.INVALID_HOST


def test_decide_is_pure(monkeypatch):
    """Same facts, same verdict; the facts are not changed; no DNS, no file, no mitmproxy."""

    def refuse(*a, **kw):
        raise AssertionError("I/O in the decision")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(builtins, "open", refuse)
    for f in CASES.values():
        before = copy.deepcopy(f)
        assert decide(f, POLICY) == decide(f, POLICY)
        assert f == before


def test_the_decision_module_does_not_import_mitmproxy():
    code = "import sys, proxy.decision; print(sorted(m for m in sys.modules if m.startswith('mitmproxy')))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_verdicts_print_as_their_plain_reason():
    """Audit lines and X-Tproxy-Reason carry the reason's value, byte for byte."""
    from proxy.audit import _jstr

    assert _jstr(Reason.RAW_TCP) == '"raw-tcp"' and f"{Reason.DENIED_RANGE}" == "denied-range"
    assert dataclasses.fields(Verdict)[1].name == "reason" and decision.MALFORMED_REASONS <= set(Reason)
