"""ApacheBench (``ab``, Debian's apache2-utils): the egress benchmark's client for HTTPS with a new
connection per request.

Why not wrk there (bench/wrk.py is the client everywhere else): wrk 4.1 waits for a TLS handshake to
finish by polling the socket for *writability*, which a connected socket always has, so it spins
until the server's handshake messages arrive. Direct to nginx the handshake is quick and the spin
short; through a proxy it lasts as long as the proxy takes, and wrk burnt 1–6 ms of CPU per
connection (measured with the proxies' own CPU beside it, 2026-12-05) on the cores the proxies
share with it: two tproxy workers then served *fewer* HTTPS new-connection requests than one
(153 vs 169 req/s). ab waits for what OpenSSL asks for (read or write), so it costs ~0.6–0.9 ms per
connection, nearly all of it the client's half of the handshake.

ab makes a new connection per request unless given ``-k``; it runs one thread, which at the rates of
a proxied TLS handshake (hundreds per second) is far from its limit. Its summary counts non-2xx
responses, not each status, so :func:`parse` reports ``{"2xx": n, "non-2xx": m}``. ``-l`` is needed:
ab otherwise compares every body's length with the first one's, and through TLS 1.3 it reads the
first as empty, so every request would be a "Length" failure.
"""

from __future__ import annotations

import re
import shutil
import subprocess

from bench import common

_FIELDS = {
    "complete": r"^Complete requests:\s+(\d+)",
    "failed": r"^Failed requests:\s+(\d+)",
    "non2xx": r"^Non-2xx responses:\s+(\d+)",
    "elapsed": r"^Time taken for tests:\s+([\d.]+) seconds",
    "p50": r"^\s+50%\s+(\d+)",
    "p99": r"^\s+99%\s+(\d+)",
}
_FAILED_KINDS = r"\(Connect: (\d+), Receive: (\d+), Length: (\d+), Exceptions: (\d+)\)"


def binary() -> str:
    found = shutil.which("ab")
    if not found:
        raise common.Skip("ab not installed (apt-get install apache2-utils; scripts/setup.sh installs it)")
    return found


def argv(url: str, *, connections: int, duration: float) -> list[str]:
    """As one would type it: ``ab -q -l -s 5 -t 3 -n 10000000 -c 16 URL`` (``-n`` after ``-t``:
    ``-t`` alone caps a run at 50,000 requests). No ``-r``: with it ab counts a request that failed
    to connect or read as "complete" too, so a dead proxy would look fast; without it the first
    socket error ends the run with a non-zero exit, which :meth:`Ab.run` raises."""
    secs = str(max(1, round(duration)))
    return [binary(), "-q", "-l", "-s", "5", "-t", secs, "-n", "10000000", "-c", str(connections), url]


def parse(stdout: str) -> dict:
    """ab's summary → bench/loadgen.py's result shape. Raises ValueError when it has no summary."""
    found = {k: re.search(rx, stdout, re.M) for k, rx in _FIELDS.items()}
    missing = [k for k in ("complete", "failed", "elapsed") if found[k] is None]
    if missing:
        raise ValueError(f"ab printed no summary ({', '.join(missing)} missing): {stdout[-500:]!r}")
    complete = int(found["complete"].group(1))  # type: ignore[union-attr]
    elapsed = float(found["elapsed"].group(1))  # type: ignore[union-attr]
    # ab counts a non-2xx response it read as its time limit struck, but not that request as complete:
    # the non-2xx count can exceed the complete count by up to the concurrency (seen 2833 of 2832).
    non2xx = min(int(found["non2xx"].group(1)) if found["non2xx"] else 0, complete)
    errors: dict = {}
    kinds = re.search(_FAILED_KINDS, stdout)
    if kinds:
        errors = {k: int(v) for k, v in zip(("connect", "receive", "length", "exceptions"), kinds.groups()) if int(v)}
    elif int(found["failed"].group(1)):  # type: ignore[union-attr]
        errors = {"failed": int(found["failed"].group(1))}  # type: ignore[union-attr]
    statuses = {k: v for k, v in (("2xx", complete - non2xx), ("non-2xx", non2xx)) if v}
    return {
        "requests": complete,
        "total_requests": complete,
        "elapsed_s": elapsed,
        "rps": complete / elapsed if elapsed > 0 else None,
        "statuses": statuses,
        "errors": errors,
        "latency_p50_ms": float(found["p50"].group(1)) if found["p50"] else None,
        "latency_p99_ms": float(found["p99"].group(1)) if found["p99"] else None,
    }


class Ab:
    """Runs ab in a network namespace (``ns.exec_argv``; None: this one): a new connection per request."""

    def __init__(self, ns, *, connections: int = 16):
        self.ns, self.connections = ns, connections

    def run(self, url: str, *, duration: float) -> dict:
        cmd = argv(url, connections=self.connections, duration=duration)
        if self.ns is not None:
            cmd = self.ns.exec_argv(cmd)
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
        if p.returncode != 0:
            raise RuntimeError(f"ab failed ({p.returncode}): {p.stderr[-800:] or p.stdout[-800:]}")
        return parse(p.stdout)
