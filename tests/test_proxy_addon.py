"""proxy.core.TproxyAddon (and the modules it wires) with mitmproxy.test.taddons/tflow: one behaviour per test."""

import asyncio
import json
import os
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mitmproxy import connection, exceptions
from mitmproxy.net.http import http1
from mitmproxy.net.http.http1.assemble import assemble_request_head
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.proxy.server_hooks import ServerConnectionHookData
from mitmproxy.test import taddons, tflow, tutils

from proxy.audit import AuditLog
from proxy.core import BLOCK_BODY, TproxyAddon
from proxy.decision import Verdict
from controllerkit import probe

DNS = {
    "storage.googleapis.com": ["203.0.113.20"],
    "www.google.com": ["203.0.113.10"],
    "a.example": ["203.0.113.30"],
    "b.a.example": ["203.0.113.31"],
    "private.example": ["10.1.2.3"],
    "mixed.example": ["203.0.113.40", "192.168.0.4"],
    "metadata.google.internal": ["169.254.169.254"],
}


async def fake_resolve(host, port):
    if host in DNS:
        return list(DNS[host])
    if host[0].isdigit() or ":" in host:
        return [host]
    raise OSError(f"unknown host {host}")


@pytest.fixture
def audit_file(tmp_path):
    return tmp_path / "audit.jsonl"


@pytest.fixture
def addon(audit_file):
    a = TproxyAddon(resolver=fake_resolve)
    with taddons.context(a) as tctx:
        tctx.configure(a, tproxy_audit=str(audit_file))
        a.tctx = tctx
        yield a
        a.done()


def write_policy(tmp_path, text, name="policy.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def audit_lines(audit_file):
    if not audit_file.exists():
        return []
    return [json.loads(line) for line in audit_file.read_text().splitlines() if line.strip()]


def make_flow(
    host="storage.googleapis.com",
    path="/solutions-public-assets/a.txt",
    *,
    scheme="https",
    sni="same",
    method="GET",
    dest=("203.0.113.99", None),
    mode="transparent",
    client_ip="10.0.0.5",
    host_header=True,
):
    req = tutils.treq(host=host, port=443 if scheme == "https" else 80, scheme=scheme, method=method.encode(), path=path.encode())
    if host_header:
        req.headers["Host"] = host
    else:
        req.headers.pop("Host", None)
    cc = tflow.tclient_conn()
    cc.proxy_mode = ProxyMode.parse(mode)
    cc.peername = (client_ip, 40000)
    cc.tls = scheme == "https"
    cc.sni = (host.split(":")[0] if sni == "same" else sni) if scheme == "https" else None
    sc = tflow.tserver_conn()
    sc.address = (dest[0], dest[1] or (443 if scheme == "https" else 80))
    return tflow.tflow(client_conn=cc, server_conn=sc, req=req)


def run(addon, flow):
    asyncio.run(addon.request(flow))
    if flow.response is not None and flow.response.status_code != 418:
        addon.response(flow)
    return flow


def server_connect(addon, flow, host=None, port=None):
    srv = connection.Server(address=(host or flow.request.host, port or flow.request.port))
    data = ServerConnectionHookData(server=srv, client=flow.client_conn)
    addon.server_connect(data)
    return srv


# -- defaults: the tutorial policy --------------------------------------------------------------
def test_builtin_policy_allows_solutions_assets(addon):
    f = run(addon, make_flow())
    assert f.response is None
    assert f.request.host == "storage.googleapis.com"


def test_builtin_policy_blocks_other_hosts_with_teapot(addon):
    f = run(addon, make_flow("www.google.com", "/"))
    assert f.response.status_code == 418
    assert f.response.content == BLOCK_BODY == b"Access Denied by Administrator"
    assert f.response.headers["Content-Type"] == "text/html"


def test_blocked_request_is_not_approved_for_any_upstream(addon):
    f = run(addon, make_flow("www.google.com", "/"))
    srv = server_connect(addon, f, "www.google.com", 443)
    assert srv.error and "not allowed" in srv.error


# -- no bypass -------------------------------------------------------------------------------------
def test_allowed_request_dials_the_policy_host_not_the_client_destination(addon):
    f = run(addon, make_flow(dest=("198.51.100.66", 443)))
    assert f.request.host == "storage.googleapis.com" and f.request.port == 443
    srv = server_connect(addon, f)
    assert srv.error is None
    assert srv.address == ("203.0.113.20", 443)  # pinned to the address that was checked


def test_connected_server_gets_its_name_back_for_connection_reuse(addon):
    f = run(addon, make_flow())
    srv = server_connect(addon, f)
    srv.state = connection.ConnectionState.OPEN
    addon.server_connected(ServerConnectionHookData(server=srv, client=f.client_conn))
    assert srv.address == ("storage.googleapis.com", 443)


def test_dns_change_after_the_decision_does_not_move_the_connection(addon):
    f = run(addon, make_flow())
    DNS["storage.googleapis.com"] = ["169.254.169.254"]  # rebinding attempt after the check
    try:
        addon.dns.entries.clear()
        assert server_connect(addon, f).address == ("203.0.113.20", 443)
    finally:
        DNS["storage.googleapis.com"] = ["203.0.113.20"]


def test_unapproved_connection_to_original_destination_is_refused(addon):
    f = run(addon, make_flow(dest=("198.51.100.66", 443)))
    srv = server_connect(addon, f, "198.51.100.66", 443)
    assert srv.error


def test_approval_is_per_client_connection(addon):
    run(addon, make_flow())
    other = make_flow()
    srv = server_connect(addon, other, "storage.googleapis.com", 443)
    assert srv.error


def test_client_disconnect_forgets_approvals(addon):
    f = run(addon, make_flow())
    addon.client_disconnected(f.client_conn)
    assert server_connect(addon, f).error


def test_sni_different_from_host_is_blocked(addon):
    f = run(addon, make_flow(sni="www.google.com"))
    assert f.response.status_code == 418
    assert f.response.headers["X-Tproxy-Reason"] == "sni-host-mismatch"


def test_sni_comparison_is_case_insensitive(addon):
    f = run(addon, make_flow(sni="STORAGE.googleapis.com."))
    assert f.response is None


def test_tls_without_sni_is_blocked(addon):
    f = run(addon, make_flow(sni=None))
    assert f.response.headers["X-Tproxy-Reason"] == "tls-without-sni"


def test_ip_literal_host_is_blocked(addon):
    f = run(addon, make_flow("203.0.113.20", scheme="http"))
    assert f.response.headers["X-Tproxy-Reason"] == "ip-literal"


def test_ip_literal_allowed_by_exact_rule(addon, tmp_path):
    addon.tctx.configure(addon, tproxy_policy=write_policy(tmp_path, "rules: [{host: 203.0.113.50}]\n"))
    f = run(addon, make_flow("203.0.113.50", "/", scheme="http"))
    assert f.response is None and server_connect(addon, f).address == ("203.0.113.50", 80)


def test_absolute_form_target_for_another_host_is_blocked(addon):
    f = make_flow(path="/solutions-public-assets/a.txt")
    f.request.authority = "www.google.com"
    run(addon, f)
    assert f.response.headers["X-Tproxy-Reason"] == "authority-host-mismatch"


def test_absolute_form_target_for_the_same_host_passes(addon):
    f = make_flow()
    f.request.authority = "storage.googleapis.com:443"
    assert run(addon, f).response is None


def absolute_form_flow(line: bytes, host="storage.googleapis.com", *, port=443, **kw):
    """A transparent-mode flow whose request was parsed from ``line`` (so the absolute-form target is
    kept as written), then given the connection's scheme, host and port as mitmproxy's transparent
    mode does before any hook."""
    f = make_flow(host, scheme="https" if port == 443 else "http", dest=("203.0.113.99", port), **kw)
    req = http1.read_request_head([line + b"\r\n", b"Host: " + host.encode() + b"\r\n"])
    req.data.host, req.data.port, req.scheme = "203.0.113.99", port, f.request.scheme
    f.request = req
    return f


@pytest.mark.parametrize(
    "line, port, reason",
    [
        (b"GET https://www.google.com/solutions-public-assets/a HTTP/1.1", 443, "authority-host-mismatch"),
        (b"GET http://storage.googleapis.com/solutions-public-assets/a HTTP/1.1", 443, "authority-scheme-mismatch"),
        (b"GET https://storage.googleapis.com/solutions-public-assets/a HTTP/1.1", 80, "authority-scheme-mismatch"),
        (b"GET https://storage.googleapis.com:8443/solutions-public-assets/a HTTP/1.1", 443, "authority-port-mismatch"),
    ],
)
def test_absolute_form_target_disagreeing_with_the_connection_is_blocked(addon, line, port, reason):
    f = run(addon, absolute_form_flow(line, port=port))
    assert f.response.status_code == 418 and f.response.headers["X-Tproxy-Reason"] == reason
    assert server_connect(addon, f, "storage.googleapis.com", port).error


def test_absolute_form_target_with_another_port_than_the_host_header_is_blocked(addon):
    f = run(
        addon,
        absolute_form_flow(
            b"GET https://storage.googleapis.com/solutions-public-assets/a HTTP/1.1", "storage.googleapis.com:8443"
        ),
    )
    assert f.response.headers["X-Tproxy-Reason"] == "authority-port-mismatch"


@pytest.mark.parametrize(
    "line",
    [
        b"GET https://STORAGE.googleapis.com./solutions-public-assets/a?q HTTP/1.1",
        b"GET https://storage.googleapis.com:443/solutions-public-assets/a?q HTTP/1.1",
    ],
)
def test_allowed_absolute_form_target_is_forwarded_in_origin_form(addon, line):
    f = run(addon, absolute_form_flow(line))
    assert f.response is None
    assert assemble_request_head(f.request).startswith(b"GET /solutions-public-assets/a?q HTTP/1.1\r\n")
    assert f.request.headers.get_all("Host") == ["storage.googleapis.com"]


@pytest.mark.parametrize("mode", ["enforce", "report"])
@pytest.mark.parametrize("path", ["https://www.google.com/", "www.google.com:443", "*"])
def test_http2_path_that_is_not_a_path_is_refused_in_every_mode(addon, tmp_path, mode, path):
    """Forwarded to an HTTP/1 origin, an HTTP/2 :path is its request target (absolute-form here)."""
    addon.tctx.configure(addon, tproxy_policy=write_policy(tmp_path, f"mode: {mode}\nrules: [{{host: a.example}}]\n"))
    f = make_flow("a.example", "/")
    f.request.http_version = "HTTP/2.0"
    f.request.path = path
    run(addon, f)
    assert f.response.status_code == 418 and f.response.headers["X-Tproxy-Reason"] == "invalid-target"


def test_options_asterisk_is_decided_on_the_host(addon, tmp_path):
    addon.tctx.configure(addon, tproxy_policy=write_policy(tmp_path, "rules: [{host: a.example}]\n"))
    f = run(addon, make_flow("a.example", "*", method="OPTIONS"))
    assert f.response is None
    assert assemble_request_head(f.request).startswith(b"OPTIONS * HTTP/1.1\r\n")


def test_missing_host_header_is_blocked(addon):
    f = run(addon, make_flow(scheme="http", host_header=False))
    assert f.response.headers["X-Tproxy-Reason"] == "missing-host"


def test_host_port_in_header_is_ignored_for_dialling_in_transparent_mode(addon, tmp_path):
    addon.tctx.configure(addon, tproxy_policy=write_policy(tmp_path, "rules: [{host: a.example}]\n"))
    f = run(addon, make_flow("a.example:22", "/", scheme="http"))
    assert f.response is None and f.request.port == 80


def test_resolved_private_address_is_denied(addon, tmp_path):
    addon.tctx.configure(addon, tproxy_policy=write_policy(tmp_path, "rules: [{host: private.example}]\n"))
    f = run(addon, make_flow("private.example", "/", scheme="http"))
    assert f.response.status_code == 418 and f.response.headers["X-Tproxy-Reason"] == "denied-range"


def test_any_denied_address_in_the_answer_blocks(addon, tmp_path):
    addon.tctx.configure(addon, tproxy_policy=write_policy(tmp_path, "rules: [{host: mixed.example}]\n"))
    f = run(addon, make_flow("mixed.example", "/", scheme="http"))
    assert f.response.headers["X-Tproxy-Reason"] == "denied-range"


def test_metadata_server_is_denied_even_when_allowed_by_name(addon, tmp_path):
    addon.tctx.configure(addon, tproxy_policy=write_policy(tmp_path, "rules: [{host: metadata.google.internal}]\n"))
    f = run(addon, make_flow("metadata.google.internal", "/computeMetadata/v1/", scheme="http"))
    assert f.response.headers["X-Tproxy-Reason"] == "denied-range"


def test_allow_ranges_make_an_exception(addon, tmp_path):
    addon.tctx.configure(
        addon, tproxy_policy=write_policy(tmp_path, "rules: [{host: private.example}]\nallow_ranges: [10.1.0.0/16]\n")
    )
    f = run(addon, make_flow("private.example", "/", scheme="http"))
    assert f.response is None


def test_unresolvable_host_gets_502_and_no_approval(addon, tmp_path):
    addon.tctx.configure(addon, tproxy_policy=write_policy(tmp_path, "rules: [{host: gone.example}]\n"))
    f = run(addon, make_flow("gone.example", "/", scheme="http"))
    assert f.response.status_code == 502
    assert server_connect(addon, f, "gone.example", 80).error


def test_raw_tcp_is_audited_and_never_approved(addon, audit_file):
    f = tflow.ttcpflow()
    f.client_conn.proxy_mode = ProxyMode.parse("transparent")
    addon.tcp_start(f)
    data = ServerConnectionHookData(server=connection.Server(address=f.server_conn.address), client=f.client_conn)
    addon.server_connect(data)
    assert data.server.error
    line = audit_lines(audit_file)[-1]
    assert (line["decision"], line["reason"], line["scheme"]) == ("block", "raw-tcp", "tcp")


def test_dns_answers_are_cached_briefly(audit_file):
    calls = []

    async def counting(host, port):
        calls.append(host)
        return await fake_resolve(host, port)

    a = TproxyAddon(resolver=counting)
    with taddons.context(a) as tctx:
        tctx.configure(a, tproxy_audit=str(audit_file))
        run(a, make_flow())
        run(a, make_flow())
        assert calls == ["storage.googleapis.com"]
        a.dns.entries.clear()
        run(a, make_flow())
        assert len(calls) == 2


def test_namespace_rule_applies_only_to_pods_of_that_namespace(addon, tmp_path):
    ident = tmp_path / "identity.json"
    ident.write_text(
        json.dumps(
            {
                "version": 1,
                "node": "n",
                "pods": {"10.0.0.5": {"namespace": "team-a", "name": "a"}, "10.0.0.6": {"namespace": "team-b", "name": "b"}},
            }
        )
    )
    addon.tctx.configure(
        addon,
        tproxy_identity=str(ident),
        tproxy_policy=write_policy(tmp_path, "rules: [{host: a.example, namespaces: [team-a]}]\n"),
    )
    assert run(addon, make_flow("a.example", "/", client_ip="10.0.0.5")).response is None
    assert run(addon, make_flow("a.example", "/", client_ip="10.0.0.6")).response.status_code == 418


# -- CONNECT (standard mode) -----------------------------------------------------------------------
def connect_flow(host, port):
    f = make_flow(host, "", scheme="http", mode="regular", method="CONNECT")
    f.request.port = port
    f.request.host = host
    return f


def test_connect_to_allowed_https_host_passes(addon):
    f = connect_flow("storage.googleapis.com", 443)
    asyncio.run(addon.http_connect(f))
    assert f.response is None


def test_connect_to_other_host_is_blocked(addon):
    f = connect_flow("www.google.com", 443)
    asyncio.run(addon.http_connect(f))
    assert f.response.status_code == 418


def test_connect_to_other_port_is_blocked_unless_rule_allows_connect(addon, tmp_path):
    f = connect_flow("storage.googleapis.com", 22)
    asyncio.run(addon.http_connect(f))
    assert f.response.status_code == 418
    addon.tctx.configure(
        addon, tproxy_policy=write_policy(tmp_path, "rules: [{host: storage.googleapis.com, methods: [CONNECT]}]\n")
    )
    f = connect_flow("storage.googleapis.com", 22)
    asyncio.run(addon.http_connect(f))
    assert f.response is None


def test_connect_rule_approves_a_raw_tunnel_pinned_to_the_checked_address(addon, tmp_path, audit_file):
    addon.tctx.configure(addon, tproxy_policy=write_policy(tmp_path, "rules: [{host: a.example, methods: [CONNECT]}]\n"))
    f = connect_flow("a.example", 22)
    asyncio.run(addon.http_connect(f))
    assert f.response is None
    assert server_connect(addon, f, "a.example", 22).address == ("203.0.113.30", 22)
    line = audit_lines(audit_file)[-1]
    assert (line["decision"], line["method"], line["port"]) == ("allow", "CONNECT", 22)


def test_connect_rule_still_honours_deny_ranges(addon, tmp_path):
    addon.tctx.configure(addon, tproxy_policy=write_policy(tmp_path, "rules: [{host: private.example, methods: [CONNECT]}]\n"))
    f = connect_flow("private.example", 5432)
    asyncio.run(addon.http_connect(f))
    assert f.response.status_code == 418 and f.response.headers["X-Tproxy-Reason"] == "denied-range"


def test_regular_mode_uses_request_host_and_port(addon, tmp_path):
    addon.tctx.configure(addon, tproxy_policy=write_policy(tmp_path, "rules: [{host: a.example}]\n"))
    f = make_flow("a.example", "/", scheme="http", mode="regular")
    f.request.port = 8080
    run(addon, f)
    assert f.response is None and server_connect(addon, f).address == ("203.0.113.30", 8080)


# -- probe -----------------------------------------------------------------------------------------
def probe_flow(nonce="n0nce", host=probe.PROBE_HOST, dest=(probe.PROBE_ADDRESS, probe.PROBE_PORT)):
    f = make_flow(host, probe.PROBE_PATH, scheme="http", dest=dest)
    if nonce:
        f.request.headers[probe.NONCE_HEADER] = nonce
    return f


def test_probe_is_answered_with_the_nonce(addon, audit_file):
    f = run(addon, probe_flow())
    assert f.response.status_code == 200
    assert f.response.headers[probe.ANSWER_HEADER] == "n0nce"
    assert b"tproxy proxy on" in f.response.content
    assert audit_lines(audit_file) == []  # not a policy decision
    assert addon.metrics.probes._value.get() == 1


def test_probe_recognised_by_address_alone(addon):
    f = run(addon, probe_flow(host="192.0.2.1"))
    assert f.response.status_code == 200


def test_probe_without_nonce_is_400(addon):
    f = run(addon, probe_flow(nonce=None))
    assert f.response.status_code == 400


def test_probe_address_other_path_is_policy_blocked(addon):
    f = make_flow("192.0.2.1", "/other", scheme="http", dest=("192.0.2.1", 80))
    run(addon, f)
    assert f.response.status_code == 418


# -- modes -----------------------------------------------------------------------------------------
def test_report_mode_allows_and_audits_would_block(addon, tmp_path, audit_file):
    addon.tctx.configure(addon, tproxy_policy=write_policy(tmp_path, "mode: report\nrules: []\n"))
    f = make_flow("www.google.com", "/")
    run(addon, f)
    assert f.response is None and server_connect(addon, f).address == ("203.0.113.10", 443)
    f.response = tutils.tresp()
    addon.response(f)
    line = audit_lines(audit_file)[-1]
    assert (line["decision"], line["reason"]) == ("report", "no-matching-rule")


def test_report_mode_reports_denied_range(addon, tmp_path, audit_file):
    addon.tctx.configure(addon, tproxy_policy=write_policy(tmp_path, "mode: report\nrules: []\n"))
    f = run(addon, make_flow("private.example", "/", scheme="http"))
    assert f.response is None
    f.response = tutils.tresp()
    addon.response(f)
    assert audit_lines(audit_file)[-1]["reason"] == "denied-range"


def test_open_mode_allows_everything(addon, tmp_path):
    addon.tctx.configure(addon, tproxy_policy=write_policy(tmp_path, "mode: open\n"))
    f = run(addon, make_flow("www.google.com", "/anything", sni="other.example"))
    assert f.response is None
    assert server_connect(addon, f).address == ("203.0.113.10", 443)


# -- audit -----------------------------------------------------------------------------------------
def test_audit_line_has_identity_and_decision(addon, tmp_path, audit_file):
    ident = tmp_path / "identity.json"
    ident.write_text(
        json.dumps(
            {
                "version": 1,
                "node": "node-1",
                "pods": {
                    "10.0.0.5": {
                        "namespace": "default",
                        "name": "debian-app-1",
                        "serviceAccount": "app",
                        "labels": {},
                        "uid": "u",
                    }
                },
            }
        )
    )
    addon.tctx.configure(addon, tproxy_identity=str(ident))
    f = run(addon, make_flow())
    f.response = tutils.tresp(content=b"12345")
    addon.response(f)
    line = audit_lines(audit_file)[-1]
    assert line["pod_namespace"] == "default" and line["pod_name"] == "debian-app-1"
    assert line["pod_service_account"] == "app" and line["node"] == "node-1"
    assert line["client_ip"] == "10.0.0.5"
    assert (line["decision"], line["rule"], line["status"], line["bytes"]) == ("allow", "rules[0] storage.googleapis.com", 200, 5)
    assert line["sni"] == "storage.googleapis.com" and line["scheme"] == "https"
    assert line["upstream"] == "203.0.113.20"


def test_audit_line_for_block_has_status_and_reason(addon, audit_file):
    run(addon, make_flow("www.google.com", "/x"))
    line = audit_lines(audit_file)[-1]
    assert (line["decision"], line["reason"], line["status"], line["host"], line["path"]) == (
        "block",
        "no-matching-rule",
        418,
        "www.google.com",
        "/x",
    )


def test_identity_for_v4_mapped_client_address(addon, tmp_path, audit_file):
    ident = tmp_path / "identity.json"
    ident.write_text(json.dumps({"version": 1, "node": "n", "pods": {"10.0.0.5": {"namespace": "ns", "name": "p"}}}))
    addon.tctx.configure(addon, tproxy_identity=str(ident))
    run(addon, make_flow("www.google.com", "/", client_ip="::ffff:10.0.0.5"))
    assert audit_lines(audit_file)[-1]["pod_name"] == "p"


def test_missing_identity_file_gives_empty_fields(addon, tmp_path, audit_file):
    addon.tctx.configure(addon, tproxy_identity=str(tmp_path / "absent.json"))
    run(addon, make_flow("www.google.com", "/"))
    line = audit_lines(audit_file)[-1]
    assert line["pod_name"] == "" and line["pod_namespace"] == ""


def test_error_hook_audits_allowed_request_that_failed(addon, audit_file):
    f = run(addon, make_flow())
    f.error = tflow.terr()
    addon.error(f)
    line = audit_lines(audit_file)[-1]
    assert line["decision"] == "allow" and line["error"]


def test_request_refused_by_mitmproxy_is_audited_as_block(addon, audit_file):
    f = make_flow("allowed.example", "", scheme="http", method="CONNECT")
    f.error = tflow.terr("mitmproxy received an HTTP CONNECT request even though ...")
    addon.error(f)
    line = audit_lines(audit_file)[-1]
    assert (line["decision"], line["reason"], line["status"]) == ("block", "connect-not-allowed", 400)


def test_blocked_request_is_audited_once_even_if_it_errors_later(addon, audit_file):
    f = run(addon, make_flow("www.google.com", "/"))
    f.error = tflow.terr()
    addon.error(f)
    assert len(audit_lines(audit_file)) == 1


def test_streamed_body_bytes_are_counted(addon, audit_file):
    f = run(addon, make_flow())
    f.response = tutils.tresp(content=None)
    f.response.stream = True
    addon.responseheaders(f)
    f.response.stream(b"x" * 1000)
    f.response.stream(b"y" * 24)
    addon.response(f)
    assert audit_lines(audit_file)[-1]["bytes"] == 1024


# -- metrics ---------------------------------------------------------------------------------------
def test_metrics_count_decisions_with_bounded_host_labels(addon):
    run(addon, make_flow())
    run(addon, make_flow("random-1.example", "/"))
    run(addon, make_flow("random-2.example", "/"))
    r = addon.metrics.registry
    assert (
        r.get_sample_value(
            "tproxy_requests_total", {"decision": "allow", "host": "storage.googleapis.com", "namespace": "unknown"}
        )
        == 1
    )
    assert r.get_sample_value("tproxy_requests_total", {"decision": "block", "host": "unmatched", "namespace": "unknown"}) == 2
    assert r.get_sample_value("tproxy_decision_seconds_count") == 3


def test_metrics_server_serves_prometheus_text(addon):
    import urllib.request

    addon.tctx.configure(addon, tproxy_metrics_port=_free_port(), tproxy_metrics_host="127.0.0.1")
    body = urllib.request.urlopen(f"http://127.0.0.1:{addon.health.port}/metrics", timeout=5).read().decode()
    assert "tproxy_policy_rules 1.0" in body


def test_ready_only_once_mitmproxy_runs(addon):
    assert addon.readiness()[0] is False
    addon.running()
    ok, why = addon.readiness()
    assert ok and "<builtin>" in why
    addon.done()


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- options and hot reload ------------------------------------------------------------------------
def test_bad_policy_option_is_rejected_and_rolls_back(addon, tmp_path):
    good = write_policy(tmp_path, "rules: [{host: a.example}]\n")
    addon.tctx.configure(addon, tproxy_policy=good)
    bad = write_policy(tmp_path, "rules: [{hots: a.example}]\n", "bad.yaml")
    with pytest.raises(exceptions.OptionsError, match=r"tproxy_policy: .*bad.yaml: rules\[0\]: unknown key"):
        addon.tctx.configure(addon, tproxy_policy=bad)
    assert addon.tctx.options.tproxy_policy == good
    assert addon.policy.source == good
    assert addon.metrics.registry.get_sample_value("tproxy_policy_reloads_total", {"result": "error"}) == 1


def test_missing_policy_file_option_is_rejected(addon, tmp_path):
    with pytest.raises(exceptions.OptionsError, match="tproxy_policy: cannot read policy"):
        addon.tctx.configure(addon, tproxy_policy=str(tmp_path / "none.yaml"))


def test_extra_ca_is_added_to_public_roots(audit_file, tmp_path):
    import certifi
    from mitmproxy.addons.tlsconfig import TlsConfig
    from kubesim.testca import TestCA

    ca = TestCA(tmp_path / "ca")
    a = TproxyAddon(resolver=fake_resolve)
    with taddons.context(TlsConfig(), a) as tctx:
        tctx.configure(a, tproxy_extra_ca=ca.ca_file)
        bundle = open(tctx.options.ssl_verify_upstream_trusted_ca).read()
        assert open(ca.ca_file).read().strip() in bundle
        first_public_root = open(certifi.where()).read().split("-----END CERTIFICATE-----")[0]
        assert first_public_root.strip() in bundle


def test_extra_ca_that_is_not_pem_is_rejected(addon, tmp_path):
    bad = tmp_path / "bad.pem"
    bad.write_text("hello")
    with pytest.raises(exceptions.OptionsError, match="tproxy_extra_ca: .* holds no PEM certificate"):
        addon.tctx.configure(addon, tproxy_extra_ca=str(bad))
    with pytest.raises(exceptions.OptionsError, match="tproxy_extra_ca: cannot read"):
        addon.tctx.configure(addon, tproxy_extra_ca=str(tmp_path / "none.pem"))


def test_metrics_port_out_of_range_is_rejected(addon):
    with pytest.raises(exceptions.OptionsError, match=r"tproxy_metrics_port: 70000 is not a TCP port"):
        addon.tctx.configure(addon, tproxy_metrics_port=70000)


def test_metrics_port_in_use_is_rejected(addon):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(exceptions.OptionsError, match="tproxy_metrics_port: cannot listen on"):
            addon.tctx.configure(addon, tproxy_metrics_port=s.getsockname()[1], tproxy_metrics_host="127.0.0.1")


def test_audit_path_unwritable_is_rejected(addon, tmp_path):
    with pytest.raises(exceptions.OptionsError, match="tproxy_audit: cannot open"):
        addon.tctx.configure(addon, tproxy_audit=str(tmp_path / "no-dir" / "audit.jsonl"))


def test_empty_audit_path_is_rejected(addon):
    with pytest.raises(exceptions.OptionsError, match="tproxy_audit: empty"):
        addon.tctx.configure(addon, tproxy_audit="")


def test_bad_log_level_is_rejected(addon):
    with pytest.raises(exceptions.OptionsError, match="tproxy_log_level: 'loud' is not one of"):
        addon.tctx.configure(addon, tproxy_log_level="loud")


def _bump(path, text):
    """Rewrite a file so that its stat signature surely changes (mtime granularity)."""
    st = os.stat(path)
    with open(path, "w") as f:
        f.write(text)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def test_hot_reload_applies_a_valid_change(addon, tmp_path):
    path = write_policy(tmp_path, "rules: [{host: a.example}]\n")
    addon.tctx.configure(addon, tproxy_policy=path)
    assert run(addon, make_flow("www.google.com", "/")).response.status_code == 418
    _bump(path, "rules: [{host: www.google.com}]\n")
    assert addon.check_policy_file() is True
    assert run(addon, make_flow("www.google.com", "/")).response is None


def test_hot_reload_keeps_last_good_policy_on_error(addon, tmp_path):
    path = write_policy(tmp_path, "rules: [{host: a.example}]\n")
    addon.tctx.configure(addon, tproxy_policy=path)
    _bump(path, "rules: [{host: 'a b'}]\n")
    assert addon.check_policy_file() is False
    assert addon.check_policy_file() is False  # judged once
    assert run(addon, make_flow("a.example", "/")).response is None
    assert addon.metrics.registry.get_sample_value("tproxy_policy_reloads_total", {"result": "error"}) == 1


def _running(addon, body):
    """Run ``body()`` (a coroutine function) on an event loop between the running and done hooks,
    as inside mitmdump."""

    async def main():
        addon.running()
        try:
            return await body()
        finally:
            addon.done()

    return asyncio.run(main())


def test_watch_task_reloads_within_a_second(addon, tmp_path):
    path = write_policy(tmp_path, "rules: [{host: a.example}]\n")
    addon.tctx.configure(addon, tproxy_policy=path)

    async def body():
        assert addon.policy_watch.running  # started by the running hook, on mitmproxy's loop
        _bump(path, "rules: [{host: www.google.com}]\n")
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline and not addon.policy.has_host("www.google.com"):
            await asyncio.sleep(0.05)
        assert addon.policy.has_host("www.google.com")

    _running(addon, body)
    assert not addon.policy_watch.running  # cancelled by the done hook


def test_watch_task_keeps_the_last_good_policy_and_logs_the_rejection(addon, tmp_path, capsys):
    path = write_policy(tmp_path, "rules: [{host: a.example}]\n")
    addon.tctx.configure(addon, tproxy_policy=path)

    async def body():
        _bump(path, "rules: [{host: 'a b'}]\n")
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline and not addon.metrics.registry.get_sample_value(
            "tproxy_policy_reloads_total", {"result": "error"}
        ):
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.6)  # another poll: the same broken version is judged once
        assert addon.policy.source == path and addon.policy.has_host("a.example")

    _running(addon, body)
    assert addon.metrics.registry.get_sample_value("tproxy_policy_reloads_total", {"result": "error"}) == 1
    rejected = [json.loads(x) for x in capsys.readouterr().err.splitlines() if '"policy_rejected"' in x]
    assert len(rejected) == 1 and "not a valid hostname" in rejected[0]["error"]
    assert (rejected[0]["kept"], rejected[0]["kept_rules"]) == (path, 1)


def test_watch_task_survives_an_unexpected_error(addon, tmp_path, monkeypatch):
    path = write_policy(tmp_path, "rules: [{host: a.example}]\n")
    addon.tctx.configure(addon, tproxy_policy=path)
    calls = []

    def failing_once():
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return False

    async def failing_once_async():
        return failing_once()

    monkeypatch.setattr(addon.policy_watch, "check_in_thread", failing_once_async)
    addon.policy_watch.poll_seconds = 0.05

    async def body():
        await asyncio.sleep(0.3)
        assert addon.policy_watch.running and len(calls) >= 2

    _running(addon, body)


def test_watch_task_parses_off_the_event_loop(addon, tmp_path, monkeypatch):
    """A large policy takes a while to parse: the loop keeps running (serving requests) meanwhile,
    and the new policy is put in force by the loop's own thread."""
    import threading
    from proxy import policy_watch

    path = write_policy(tmp_path, "rules: [{host: a.example}]\n")
    addon.tctx.configure(addon, tproxy_policy=path)
    load, seen = policy_watch.ScopedPolicy.load, {}

    def slow_load(p):
        seen["thread"] = threading.get_ident()
        time.sleep(0.6)
        return load(p)

    monkeypatch.setattr(policy_watch.ScopedPolicy, "load", slow_load)
    installed_on = []
    install = addon.policy_watch.install
    addon.policy_watch.install = lambda pol: (installed_on.append(threading.get_ident()), install(pol))

    async def body():
        _bump(path, "rules: [{host: www.google.com}]\n")
        ticks, deadline = 0, time.monotonic() + 3
        while time.monotonic() < deadline and not addon.policy.has_host("www.google.com"):
            await asyncio.sleep(0.01)
            ticks += 1
        assert addon.policy.has_host("www.google.com")
        assert ticks > 30  # the loop ran all along
        assert seen["thread"] != threading.get_ident() and installed_on == [threading.get_ident()]

    _running(addon, body)


def test_a_parse_overtaken_by_configure_is_dropped(addon, tmp_path, monkeypatch):
    from proxy import policy_watch

    watched = write_policy(tmp_path, "rules: [{host: a.example}]\n")
    addon.tctx.configure(addon, tproxy_policy=watched)
    other = write_policy(tmp_path, "rules: [{host: b.a.example}]\n", "other.yaml")
    load = policy_watch.ScopedPolicy.load

    def load_then_reconfigure(p):
        result = load(p)
        addon.policy_watch.watching(other)  # as configure does (the event loop is busy awaiting us)
        return result

    monkeypatch.setattr(policy_watch.ScopedPolicy, "load", load_then_reconfigure)
    _bump(watched, "rules: [{host: www.google.com}]\n")
    assert asyncio.run(addon.policy_watch.check_in_thread()) is False
    assert not addon.policy.has_host("www.google.com")


def test_the_policy_watch_runs_no_thread(addon):
    import threading

    before = threading.active_count()

    async def body():
        await asyncio.sleep(0.1)
        assert threading.active_count() == before
        assert not [t for t in threading.enumerate() if "policy" in t.name]

    _running(addon, body)


def test_addon_refuses_to_run_unless_connections_are_lazy():
    """mitmproxy's default connection_strategy is eager: the addon does not change it (another addon's
    option); configured with every option, as mitmproxy does once a script is loaded, it refuses."""
    from mitmproxy import hooks
    from mitmproxy.addons.proxyserver import Proxyserver

    a = TproxyAddon(resolver=fake_resolve)
    with taddons.context(Proxyserver(), a) as tctx:
        assert tctx.options.connection_strategy == "eager"
        with pytest.raises(
            exceptions.OptionsError,
            match=r"connection_strategy: tproxy needs connection_strategy=lazy"
            r".*not 'eager'; add --set connection_strategy=lazy",
        ):
            tctx.master.addons.invoke_addon_sync(a, hooks.ConfigureHook(set(tctx.options.keys())))
        assert tctx.options.connection_strategy == "eager"  # untouched
        a.done()


def test_mitmdump_exits_when_connections_are_not_lazy(tmp_path):
    """A real mitmdump: the refusal is logged at start, and mitmdump exits instead of running without the addon."""
    import subprocess
    import sys

    mitmdump = os.path.join(os.path.dirname(sys.executable), "mitmdump")
    r = subprocess.run(
        [
            mitmdump,
            "--listen-host",
            "127.0.0.1",
            "-p",
            "0",
            "--set",
            f"confdir={tmp_path}",
            "-s",
            ADDON_SCRIPT,
            "--set",
            f"tproxy_audit={tmp_path / 'audit.jsonl'}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode != 0
    assert "connection_strategy: tproxy needs connection_strategy=lazy" in r.stderr, r.stderr[-2000:]


def test_load_leaves_the_other_addons_options_alone():
    from mitmproxy.addons.dumper import Dumper
    from mitmproxy.addons.proxyserver import Proxyserver
    from mitmproxy.addons.termlog import TermLog

    with taddons.context(Proxyserver(), Dumper(), TermLog()) as tctx:
        tctx.options.update(connection_strategy="lazy")
        a = TproxyAddon(resolver=fake_resolve)
        tctx.master.addons.add(a)
        assert tctx.options.connection_strategy == "lazy"
        assert tctx.options.stream_large_bodies is None  # mitmproxy's defaults, not rewritten
        assert tctx.options.flow_detail == 1 and tctx.options.termlog_verbosity == "info"
        a.done()


def test_switching_to_eager_connections_at_run_time_is_rolled_back():
    from mitmproxy.addons.proxyserver import Proxyserver

    with taddons.context(Proxyserver()) as tctx:
        tctx.options.update(connection_strategy="lazy")
        a = TproxyAddon(resolver=fake_resolve)
        tctx.master.addons.add(a)
        with pytest.raises(exceptions.OptionsError, match="connection_strategy: tproxy needs"):
            tctx.options.update(connection_strategy="eager")
        assert tctx.options.connection_strategy == "lazy"
        a.done()


ADDON_SCRIPT = os.path.join(os.path.dirname(__file__), "..", "proxy", "addon.py")
IMPLEMENTED_HOOKS = {
    "load",
    "configure",
    "running",
    "done",
    "request",
    "http_connect",
    "responseheaders",
    "response",
    "error",
    "server_connect",
    "server_connected",
    "server_connect_error",
    "tcp_start",
    "tls_clienthello",
    "client_disconnected",
}


def test_script_exposes_every_hook_name_on_the_module():
    """proxy/addon.py's hooks are module attributes (see its docstring): every hook mitmproxy knows is
    defined, bound to the one TproxyAddon or None, and nothing is nested under ``addons``."""
    from mitmproxy import hooks

    with taddons.context():
        module = script_module(ADDON_SCRIPT)
        assert module.addons == [] and isinstance(module.addon, TproxyAddon)
        assert set(hooks.all_hooks) >= IMPLEMENTED_HOOKS  # our names are mitmproxy's hook names
        for name in set(hooks.all_hooks) - {"add_log"}:  # (deprecated: its mere presence warns)
            fn = module.__dict__[name]  # present (a KeyError here is an AttributeError per event)
            if name in IMPLEMENTED_HOOKS:
                assert fn.__self__ is module.addon and fn.__func__ is getattr(TproxyAddon, name), name
            else:
                assert fn is None, name


def script_module(path):
    from mitmproxy.addons import script

    return script.load_script(os.path.abspath(path))


def test_script_hooks_run_through_mitmproxys_own_dispatch(tmp_path):
    """Loaded the way mitmdump -s loads it, the module's hooks decide requests: a blocked host gets
    the teapot, an allowed one is approved for its own address."""
    from mitmproxy import hooks as mhooks
    from mitmproxy.proxy.layers import http as lhttp

    module = script_module(ADDON_SCRIPT)
    module.addon.dns.resolver = fake_resolve
    with taddons.context() as tctx:
        tctx.master.addons.add(module)  # into the chain; runs the module's load hook: options appear
        tctx.master.addons.invoke_addon_sync(module, mhooks.ConfigureHook(set(tctx.options.keys())))
        tctx.configure(module.addon, tproxy_audit=str(tmp_path / "audit.jsonl"))
        blocked, allowed = make_flow("www.google.com", "/"), make_flow()

        async def dispatch():
            for f in (blocked, allowed):
                await tctx.master.addons.handle_lifecycle(lhttp.HttpRequestHook(f))

        asyncio.run(dispatch())
        assert blocked.response.status_code == 418
        assert allowed.response is None and allowed.request.host == "storage.googleapis.com"
        assert server_connect(module.addon, allowed).address == ("203.0.113.20", 443)
        module.addon.done()


# -- audit line assembly and batching ----------------------------------------------------------------
AUDIT_KEYS = [
    "ts",
    "event",
    "client_ip",
    "pod_namespace",
    "pod_name",
    "pod_service_account",
    "node",
    "proxy_mode",
    "policy_mode",
    "scope",
    "method",
    "scheme",
    "host",
    "port",
    "path",
    "sni",
    "decision",
    "reason",
    "rule",
    "rule_index",
    "upstream",
    "status",
    "bytes",
]


def test_audit_line_has_every_field_in_order(addon, audit_file):
    f = run(addon, make_flow())
    f.response = tutils.tresp(content=b"abc")
    addon.response(f)
    run(addon, make_flow("www.google.com", "/x"))
    allowed, blocked = audit_lines(audit_file)
    assert list(allowed) == AUDIT_KEYS and list(blocked) == AUDIT_KEYS
    assert (
        allowed["event"],
        allowed["proxy_mode"],
        allowed["policy_mode"],
        allowed["scope"],
        allowed["port"],
        allowed["rule_index"],
    ) == ("decision", "transparent", "enforce", "default", 443, 0)
    assert (blocked["rule"], blocked["rule_index"], blocked["upstream"], blocked["bytes"]) == (None, None, None, len(BLOCK_BODY))
    assert allowed["ts"].endswith("Z") and len(allowed["ts"]) == len("2026-11-27T06:05:28.123Z")


def test_audit_error_field_is_last_and_escaped(addon, audit_file):
    f = run(addon, make_flow())
    f.error = tflow.terr('upstream said "no"\nand \\ left')
    addon.error(f)
    line = audit_lines(audit_file)[-1]
    assert list(line) == AUDIT_KEYS + ["error"] and line["error"] == 'upstream said "no"\nand \\ left'


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    path=st.text(min_size=0, max_size=40),
    sni=st.one_of(st.none(), st.text(max_size=20)),
    error=st.one_of(st.none(), st.text(min_size=1, max_size=30)),
    method=st.sampled_from(["GET", "POST", "PÜT"]),
)
def test_audit_line_is_valid_json_for_any_client_text(addon, audit_file, path, sni, error, method):
    """Path, SNI, method and error are chosen by clients: whatever they hold, the assembled line
    parses as one JSON object carrying them unchanged (quotes, control and non-ASCII characters)."""
    f = make_flow("www.google.com", "/")
    f.request.path = "/" + path
    f.request.method = method
    f.client_conn.sni = sni
    v = Verdict("block", "no-matching-rule", host="www.google.com", port=443)
    before = len(audit_file.read_text().splitlines()) if audit_file.exists() else 0
    addon._audit(f, v, status=418, nbytes=None, error=error)
    lines = audit_file.read_text().splitlines()
    assert len(lines) == before + 1
    line = json.loads(lines[-1])
    assert (line["path"], line["sni"], line["method"], line.get("error")) == ("/" + path, sni, method, error)
    assert lines[-1].isascii()


def test_client_fields_are_looked_up_once_per_connection(addon, tmp_path, audit_file):
    ident = tmp_path / "identity.json"
    ident.write_text(json.dumps({"version": 1, "node": "n1", "pods": {"10.0.0.5": {"namespace": "ns", "name": "p1"}}}))
    addon.tctx.configure(addon, tproxy_identity=str(ident))
    first = make_flow("www.google.com", "/1")
    run(addon, first)
    calls = []
    lookup = addon.identity.lookup
    addon.identity.lookup = lambda ip: calls.append(ip) or lookup(ip)
    second = make_flow("www.google.com", "/2")
    second.client_conn = first.client_conn  # keep-alive: same connection
    run(addon, second)
    assert calls == []  # known pod: no second lookup on the same connection
    assert [line["pod_name"] for line in audit_lines(audit_file)] == ["p1", "p1"]
    addon.client_disconnected(first.client_conn)
    assert first.client_conn.id not in addon.clients.known


def test_unknown_client_is_looked_up_again_until_podwatch_knows_it(addon, tmp_path, audit_file):
    """The pod's first connection may come before podwatch wrote its identity: an unknown client
    is not cached as unknown for the rest of its connection."""
    ident = tmp_path / "identity.json"
    ident.write_text(json.dumps({"version": 1, "node": "n1", "pods": {}}))
    addon.tctx.configure(addon, tproxy_identity=str(ident))
    first = make_flow("www.google.com", "/1")
    run(addon, first)
    ident.write_text(json.dumps({"version": 1, "node": "n1", "pods": {"10.0.0.5": {"namespace": "ns", "name": "late"}}}))
    addon.identity.refresh(force=True)
    second = make_flow("www.google.com", "/2")
    second.client_conn = first.client_conn
    run(addon, second)
    assert [line["pod_name"] for line in audit_lines(audit_file)] == ["", "late"]


def test_audit_lines_are_batched_on_the_event_loop_and_flushed(tmp_path):
    target = tmp_path / "audit.jsonl"
    log = AuditLog(str(target), flush_seconds=0.2)

    async def main():
        log.attach(asyncio.get_running_loop())
        for i in range(3):
            log.write({"n": i})
        early = target.read_text()
        await asyncio.sleep(0.4)
        return early

    early = asyncio.run(main())
    assert early == ""  # nothing written per line while batching ...
    assert [json.loads(x)["n"] for x in target.read_text().splitlines()] == [0, 1, 2]  # ... all of it once flushed
    log.close()


def test_audit_batch_is_written_at_once_when_full_and_on_close(tmp_path):
    target = tmp_path / "audit.jsonl"
    log = AuditLog(str(target), flush_seconds=60)

    async def main():
        log.attach(asyncio.get_running_loop())
        for i in range(log.MAX_PENDING):
            log.write({"n": i})
        full = len(target.read_text().splitlines())
        log.write({"n": "tail"})
        return full

    assert asyncio.run(main()) == log.MAX_PENDING  # the batch that filled up went out without waiting
    assert len(target.read_text().splitlines()) == log.MAX_PENDING
    log.close()  # done hook / shutdown: nothing is lost
    assert json.loads(target.read_text().splitlines()[-1]) == {"n": "tail"}


def test_audit_lines_from_other_threads_are_written_at_once(tmp_path):
    import threading

    target = tmp_path / "audit.jsonl"
    log = AuditLog(str(target), flush_seconds=60)
    seen = []

    async def main():
        log.attach(asyncio.get_running_loop())
        log.write({"n": "loop"})
        t = threading.Thread(target=lambda: (log.write({"n": "thread"}), seen.append(target.read_text())))
        t.start()
        t.join()

    asyncio.run(main())
    assert [json.loads(x)["n"] for x in seen[0].splitlines()] == ["loop", "thread"]  # in order, nothing held back
    log.close()


def test_audit_write_failure_is_logged_not_raised(tmp_path, capsys):
    log = AuditLog(str(tmp_path / "audit.jsonl"))
    log._file.close()  # e.g. the volume went away
    log.write({"n": 1})  # must not take the request (or the proxy) down
    assert "audit_write_failed" in capsys.readouterr().err


@pytest.mark.parametrize(
    "headers, streamed",
    [
        ({"Content-Length": "5"}, False),  # known small size: mitmproxy buffers it
        ({"Transfer-Encoding": "chunked"}, True),  # unknown size: streamed (and counted) from byte 1
        ({}, True),  # close-delimited
    ],
)
def test_bodies_of_unknown_size_are_streamed_and_counted(addon, audit_file, headers, streamed):
    f = run(addon, make_flow())
    f.response = tutils.tresp(content=b"")
    f.response.headers.clear()
    f.response.headers.update(headers)
    addon.responseheaders(f)
    assert callable(f.response.stream) == streamed
    if streamed:
        for chunk in (b"abc", b"de", b""):
            assert f.response.stream(chunk) == chunk
    else:
        f.response.content = b"12345"
    addon.response(f)
    assert audit_lines(audit_file)[-1]["bytes"] == 5


@pytest.mark.parametrize("mode", ["enforce", "report"])
def test_two_host_headers_are_refused_in_every_mode(addon, tmp_path, mode):
    """RFC 9112 3.2: more than one Host field line is an invalid request. Neither value is trusted,
    and report mode blocks it too (it is malformed, not merely disallowed)."""
    addon.tctx.configure(addon, tproxy_policy=write_policy(tmp_path, f"mode: {mode}\nrules: [{{host: www.google.com}}]\n"))
    f = make_flow("www.google.com", "/", scheme="http")
    f.request.headers.add("Host", "evil.example")
    run(addon, f)
    assert f.response.status_code == 418
    assert f.response.headers["X-Tproxy-Reason"] == "multiple-host-headers"
    assert server_connect(addon, f, "www.google.com", 80).error


def test_allowed_request_keeps_a_single_host_header(addon, tmp_path):
    addon.tctx.configure(addon, tproxy_policy=write_policy(tmp_path, "rules: [{host: www.google.com}]\n"))
    f = run(addon, make_flow("WWW.Google.com.", "/", scheme="http"))
    assert f.response is None
    assert f.request.headers.get_all("Host") == ["www.google.com"]  # normalised, written once


def test_loading_the_script_logs_no_deprecation_warning(caplog):
    """mitmproxy warns about the deprecated add_log event whenever an addon merely has that attribute."""
    import logging

    import mitmproxy.log  # noqa: F401 - registers add_log in all_hooks, as in a running mitmdump

    module = script_module(ADDON_SCRIPT)
    assert "add_log" not in module.__dict__
    with caplog.at_level(logging.DEBUG), taddons.context() as tctx:
        tctx.master.addons.add(module)
    assert not [r for r in caplog.records if "deprecated" in r.getMessage()]


def test_identity_change_reaches_a_live_connection(addon, tmp_path, audit_file):
    """Namespace rules decide on the pod's identity: when podwatch rewrites the identity file (an IP
    now belongs to a pod of another namespace), a keep-alive connection follows it."""
    ident = tmp_path / "identity.json"
    ident.write_text(json.dumps({"version": 1, "node": "n", "pods": {"10.0.0.5": {"namespace": "team-a", "name": "a"}}}))
    addon.tctx.configure(
        addon,
        tproxy_identity=str(ident),
        tproxy_policy=write_policy(tmp_path, "rules: [{host: a.example, namespaces: [team-a]}]\n"),
    )
    first = run(addon, make_flow("a.example", "/"))
    assert first.response is None
    _bump(ident, json.dumps({"version": 1, "node": "n2", "pods": {"10.0.0.5": {"namespace": "team-b", "name": "b"}}}))
    addon.identity.refresh(force=True)
    second = make_flow("a.example", "/")
    second.client_conn = first.client_conn  # same keep-alive connection
    run(addon, second)
    assert second.response is not None and second.response.status_code == 418
    line = audit_lines(audit_file)[-1]
    assert (line["pod_namespace"], line["pod_name"], line["node"]) == ("team-b", "b", "n2")


def test_a_client_gone_before_its_decision_leaves_nothing_behind(addon):
    """The client may disconnect while its request waits for DNS; client_disconnected has then run
    already, so nothing may be (re)recorded for it: no approval (it could never be used) and no
    cached client fields (they would never be dropped)."""
    from mitmproxy.connection import ConnectionState

    f = make_flow()
    f.client_conn.state = ConnectionState.CLOSED
    addon.client_disconnected(f.client_conn)
    run(addon, f)
    assert f.response is None  # still decided (and audited) like any request
    assert f.client_conn.id not in addon.pinning.approved and f.client_conn.id not in addon.clients.known


def test_audit_flush_option_sets_the_batch_window_and_zero_writes_every_line(addon, audit_file):
    addon.tctx.configure(addon, tproxy_audit_flush_ms=0)
    assert addon.audit.flush_seconds == 0

    async def main():
        addon.audit.attach(asyncio.get_running_loop())  # as in a running mitmproxy
        addon.audit.write({"n": 1})
        return audit_lines(audit_file)

    assert asyncio.run(main()) == [{"n": 1}]  # written at once although attached
    addon.tctx.configure(addon, tproxy_audit_flush_ms=250)
    assert addon.audit.flush_seconds == 0.25
    addon.tctx.configure(addon, tproxy_audit=str(audit_file) + ".2")  # a new target keeps the window
    assert addon.audit.flush_seconds == 0.25


@pytest.mark.parametrize("value", [-1, 10_001])
def test_audit_flush_option_out_of_range_is_rejected(addon, value):
    with pytest.raises(exceptions.OptionsError, match="tproxy_audit_flush_ms: .* not between 0 and 10000"):
        addon.tctx.configure(addon, tproxy_audit_flush_ms=value)
    assert addon.audit.flush_seconds == AuditLog.FLUSH_SECONDS  # the previous value stays
