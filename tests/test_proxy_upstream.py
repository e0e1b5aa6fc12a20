"""The simulated internet (kubesim.upstream + kubesim.testca) on loopback: what other tests rely on."""

import json
import ssl
import http.client

import pytest

from kubesim.testca import TestCA
from kubesim.upstream import HELLO_BODY, HELLO_PATH, Upstream


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    return TestCA(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def upstream(ca):
    # port 0 disables a listener, so pick free ports
    up = Upstream(["127.0.0.1"], http_port=_free_port(), https_port=_free_port(), cert_dir=ca.directory, metadata=True).start()
    yield up
    up.stop()


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ports(up):
    http_port = up.servers[0].server_port
    https_port = up.servers[1].server_port
    return http_port, https_port


def _https(up, ca, sni, path, host=None):
    ctx = ssl.create_default_context(cafile=ca.ca_file)
    _, port = _ports(up)
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=5)
    # connect by IP but present `sni` as server_hostname
    conn.sock = ctx.wrap_socket(__import__("socket").create_connection(("127.0.0.1", port), 5), server_hostname=sni)
    conn.request("GET", path, headers={"Host": host or sni})
    r = conn.getresponse()
    return r.status, r.read()


def test_ca_is_reused_from_its_directory(ca):
    again = TestCA(ca.directory)
    assert open(again.ca_file, "rb").read() == open(ca.ca_file, "rb").read()


def test_issue_is_idempotent_and_rejects_empty(ca):
    assert ca.issue(["a.example"]) == ca.issue(["a.example"])
    with pytest.raises(ValueError, match="at least one hostname"):
        ca.issue([])


def test_https_vhost_by_sni_verifies_against_test_ca(upstream, ca):
    status, body = _https(upstream, ca, "storage.googleapis.com", HELLO_PATH)
    assert (status, body) == (200, HELLO_BODY)


def test_echo_reports_sni_host_and_local_address(upstream, ca):
    status, body = _https(upstream, ca, "www.google.com", "/echo", host="other.example")
    info = json.loads(body)
    assert status == 200
    assert info["sni"] == "www.google.com"
    assert info["host"] == "other.example"
    assert info["local_address"] == "127.0.0.1"
    assert info["scheme"] == "https"


def test_plain_http_google_and_unknown_path(upstream):
    port, _ = _ports(upstream)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", "/", headers={"Host": "www.google.com"})
    r = conn.getresponse()
    assert r.status == 200 and b"google" in r.read()
    conn.request("GET", "/solutions-public-assets-nope", headers={"Host": "storage.googleapis.com"})
    r = conn.getresponse()  # same keep-alive connection
    assert r.status == 404
    r.read()


def test_bytes_streams_exact_length(upstream):
    port, _ = _ports(upstream)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", "/bytes/300000")
    r = conn.getresponse()
    assert r.status == 200 and len(r.read()) == 300000


def test_metadata_requires_flavor_header(upstream):
    port, _ = _ports(upstream)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", "/computeMetadata/v1/instance/service-accounts/default/token", headers={"Host": "169.254.169.254"})
    r = conn.getresponse()
    assert r.status == 403
    r.read()
    conn.request(
        "GET",
        "/computeMetadata/v1/instance/service-accounts/default/token",
        headers={"Host": "metadata.google.internal", "Metadata-Flavor": "Google"},
    )
    r = conn.getresponse()
    assert r.status == 200 and "access_token" in json.loads(r.read())


def test_stats_count_connections(upstream):
    port, _ = _ports(upstream)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", "/.upstream/stats")
    stats = json.loads(conn.getresponse().read())
    assert stats[f"127.0.0.1:{port}"]["connections"] >= 1


def test_https_without_cert_dir_is_a_clear_error():
    with pytest.raises(ValueError, match="needs --cert-dir"):
        Upstream(["127.0.0.1"], http_port=0, https_port=443)


def test_ipv6_bind_and_no_sni_default_certificate_for_the_address(ca):
    import socket

    with socket.socket(socket.AF_INET6) as s:
        s.bind(("::1", 0))
        port = s.getsockname()[1]
    up = Upstream(["::1"], http_port=0, https_port=port, cert_dir=ca.directory).start()
    try:
        ctx = ssl.create_default_context(cafile=ca.ca_file)
        conn = http.client.HTTPSConnection("::1", port, context=ctx, timeout=5)  # IP: no SNI, IP SAN verified
        conn.request("GET", "/echo")
        info = json.loads(conn.getresponse().read())
        assert info["local_address"] == "::1" and info["sni"] is None
    finally:
        up.stop()


def _raw(port, raw: bytes) -> bytes:
    import socket

    with socket.create_connection(("127.0.0.1", port), 5) as s:
        s.sendall(raw)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data


def test_absolute_form_target_picks_the_virtual_host_over_the_host_header(upstream):
    # as nginx does (RFC 9112 3.2.2): what a proxy forwarding the target verbatim would expose
    port, _ = _ports(upstream)
    data = _raw(port, b"GET http://www.google.com/ HTTP/1.1\r\nHost: storage.googleapis.com\r\nConnection: close\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 200") and b"simulated www.google.com" in data
    data = _raw(
        port,
        b"GET http://storage.googleapis.com/solutions-public-assets/hello.txt?x HTTP/1.1\r\n"
        b"Host: www.google.com\r\nConnection: close\r\n\r\n",
    )
    assert data.endswith(HELLO_BODY)


def test_record_mode_keeps_raw_request_lines_host_and_sni(ca):
    http_port, https_port = _free_port(), _free_port()
    up = Upstream(["127.0.0.1"], http_port=http_port, https_port=https_port, cert_dir=ca.directory, record=True).start()
    try:
        _raw(http_port, b"OPTIONS * HTTP/1.1\r\nHost: a.example\r\nX-Test-Id: t1\r\nConnection: close\r\n\r\n")
        _raw(http_port, b"GET https://b.example/x?y HTTP/1.1\r\nHost: a.example\r\nX-Test-Id: t2\r\nConnection: close\r\n\r\n")
        _https(up, ca, "www.google.com", "/echo")
        conn = http.client.HTTPConnection("127.0.0.1", http_port, timeout=5)
        conn.request("GET", "/.upstream/requests")
        seen = json.loads(conn.getresponse().read())
        assert seen[0] == {
            "listener": f"127.0.0.1:{http_port}",
            "request_line": "OPTIONS * HTTP/1.1",
            "host": "a.example",
            "sni": None,
            "test_id": "t1",
        }
        assert (seen[1]["request_line"], seen[1]["test_id"]) == ("GET https://b.example/x?y HTTP/1.1", "t2")
        assert (seen[2]["request_line"], seen[2]["sni"], seen[2]["listener"]) == (
            "GET /echo HTTP/1.1",
            "www.google.com",
            f"127.0.0.1:{https_port}",
        )
    finally:
        up.stop()


def test_idle_timeout_closes_an_idle_keep_alive_connection_and_a_bad_value_is_refused():
    """``--idle-timeout``: the benchmarks holding idle connections raise it; a value <= 0 is an error."""
    import socket

    for bad in (0, -1):
        with pytest.raises(ValueError, match=f"idle timeout {bad}: must be > 0 seconds"):
            Upstream(["127.0.0.1"], http_port=_free_port(), https_port=0, idle_timeout=bad)
    up = Upstream(["127.0.0.1"], http_port=_free_port(), https_port=0, idle_timeout=0.3).start()
    try:
        port = up.servers[0].server_port
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(b"GET /.upstream/stats HTTP/1.1\r\nHost: x\r\n\r\n")
            data = b""
            while b"\r\n\r\n" not in data:
                data += s.recv(65536)
            assert data.startswith(b"HTTP/1.1 200")
            # then idle: the server closes it (EOF), well before the client's own 30 s timeout
            rest = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                rest += chunk
    finally:
        up.stop()
