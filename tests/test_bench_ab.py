"""bench/ab.py: the egress benchmark's client for HTTPS with a new connection per request, run for real.

What the benchmark relies on: a new connection per request, 2xx and non-2xx counted apart, no
"Length" failures through TLS 1.3 (the ``-l`` trap in the module's docstring), and a clear error
when ab prints no summary.
"""

import http.server
import ssl
import threading

import pytest

from bench import ab
from kubesim.testca import TestCA


class _Counting(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: dict = {}
    lock = threading.Lock()

    def setup(self):
        super().setup()
        with self.lock:
            self.seen["connections"] = self.seen.get("connections", 0) + 1

    def do_GET(self):
        status = 418 if self.path.startswith("/teapot") else 200
        body = b"no\n" if status == 418 else b"ok\n"
        with self.lock:
            self.seen["requests"] = self.seen.get("requests", 0) + 1
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class _Server(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        pass  # ab stops at its time limit with requests in flight: their broken pipes are expected


def _serve(tls_dir=None):
    srv = _Server(("127.0.0.1", 0), _Counting)
    srv.daemon_threads = True
    scheme = "http"
    if tls_dir is not None:
        cert, key = TestCA(str(tls_dir)).issue(["127.0.0.1"])
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.load_cert_chain(cert, key)
        srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
        scheme = "https"
    _Counting.seen = {}
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, f"{scheme}://127.0.0.1:{srv.server_address[1]}"


@pytest.fixture
def server():
    srv, url = _serve()
    yield url
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def tls_server(tmp_path):
    srv, url = _serve(tmp_path / "ca")
    yield url
    srv.shutdown()
    srv.server_close()


def test_a_new_connection_per_request_and_non_2xx_counted_apart(server):
    client = ab.Ab(None, connections=4)
    ok = client.run(server + "/", duration=1)
    teapot = client.run(server + "/teapot", duration=1)
    assert ok["requests"] > 0 and ok["statuses"] == {"2xx": ok["requests"]} and not ok["errors"], ok
    assert teapot["requests"] > 0 and teapot["statuses"] == {"non-2xx": teapot["requests"]}, teapot
    # one request per connection (the server may have seen a few more than ab completed: its time limit)
    seen = _Counting.seen
    assert seen["connections"] >= seen["requests"] >= ok["requests"] + teapot["requests"], seen
    assert ok["rps"] > 0 and ok["latency_p50_ms"] is not None


def test_tls_13_new_connections_have_no_length_failures(tls_server):
    r = ab.Ab(None, connections=4).run(tls_server + "/", duration=1)
    assert r["requests"] > 0 and r["statuses"] == {"2xx": r["requests"]} and not r["errors"], r
    seen = _Counting.seen
    assert seen["connections"] >= seen["requests"] >= r["requests"], seen


def test_an_unreachable_server_fails_clearly():
    with pytest.raises(RuntimeError, match=r"ab failed \(\d+\):.*(onnection refused|apr_socket_connect)"):
        ab.Ab(None, connections=1).run("http://127.0.0.1:9/", duration=1)


def test_parse_without_a_summary_says_so():
    with pytest.raises(ValueError, match=r"ab printed no summary \(complete, failed, elapsed missing\)"):
        ab.parse("Benchmarking 127.0.0.1 (be patient)...apr_pollset_poll: The timeout specified has expired\n")


def test_parse_counts_failures_by_kind():
    out = """Time taken for tests:   3.010 seconds
Complete requests:      500
Failed requests:        7
   (Connect: 0, Receive: 5, Length: 0, Exceptions: 2)
Non-2xx responses:      20
  50%     92
  99%    125
"""
    r = ab.parse(out)
    assert r["statuses"] == {"2xx": 480, "non-2xx": 20} and r["errors"] == {"receive": 5, "exceptions": 2}
    assert r["latency_p50_ms"] == 92 and r["latency_p99_ms"] == 125 and round(r["rps"]) == 166


def test_parse_caps_non_2xx_at_the_complete_count():
    # ab counted one more non-2xx response than complete requests when its time limit struck (CI, 2026-12-05)
    out = "Time taken for tests:   1.000 seconds\nComplete requests:      2832\nFailed requests:        0\nNon-2xx responses:      2833\n"
    r = ab.parse(out)
    assert r["statuses"] == {"non-2xx": 2832} and r["requests"] == 2832, r
