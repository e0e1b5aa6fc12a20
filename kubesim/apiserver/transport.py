"""The API server's transport: the HTTP(S) server and handler, reading request bodies (JSON, YAML,
protobuf) and writing responses in the negotiated content type.

``ThreadingHTTPServer`` (one daemon thread per connection, HTTP/1.1 keep-alive, TLS handshake in the
connection's own thread); every request goes to ``server.api.dispatch`` (:mod:`.routing`).
"""

from __future__ import annotations

import http.server
import json
import select
import ssl

import structlog

from . import errors, protobuf
from .errors import APIError

log = structlog.get_logger("kubesim.apiserver")

MAX_BODY = 3 * 1024 * 1024


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server_version = "kubesim"
    sys_version = ""

    def setup(self):
        with self.server.conn_lock:
            self.server.connections.add(self)
        ctx = self.server.ssl_context
        if ctx is not None:
            self.request.settimeout(30)
            try:
                self.request = ctx.wrap_socket(self.request, server_side=True)
            except (ssl.SSLError, OSError):
                with self.server.conn_lock:
                    self.server.connections.discard(self)
                self.request.close()
                raise
            self.request.settimeout(None)
        super().setup()

    def handle(self):
        try:
            super().handle()
        except (ConnectionError, ssl.SSLError, TimeoutError, OSError):
            pass

    def finish(self):
        try:
            super().finish()
        except OSError:
            pass
        with self.server.conn_lock:
            self.server.connections.discard(self)

    def log_message(self, fmt, *args):  # silence http.server's stderr lines
        pass

    def do_GET(self):
        self.server.api.dispatch(self, "GET")

    def do_POST(self):
        self.server.api.dispatch(self, "POST")

    def do_PUT(self):
        self.server.api.dispatch(self, "PUT")

    def do_PATCH(self):
        self.server.api.dispatch(self, "PATCH")

    def do_DELETE(self):
        self.server.api.dispatch(self, "DELETE")


class HTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024

    def handle_error(self, request, client_address):
        if getattr(self, "api", None) is not None and self.api.log_requests:
            log.info("connection_error", client=str(client_address))


class Streamed(Exception):
    """Raised after a streamed (watch) response has been written in full."""


def send_text(h: Handler, code: int, text: str) -> None:
    h.kubesim_code = code
    data = text.encode()
    h.send_response(code)
    h.send_header("Content-Type", "text/plain")
    h.send_header("X-Content-Type-Options", "nosniff")
    h.send_header("Content-Length", str(len(data)))
    h.end_headers()
    h.wfile.write(data)


def send_json(h: Handler, code: int, body, extra_headers=None) -> None:
    h.kubesim_code = code
    data = protobuf.encode_object(body) if getattr(h, "kubesim_proto", False) and isinstance(body, dict) else None
    ctype = protobuf.MEDIA_TYPE if data is not None else "application/json"
    if data is None:
        data = json.dumps(body, separators=(",", ":")).encode()
    h.send_response(code)
    h.send_header("Content-Type", ctype)
    h.send_header("Content-Length", str(len(data)))
    for k, v in (extra_headers or {}).items():
        h.send_header(k, v)
    h.end_headers()
    h.wfile.write(data)


def slurp_body(h: Handler) -> None:
    """Read the request body before anything can fail, so an error answer never leaves unread
    bytes on a keep-alive connection. Oversized bodies are refused unread (413, connection closed)."""
    h.raw_body = b""
    if h.headers.get("Transfer-Encoding", "").lower() == "chunked":
        h.close_connection = True
        raise APIError(411, "BadRequest", "chunked request bodies are not supported; send Content-Length")
    length = h.headers.get("Content-Length")
    try:
        n = int(length or 0)
    except ValueError:
        h.close_connection = True
        raise errors.bad_request(f"invalid Content-Length {length!r}") from None
    if n > MAX_BODY:
        # Drain (without keeping) a body up to 64 MiB so the client sees the 413 instead of a
        # reset while it is still sending; then drop the connection.
        h.close_connection = True
        left = n if n <= 64 * 1024 * 1024 else 0
        while left > 0:
            got = h.rfile.read(min(left, 1 << 16))
            if not got:
                break
            left -= len(got)
        raise APIError(413, "RequestEntityTooLarge", f"Request entity too large: limit is {MAX_BODY}")
    if n:
        h.raw_body = h.rfile.read(n)


def read_body(h: Handler):
    raw = getattr(h, "raw_body", b"")
    if not raw.strip():
        raise errors.bad_request("the body of the request was empty")
    ctype = (h.headers.get("Content-Type") or "").split(";")[0].strip()
    if ctype == protobuf.MEDIA_TYPE:
        return protobuf.decode_object(raw)[2]
    if ctype in ("application/yaml", "application/x-yaml", "text/yaml"):
        import yaml

        try:
            return yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise errors.bad_request(f"the object provided is unrecognized: yaml parse error: {e}") from None
    try:
        return json.loads(raw)
    except ValueError as e:
        raise errors.bad_request(
            f"the object provided is unrecognized: couldn't get version/kind; json parse error: {e}"
        ) from None


def peer_closed(sock) -> bool:
    """True when an idle watch connection has been closed by the client (it never sends anything
    during a watch, so readability means EOF or close_notify). Frees the watcher promptly instead
    of at timeoutSeconds."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        if not readable:
            return False
        sock.settimeout(0)
        try:
            return sock.recv(1) == b""
        finally:
            sock.settimeout(None)
    except (ssl.SSLWantReadError, BlockingIOError):
        return False
    except (OSError, ValueError):
        return True
