"""A small HTTP(S) load generator: N threads, each with one persistent connection (or, with
``--new-connection``, a new connection per request).

Run inside the client network namespace (``ip netns exec C python -m bench.loadgen ...``) so it
reaches the upstream by its name and address exactly as a pod would; prints one JSON object.
Pure Python (``http.client``) on purpose: no extra Debian package; its own ceiling (the GIL,
~2-4k req/s here) bounds the *direct* figure, so proxy/direct ratios understate the true gap,
while bare-mitmdump/addon ratios (both far below that ceiling) are unaffected.
"""

from __future__ import annotations

import http.client
import json
import ssl
import sys
import threading
import time
import urllib.parse

from controllerkit.cli import ExactArgumentParser


def _connect(u: urllib.parse.SplitResult, ctx: ssl.SSLContext | None, timeout: float):
    if u.scheme == "https":
        return http.client.HTTPSConnection(u.hostname, u.port or 443, context=ctx, timeout=timeout)
    return http.client.HTTPConnection(u.hostname, u.port or 80, timeout=timeout)


def load(
    url: str,
    *,
    concurrency: int,
    duration: float,
    max_requests: int,
    warmup: float,
    cafile: str | None,
    timeout: float = 3.0,
    new_connection: bool = False,
) -> dict:
    u = urllib.parse.urlsplit(url)
    ctx = None
    if u.scheme == "https":
        ctx = ssl.create_default_context(cafile=cafile)
        ctx.set_alpn_protocols(["http/1.1"])
    path = (u.path or "/") + (f"?{u.query}" if u.query else "")
    lock = threading.Lock()
    lat: list[float] = []
    statuses: dict[str, int] = {}
    errors: dict[str, int] = {}
    reconnects = [0]
    counter = [0]
    total = [0]  # every completed request, warm-up included (for CPU-per-request figures)
    start = threading.Event()
    t_begin = [0.0]
    measuring_from = [0.0]
    deadline = [0.0]

    headers = {"Host": u.netloc, **({"Connection": "close"} if new_connection else {})}

    def worker():
        conn = None
        start.wait()
        while True:
            now = time.perf_counter()
            if now >= deadline[0]:
                break
            with lock:
                if counter[0] >= max_requests:
                    break
            try:
                if conn is None:
                    conn = _connect(u, ctx, timeout)
                    reconnects[0] += 1
                t0 = time.perf_counter()
                conn.request("GET", path, headers=headers)
                resp = conn.getresponse()
                resp.read()
                t1 = time.perf_counter()
                if resp.will_close or new_connection:
                    conn.close()
                    conn = None
                with lock:
                    total[0] += 1
                if t0 >= measuring_from[0]:
                    with lock:
                        counter[0] += 1
                        lat.append(t1 - t0)
                        statuses[str(resp.status)] = statuses.get(str(resp.status), 0) + 1
            except Exception as e:  # counted, the connection is replaced
                with lock:
                    k = type(e).__name__
                    errors[k] = errors.get(k, 0) + 1
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.01)
        if conn is not None:
            conn.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    t_begin[0] = time.perf_counter()
    measuring_from[0] = t_begin[0] + warmup
    deadline[0] = measuring_from[0] + duration
    start.set()
    for t in threads:
        t.join(duration + warmup + timeout + 5)
    elapsed = min(time.perf_counter(), deadline[0]) - measuring_from[0]
    with lock:
        n = len(lat)
        return {
            "url": url,
            "concurrency": concurrency,
            "requests": n,
            "elapsed_s": elapsed,
            "rps": n / elapsed if elapsed > 0 else None,
            "statuses": statuses,
            "errors": errors,
            "connections": reconnects[0],
            "total_requests": total[0],
            "latencies_s": lat,
        }


def main(argv=None) -> int:
    p = ExactArgumentParser(prog="python -m bench.loadgen", description=__doc__.split("\n\n")[0])
    p.add_argument("url")
    p.add_argument("-c", "--concurrency", type=int, default=8)
    p.add_argument("-d", "--duration", type=float, default=5.0, help="measured seconds")
    p.add_argument("-n", "--max-requests", type=int, default=1_000_000, help="stop after this many")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds not measured (TLS, cert generation)")
    p.add_argument("--cafile", help="CA bundle for HTTPS")
    p.add_argument(
        "--timeout", type=float, default=3.0, help="per-request timeout: a request stuck longer counts as an error (default 3 s)"
    )
    p.add_argument(
        "--new-connection",
        action="store_true",
        help="one request per connection (TCP and TLS handshake each), instead of keep-alive",
    )
    a = p.parse_args(argv)
    print(
        json.dumps(
            load(
                a.url,
                concurrency=a.concurrency,
                duration=a.duration,
                max_requests=a.max_requests,
                warmup=a.warmup,
                cafile=a.cafile,
                timeout=a.timeout,
                new_connection=a.new_connection,
            )
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
