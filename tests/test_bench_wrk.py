"""bench/wrk.py: the egress benchmark's C client, run for real against a loopback server.

The benchmark's figures rest on two things wrk's own summary does not give: exact per-status counts
(the ``response`` hook of every thread, merged in ``done``) and a new connection per request
(``Connection: close``). Both are checked here against a server that counts what it saw.
"""

import http.server
import threading

import pytest

from bench import wrk


class _Counting(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: dict = {}
    lock = threading.Lock()

    def do_GET(self):
        status = 418 if self.path.startswith("/teapot") else 200
        body = b"no\n" if status == 418 else b"ok\n"
        with self.lock:
            self.seen["requests"] = self.seen.get("requests", 0) + 1
            self.seen.setdefault("ports", set()).add(self.client_address[1])
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Counting)
    srv.daemon_threads = True
    _Counting.seen = {}
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def test_counts_every_status_exactly_and_keeps_connections(server):
    client = wrk.Wrk(None, connections=4, threads=2)
    try:
        ok = client.run(server + "/", duration=1)
        teapot = client.run(server + "/teapot", duration=1)
    finally:
        client.close()
    assert ok["requests"] > 0 and ok["statuses"] == {"200": ok["requests"]}, ok
    assert teapot["requests"] > 0 and teapot["statuses"] == {"418": teapot["requests"]}, teapot
    assert ok["rps"] > 0 and not ok["errors"]
    # keep-alive: a handful of client ports (one per connection, twice over) for every request
    assert len(_Counting.seen["ports"]) <= 8 < _Counting.seen["requests"]


def test_new_connection_per_request(server):
    client = wrk.Wrk(None, connections=2, threads=1)
    try:
        r = client.run(server + "/", duration=1, new_connection=True)
    finally:
        client.close()
    assert r["statuses"] == {"200": r["requests"]} and r["requests"] > 2
    # one client port per request (wrk may have one more in flight when the run ends)
    assert len(_Counting.seen["ports"]) >= r["requests"]


def test_a_run_without_a_result_line_is_an_error_not_zero():
    with pytest.raises(ValueError, match="no result line"):
        wrk.parse("Running 1s test @ http://x/\nsegfault\n")


def test_unreachable_server_fails_the_run_with_wrks_reason():
    client = wrk.Wrk(None, connections=2, threads=1)
    try:
        with pytest.raises(RuntimeError, match="unable to connect"):
            client.run("http://127.0.0.1:9/", duration=1)  # discard port: nothing listens
    finally:
        client.close()
