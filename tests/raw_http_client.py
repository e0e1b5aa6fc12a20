"""A client that sends exactly the request a test spells out, as an attacker in a pod would.

curl and http.client normalise what they send (absolute-form targets, ``:path``, ``:authority`` vs
``host``); these tests need the bytes as written. Run as a script inside the pod's namespace::

    python tests/raw_http_client.py '{"connect": ["allowed.example", 443], "sni": "allowed.example",
                                      "cafile": "...", "raw": "GET https://x.example/ HTTP/1.1\\r\\n..."}'

- ``raw``: HTTP/1 bytes sent verbatim (TLS when ``sni`` or ``cafile`` is given, else plain TCP).
- ``tunnel``: ``"host:port"`` -- first ``CONNECT`` it through the proxy at ``connect`` (standard
  mode), then speak TLS / HTTP inside the tunnel.
- ``h2``: a list of ``[name, value]`` header pairs (pseudo-headers included, in order) sent as one
  HTTP/2 request (ALPN ``h2``, no client-side header validation).

Prints one JSON object: ``{"status": int|null, "headers": {lower-case name: value}, "body": str}``
(``status`` null when the connection ended without a response; ``error`` then says why).
"""

import json
import socket
import ssl
import sys


def _connect(spec):
    sock = socket.create_connection(tuple(spec["connect"]), timeout=10)
    if spec.get("tunnel"):
        sock.sendall(f"CONNECT {spec['tunnel']} HTTP/1.1\r\nHost: {spec['tunnel']}\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(1)
            if not chunk:
                raise OSError(f"proxy closed the connection after CONNECT: {head!r}")
            head += chunk
        if head.split()[1] != b"200":
            raise OSError(f"CONNECT refused: {head!r}")
    if not (spec.get("sni") or spec.get("cafile")):
        return sock
    ctx = ssl.create_default_context(cafile=spec.get("cafile"))
    ctx.check_hostname = False  # the SNI may be deliberately odd; the CA still has to match
    if spec.get("h2"):
        ctx.set_alpn_protocols(["h2"])
    else:
        ctx.set_alpn_protocols(["http/1.1"])
    return ctx.wrap_socket(sock, server_hostname=spec.get("sni"))


def _http1(sock, raw: bytes) -> dict:
    sock.sendall(raw)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    if b"\r\n\r\n" not in data:
        return {"status": None, "headers": {}, "body": "", "error": f"no response head: {data[:200]!r}"}
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    length = int(headers.get("content-length", "0") or 0)
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return {"status": int(lines[0].split()[1]), "headers": headers, "body": body.decode("latin-1")}


def _http2(sock, header_pairs) -> dict:
    import h2.config
    import h2.connection
    import h2.events

    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(
            client_side=True,
            header_encoding=None,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
            validate_inbound_headers=False,
        )
    )
    conn.initiate_connection()
    conn.send_headers(1, [(k.encode(), v.encode()) for k, v in header_pairs], end_stream=True)
    sock.sendall(conn.data_to_send())
    status, headers, body = None, {}, b""
    while True:
        data = sock.recv(65536)
        if not data:
            break
        for ev in conn.receive_data(data):
            if isinstance(ev, h2.events.ResponseReceived):
                for k, v in ev.headers:
                    k, v = k.decode(), v.decode()
                    if k == ":status":
                        status = int(v)
                    else:
                        headers[k] = v
            elif isinstance(ev, h2.events.DataReceived):
                body += ev.data
                conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, (h2.events.StreamEnded, h2.events.StreamReset, h2.events.ConnectionTerminated)):
                out = {"status": status, "headers": headers, "body": body.decode("latin-1")}
                if not isinstance(ev, h2.events.StreamEnded):
                    out["error"] = type(ev).__name__
                return out
        sock.sendall(conn.data_to_send())
    return {"status": status, "headers": headers, "body": body.decode("latin-1"), "error": "connection closed"}


def main() -> None:
    spec = json.loads(sys.argv[1])
    try:
        sock = _connect(spec)
        out = _http2(sock, spec["h2"]) if spec.get("h2") else _http1(sock, spec["raw"].encode("latin-1"))
    except OSError as e:
        out = {"status": None, "headers": {}, "body": "", "error": f"{type(e).__name__}: {e}"}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
