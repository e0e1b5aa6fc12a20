"""A tiny in-process fake of the Kubernetes list/watch protocol, for unit tests of controllers.

Why: the informer's hard cases (410 Gone as an ``ERROR`` event or as an HTTP status, a stream cut in
the middle of a line, a server that closes the watch) are awkward to provoke on a real API server on
demand. This fake speaks plain HTTP/1.1 on 127.0.0.1 with chunked watch streams (one JSON event per
line), keeps a resourceVersion-ordered event log per collection path, and takes *faults* to inject
into the next watch requests. End-to-end tests use kubesim instead.

    srv = FakeApiServer().start()
    srv.upsert("/api/v1/pods", {"metadata": {"name": "a", "namespace": "ns"}})
    srv.fault("/api/v1/pods", "error410")      # next watch gets {"type": "ERROR", ... code 410}
    client = Client.from_url(srv.url)
"""

from __future__ import annotations

import copy
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

__all__ = ["FakeApiServer", "status_body", "FAULTS"]

#: watch faults: "http410" (410 status reply), "error410" (ERROR event with a 410 Status, then end),
#: "cut" (send half a line, then drop the connection), "end_mid_line" (half a line, then a clean end),
#: "close" (end the stream cleanly at once), "http500" (a 500 status reply)
FAULTS = ("http410", "error410", "cut", "end_mid_line", "close", "http500")


def status_body(code: int, reason: str, message: str, **details) -> dict:
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details:
        body["details"] = details
    return body


class _Collection:
    def __init__(self):
        self.objects: dict[str, dict] = {}
        self.events: list[tuple[int, str, dict]] = []
        self.faults: list[str] = []


class FakeApiServer:
    """See module docstring. ``requests`` records ``(method, path, query_dict)`` of every request."""

    def __init__(self):
        self._lock = threading.Condition()
        self._rv = 100
        self._collections: dict[str, _Collection] = {}
        self._routes: dict[tuple[str, str], list[tuple[int, object]]] = {}
        self.requests: list[tuple[str, str, dict]] = []
        #: headers and raw body of every request, parallel to ``requests``
        self.request_details: list[tuple[dict, bytes]] = []
        #: watches from a resourceVersion below this get 410 Gone
        self.compacted_rv = 0
        #: hold a quiet watch open at most this long (seconds) unless timeoutSeconds is shorter
        self.max_watch_seconds = 30.0
        self._stopping = False
        self._httpd: ThreadingHTTPServer | None = None
        self._conns: set = set()

    # -- state ------------------------------------------------------------------------------------
    def _coll(self, path: str) -> _Collection:
        return self._collections.setdefault(path.rstrip("/"), _Collection())

    def add_collection(self, path: str) -> None:
        """Serve ``path`` as an (empty) collection; unknown paths answer 404 like an unknown resource."""
        with self._lock:
            self._coll(path)

    @property
    def resource_version(self) -> int:
        return self._rv

    def upsert(self, path: str, obj: dict) -> dict:
        """Create or update ``obj`` in collection ``path``; emits ADDED/MODIFIED; returns the stored copy."""
        with self._lock:
            coll = self._coll(path)
            self._rv += 1
            obj = copy.deepcopy(obj)
            obj.setdefault("metadata", {})["resourceVersion"] = str(self._rv)
            key = self._key(obj)
            etype = "MODIFIED" if key in coll.objects else "ADDED"
            coll.objects[key] = obj
            coll.events.append((self._rv, etype, copy.deepcopy(obj)))
            self._lock.notify_all()
            return copy.deepcopy(obj)

    def remove(self, path: str, namespace: str | None, name: str) -> None:
        with self._lock:
            coll = self._coll(path)
            key = f"{namespace}/{name}" if namespace else name
            obj = coll.objects.pop(key)
            self._rv += 1
            obj["metadata"]["resourceVersion"] = str(self._rv)
            coll.events.append((self._rv, "DELETED", obj))
            self._lock.notify_all()

    def bookmark(self, path: str) -> None:
        with self._lock:
            self._rv += 1
            self._coll(path).events.append((self._rv, "BOOKMARK", {"metadata": {"resourceVersion": str(self._rv)}}))
            self._lock.notify_all()

    def compact(self) -> None:
        """Forget history: every watch from an older resourceVersion now gets 410."""
        with self._lock:
            self.compacted_rv = self._rv
            for coll in self._collections.values():
                coll.events = []

    def fault(self, path: str, *faults: str) -> None:
        for f in faults:
            if f not in FAULTS:
                raise ValueError(f"unknown fault {f!r}; one of {FAULTS}")
        with self._lock:
            self._coll(path).faults.extend(faults)
            self._lock.notify_all()

    def route(self, method: str, path: str, code: int, body) -> None:
        """Answer ``method path`` with ``code`` and ``body`` (dict -> JSON, str/bytes raw). Several
        calls queue answers; the last one repeats."""
        with self._lock:
            self._routes.setdefault((method.upper(), path), []).append((code, body))

    def watch_count(self, path: str) -> int:
        return sum(1 for m, p, q in list(self.requests) if p == path and q.get("watch") in ("true", "1"))

    @staticmethod
    def _key(obj: dict) -> str:
        md = obj.get("metadata") or {}
        return f"{md['namespace']}/{md['name']}" if md.get("namespace") else md["name"]

    # -- server -------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        assert self._httpd is not None, "start() the server first"
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> "FakeApiServer":
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def setup(self):
                super().setup()
                fake._conns.add(self.connection)

            def finish(self):
                fake._conns.discard(self.connection)
                try:
                    super().finish()
                except OSError:
                    pass

            def _reply(self, code: int, body) -> None:
                if isinstance(body, (dict, list)):
                    data, ctype = json.dumps(body).encode(), "application/json"
                else:
                    data = body.encode() if isinstance(body, str) else bytes(body or b"")
                    ctype = "text/plain"
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self):
                u = urlsplit(self.path)
                query = dict(parse_qsl(u.query, keep_blank_values=True))
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with fake._lock:
                    fake.request_details.append((dict(self.headers.items()), body))
                    fake.requests.append((self.command, u.path, query))
                with fake._lock:
                    answers = fake._routes.get((self.command, u.path))
                    answer = (answers.pop(0) if len(answers) > 1 else answers[0]) if answers else None
                if answer is not None:
                    return self._reply(*answer)
                if self.command != "GET" or u.path.rstrip("/") not in fake._collections:
                    return self._reply(404, status_body(404, "NotFound", f"{u.path} not found"))
                if query.get("watch") in ("true", "1"):
                    return self._watch(u.path.rstrip("/"), query)
                with fake._lock:
                    coll = fake._coll(u.path)
                    items = [copy.deepcopy(o) for o in coll.objects.values()]
                    rv = str(fake._rv)
                return self._reply(200, {"kind": "List", "apiVersion": "v1", "metadata": {"resourceVersion": rv}, "items": items})

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

            def _chunk(self, data: bytes) -> None:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()

            def _end(self) -> None:
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()

            def _watch(self, path: str, query: dict) -> None:
                since = int(query.get("resourceVersion") or 0)
                with fake._lock:
                    coll = fake._coll(path)
                    fault = coll.faults.pop(0) if coll.faults and coll.faults[0].startswith("http") else None
                    gone = since and since < fake.compacted_rv
                if fault == "http500":
                    return self._reply(500, status_body(500, "InternalError", "injected failure"))
                if fault == "http410" or (gone and not coll.faults):
                    return self._reply(410, status_body(410, "Gone", f"too old resource version: {since}"))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                limit = min(float(query.get("timeoutSeconds") or fake.max_watch_seconds), fake.max_watch_seconds)
                deadline = time.monotonic() + limit
                sent_rv = since
                while True:
                    with fake._lock:
                        if fake._stopping:
                            return self._end()
                        # http* faults wait for the next watch request
                        fault = coll.faults.pop(0) if coll.faults and not coll.faults[0].startswith("http") else None
                        pending = [e for e in coll.events if e[0] > sent_rv] if not fault else []
                        if not fault and not pending:
                            remaining = deadline - time.monotonic()
                            if remaining <= 0:
                                return self._end()
                            fake._lock.wait(min(remaining, 0.5))
                            continue
                    if fault == "error410":
                        line = (
                            json.dumps(
                                {"type": "ERROR", "object": status_body(410, "Expired", f"too old resource version: {since}")}
                            ).encode()
                            + b"\n"
                        )
                        self._chunk(line)
                        return self._end()
                    if fault in ("cut", "end_mid_line"):
                        self._chunk(b'{"type": "MODIFIED", "object": {"metadata": {"na')
                        if fault == "end_mid_line":
                            return self._end()
                        self.close_connection = True
                        try:
                            self.connection.shutdown(socket.SHUT_RDWR)
                        except OSError:
                            pass
                        return
                    if fault == "close":
                        return self._end()
                    for rv, etype, obj in pending:
                        self._chunk(json.dumps({"type": etype, "object": obj}).encode() + b"\n")
                        sent_rv = rv

        class Server(ThreadingHTTPServer):
            daemon_threads = True

        self._httpd = Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        return self

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            for conn in list(self._conns):
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
