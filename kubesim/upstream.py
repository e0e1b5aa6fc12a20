"""The simulated internet: HTTP and HTTPS virtual hosts for tests, benchmarks and the demo.

Run inside the "internet" network namespace::

    python -m kubesim.upstream --bind 203.0.113.10 --bind 2001:db8:1::10 \\
        --http-port 80 --https-port 443 --cert-dir /tmp/ca \\
        --hosts www.google.com,storage.googleapis.com [--metadata]

Virtual hosts (chosen by the ``Host`` header; HTTPS picks the certificate by SNI):

- ``www.google.com /`` → 200 small HTML page.
- ``storage.googleapis.com /solutions-public-assets/…`` → 200: the prefix itself is a bucket listing,
  ``…/hello.txt`` a small real file; anything else under that host → 404.
- any host: ``/echo`` → JSON with what the server saw (Host, SNI, the local address:port the client
  reached, the peer, method, path, scheme, the raw request line), so tests can tell *where* a request
  really went;
  ``/bytes/N`` → N bytes streamed in chunks (large-download tests and the benchmark);
  ``/chunked/N`` → N bytes with ``Transfer-Encoding: chunked`` (no Content-Length: the size is
  unknown until the end);
  ``/.upstream/stats`` → JSON counters (connections accepted and requests per listener).
- ``--record``: every request's raw request line, Host and SNI (and ``X-Test-Id``) is kept (the last
  ``RECORD_MAX``, any method, also ``OPTIONS *``), served by ``/.upstream/requests``; without it that
  path answers 404.
- ``--metadata``: ``metadata.google.internal`` / ``169.254.169.254`` answer ``/computeMetadata/v1/…``
  like the GCE metadata server (requires ``Metadata-Flavor: Google``).

Like nginx and other virtual-hosting front ends (RFC 9112 §3.2.2), an absolute-form request target
(``GET https://host/path``) picks the virtual host by the target's authority, not by ``Host``.

HTTP/1.1 keep-alive with Nagle disabled (a Python server without it collapses to ~200 req/s).

Limits: one thread and one descriptor per open connection (the CLI raises its soft open-files
limit to the hard one and names it in the ``upstream listening`` line); a connection idle for
``--idle-timeout`` seconds (60) is closed by the server; accept backlog 128.
"""

from __future__ import annotations

import argparse
import collections
import http.server
import ipaddress
import json
import resource
import socket
import socketserver
import ssl
import sys
import threading
from typing import Iterable, Sequence

from controllerkit.cli import ExactArgumentParser

from kubesim.testca import TestCA

DEFAULT_HOSTS = ("www.google.com", "storage.googleapis.com")
ASSETS_PREFIX = "/solutions-public-assets/"
HELLO_PATH = ASSETS_PREFIX + "hello.txt"
HELLO_BODY = b"Hello from the simulated storage.googleapis.com (tproxy test asset).\n"
GOOGLE_BODY = b"<!doctype html><html><head><title>Google</title></head><body>simulated www.google.com</body></html>\n"
METADATA_HOSTS = ("metadata.google.internal", "metadata", "169.254.169.254")
METADATA_VALUES = {
    "project/project-id": "tproxy-sim",
    "project/numeric-project-id": "123456789012",
    "instance/hostname": "node-1.c.tproxy-sim.internal",
    "instance/zone": "projects/123456789012/zones/us-central1-b",
    "instance/service-accounts/default/email": "123456789012-compute@developer.gserviceaccount.com",
    "instance/service-accounts/default/token": json.dumps(
        {"access_token": "ya29.SIMULATED-SECRET-TOKEN", "expires_in": 3599, "token_type": "Bearer"}
    ),
}
CHUNK = 64 * 1024
RECORD_MAX = 1000


class Stats:
    """Thread-safe counters per listener (``"addr:port"``): connections accepted, requests served."""

    def __init__(self):
        self._lock = threading.Lock()
        self.data: dict[str, dict[str, int]] = {}

    def incr(self, listener: str, key: str, n: int = 1) -> None:
        with self._lock:
            d = self.data.setdefault(listener, {"connections": 0, "requests": 0, "tls_failures": 0})
            d[key] = d.get(key, 0) + n

    def snapshot(self) -> dict:
        with self._lock:
            return json.loads(json.dumps(self.data))


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server_version = "kubesim-upstream"
    timeout = 60

    def setup(self):
        self.timeout = self.server.idle_timeout  # an idle keep-alive connection is closed after this
        super().setup()
        self.sni = getattr(self.request, "tproxy_sni", None)

    # -- plumbing -------------------------------------------------------------------------------
    def log_message(self, fmt, *args):  # quiet by default; --verbose switches to stderr lines
        if self.server.verbose:
            sys.stderr.write("%s %s\n" % (self.address_string(), fmt % args))

    def _send(
        self, status: int, body: bytes, ctype: str = "text/plain; charset=utf-8", headers: Iterable[tuple[str, str]] = ()
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def parse_request(self) -> bool:
        ok = super().parse_request()
        if ok and self.server.recorded is not None:
            self.server.recorded.append(
                {
                    "listener": self.server.listener,
                    "request_line": self.requestline,
                    "host": self.headers.get("Host"),
                    "sni": self.sni,
                    "test_id": self.headers.get("X-Test-Id"),
                }
            )
        return ok

    def _target(self) -> tuple[str | None, str]:
        """(the absolute-form target's authority or None, the target's path and query)."""
        if self.path.startswith("/") or "://" not in self.path:
            return None, self.path
        rest = self.path.split("://", 1)[1]
        cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
        return rest[:cut], (rest[cut:] if rest[cut : cut + 1] == "/" else "/" + rest[cut:])

    def _vhost(self) -> str:
        # RFC 9112 3.2.2: an absolute-form target's authority wins over the Host header
        target_authority, _ = self._target()
        host = (self.headers.get("Host") if target_authority is None else target_authority) or ""
        host = host.strip().lower()
        if host.startswith("["):
            return host[1:].split("]", 1)[0]
        return host.rsplit(":", 1)[0] if host.count(":") == 1 else host

    # -- dispatch -------------------------------------------------------------------------------
    def do_GET(self):
        self.server.stats.incr(self.server.listener, "requests")
        path = self._target()[1].split("?", 1)[0]
        host = self._vhost()
        if path == "/echo":
            return self._echo()
        if path.startswith("/bytes/"):
            return self._bytes(path[len("/bytes/") :])
        if path.startswith("/chunked/"):
            return self._bytes(path[len("/chunked/") :], chunked=True)
        if path == "/.upstream/stats":
            return self._send(200, json.dumps(self.server.stats.snapshot()).encode(), "application/json")
        if path == "/.upstream/requests" and self.server.recorded is not None:
            return self._send(200, json.dumps(list(self.server.recorded)).encode(), "application/json")
        if self.server.metadata and host in METADATA_HOSTS:
            return self._metadata(path)
        if host not in self.server.hosts:
            return self._send(404, f"no virtual host {host!r} here\n".encode())
        if host == "www.google.com":
            return self._send(200, GOOGLE_BODY, "text/html; charset=utf-8") if path == "/" else self._send(404, b"not found\n")
        if host == "storage.googleapis.com":
            if path == HELLO_PATH:
                return self._send(200, HELLO_BODY)
            if path == ASSETS_PREFIX:
                listing = (
                    "<?xml version='1.0' encoding='UTF-8'?><ListBucketResult>"
                    "<Name>solutions-public-assets</Name><Contents><Key>hello.txt</Key>"
                    f"<Size>{len(HELLO_BODY)}</Size></Contents></ListBucketResult>\n"
                )
                return self._send(200, listing.encode(), "application/xml; charset=UTF-8")
            return self._send(404, b"NoSuchKey\n")
        return self._send(200, f"hello from {host}\n".encode())

    do_HEAD = do_GET

    def do_POST(self):
        self.server.stats.incr(self.server.listener, "requests")
        length = int(self.headers.get("Content-Length") or 0)
        data = self.rfile.read(length) if length else b""
        if self._target()[1].split("?", 1)[0] == "/echo":
            return self._echo(len(data))
        self._send(200, f"received {len(data)} bytes\n".encode())

    do_PUT = do_POST

    def do_OPTIONS(self):  # also "OPTIONS *"
        self.server.stats.incr(self.server.listener, "requests")
        self._send(200, b"", headers=[("Allow", "GET, HEAD, POST, PUT, OPTIONS")])

    # -- endpoints ------------------------------------------------------------------------------
    def _echo(self, body_len: int = 0) -> None:
        local = self.connection.getsockname()
        peer = self.connection.getpeername()
        info = {
            "host": self.headers.get("Host"),
            "sni": self.sni,
            "scheme": "https" if self.server.tls else "http",
            "local": f"{local[0]}:{local[1]}",
            "local_address": local[0],
            "local_port": local[1],
            "peer": f"{peer[0]}:{peer[1]}",
            "method": self.command,
            "path": self.path,
            "request_line": self.requestline,
            "body_length": body_len,
            "headers": {k: v for k, v in self.headers.items()},
        }
        self._send(200, json.dumps(info).encode(), "application/json")

    def _bytes(self, spec: str, chunked: bool = False) -> None:
        try:
            n = int(spec)
            if n < 0:
                raise ValueError
        except ValueError:
            return self._send(400, b"/bytes/N and /chunked/N need a non-negative integer N\n")
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(n))
        self.end_headers()
        if self.command == "HEAD":
            return
        block = b"x" * CHUNK
        left = n
        while left > 0:
            k = min(left, CHUNK)
            self.wfile.write(b"%x\r\n%s\r\n" % (k, block[:k]) if chunked else block[:k])
            left -= k
        if chunked:
            self.wfile.write(b"0\r\n\r\n")

    def _metadata(self, path: str) -> None:
        hdr = [("Metadata-Flavor", "Google")]
        if self.headers.get("Metadata-Flavor") != "Google":
            return self._send(403, b"Missing Metadata-Flavor:Google header.\n", headers=hdr)
        prefix = "/computeMetadata/v1/"
        key = path[len(prefix) :].strip("/") if path.startswith(prefix) else None
        if key in METADATA_VALUES:
            value = METADATA_VALUES[key]
            ctype = "application/json" if value.startswith("{") else "application/text"
            return self._send(200, value.encode(), ctype, headers=hdr)
        return self._send(404, b"not found\n", headers=hdr)


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(
        self,
        addr: str,
        port: int,
        *,
        tls: ssl.SSLContext | None,
        hosts: Sequence[str],
        metadata: bool,
        stats: Stats,
        verbose: bool,
        recorded: collections.deque | None = None,
        idle_timeout: float = 60.0,
    ):
        self.idle_timeout = idle_timeout
        self.address_family = socket.AF_INET6 if ":" in addr else socket.AF_INET
        self.tls = tls
        self.hosts = set(hosts)
        self.metadata = metadata
        self.stats = stats
        self.verbose = verbose
        self.recorded = recorded  # shared by all listeners; None: not recording
        super().__init__((addr, port), Handler, bind_and_activate=False)
        if self.address_family == socket.AF_INET6:
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        self.server_bind()
        self.server_activate()
        host, port = self.socket.getsockname()[:2]
        self.listener = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def server_bind(self):  # HTTPServer.server_bind does a reverse lookup (getfqdn): skip it
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.socket.getsockname()[:2]

    def get_request(self):
        sock, addr = self.socket.accept()
        self.stats.incr(self.listener, "connections")
        if self.tls is None:
            return sock, addr
        return self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr

    def finish_request(self, request, client_address):
        if self.tls is not None:
            try:
                request.settimeout(10)
                request.do_handshake()
                request.settimeout(None)
            except (OSError, ssl.SSLError):
                self.stats.incr(self.listener, "tls_failures")
                return
        super().finish_request(request, client_address)

    def handle_error(self, request, client_address):  # clients hanging up are not errors here
        if self.verbose:
            super().handle_error(request, client_address)


def _tls_context(ca: TestCA, hosts: Sequence[str], binds: Sequence[str], metadata: bool) -> ssl.SSLContext:
    """One server context; an SNI callback switches to the per-host certificate."""
    names = list(hosts) + (list(METADATA_HOSTS) if metadata else [])
    per_host: dict[str, ssl.SSLContext] = {}
    for name in names:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(*ca.issue([name]))
        ctx.set_alpn_protocols(["http/1.1"])
        per_host[name] = ctx
    # Without SNI: a certificate for the bound addresses (so IP-literal clients can verify it).
    default = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ips = [b for b in binds if _is_ip(b) and not ipaddress.ip_address(b).is_unspecified]
    default.load_cert_chain(*ca.issue(ips or [names[0]]))
    default.set_alpn_protocols(["http/1.1"])

    def on_sni(sslobj, server_name, _ctx):
        sslobj.tproxy_sni = server_name
        if server_name and server_name.lower() in per_host:
            sslobj.context = per_host[server_name.lower()]
        return None

    default.sni_callback = on_sni
    return default


def _is_ip(s: str) -> bool:
    try:
        ipaddress.ip_address(s)
        return True
    except ValueError:
        return False


class Upstream:
    """All listeners of one simulated-internet server; ``start()`` then ``stop()``."""

    def __init__(
        self,
        binds: Sequence[str],
        *,
        http_port: int = 80,
        https_port: int = 443,
        cert_dir: str | None = None,
        hosts: Sequence[str] = DEFAULT_HOSTS,
        metadata: bool = False,
        verbose: bool = False,
        record: bool = False,
        idle_timeout: float = 60.0,
    ):
        if not binds:
            raise ValueError("at least one --bind address is needed")
        if not idle_timeout > 0:
            raise ValueError(f"idle timeout {idle_timeout}: must be > 0 seconds")
        if https_port and not cert_dir:
            raise ValueError("--https-port needs --cert-dir (the test CA directory)")
        self.stats = Stats()
        # deque.append is atomic: the listeners' threads share it without a lock
        self.recorded: collections.deque | None = collections.deque(maxlen=RECORD_MAX) if record else None
        self.ca = TestCA(cert_dir) if cert_dir else None
        tls = _tls_context(self.ca, hosts, binds, metadata) if https_port else None
        self.servers: list[_Server] = []
        for addr in binds:
            for port, ctx in ((http_port, None), (https_port, tls)):
                if port:
                    self.servers.append(
                        _Server(
                            addr,
                            port,
                            tls=ctx,
                            hosts=hosts,
                            metadata=metadata,
                            stats=self.stats,
                            verbose=verbose,
                            recorded=self.recorded,
                            idle_timeout=idle_timeout,
                        )
                    )
        self._threads: list[threading.Thread] = []

    @property
    def listeners(self) -> list[str]:
        return [s.listener for s in self.servers]

    def start(self) -> "Upstream":
        for s in self.servers:
            t = threading.Thread(target=s.serve_forever, name=f"upstream {s.listener}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        for s in self.servers:
            s.shutdown()
            s.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def raise_open_files_limit() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit: one descriptor (and one thread) per held connection."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def serve_forever(binds: Sequence[str], **kwargs) -> None:
    """Run an :class:`Upstream` until interrupted (the CLI's body)."""
    max_files = raise_open_files_limit()
    up = Upstream(binds, **kwargs).start()
    print(json.dumps({"event": "upstream listening", "listeners": up.listeners, "max_open_files": max_files}), flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        up.stop()


def main(argv=None) -> int:
    p = ExactArgumentParser(
        prog="python -m kubesim.upstream",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--bind", action="append", required=True, metavar="ADDR", help="address to listen on (repeatable; IPv4 or IPv6)"
    )
    p.add_argument("--http-port", type=int, default=80, help="plain HTTP port (0 = off; default 80)")
    p.add_argument("--https-port", type=int, default=443, help="HTTPS port (0 = off; default 443)")
    p.add_argument("--cert-dir", help="test CA directory (kubesim.testca); required for HTTPS")
    p.add_argument("--hosts", default=",".join(DEFAULT_HOSTS), help="comma-separated virtual hosts (default: %(default)s)")
    p.add_argument("--metadata", action="store_true", help="also answer as the GCE metadata server")
    p.add_argument(
        "--record", action="store_true", help="keep every request's raw request line, Host and SNI; served at /.upstream/requests"
    )
    p.add_argument("--verbose", action="store_true", help="log every request to stderr")
    p.add_argument(
        "--idle-timeout", type=float, default=60.0, metavar="SECONDS", help="close a connection idle this long (default 60)"
    )
    args = p.parse_args(argv)
    hosts = [h.strip().lower() for h in args.hosts.split(",") if h.strip()]
    try:
        serve_forever(
            args.bind,
            http_port=args.http_port,
            https_port=args.https_port,
            cert_dir=args.cert_dir,
            hosts=hosts,
            metadata=args.metadata,
            verbose=args.verbose,
            record=args.record,
            idle_timeout=args.idle_timeout,
        )
    except (ValueError, OSError) as e:
        p.exit(2, f"kubesim.upstream: error: {e}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
