"""wrk, the C load generator (Debian's ``wrk``), as the egress benchmark's client.

Why not bench/loadgen.py there: on this 2-core machine the client shares the cores with the
proxies it measures. The pure-Python load generator spends about as much CPU per request as the
proxy does, so "N workers ÷ 1 worker" measured the client's ceiling as much as the proxy's. wrk
(event loop in C, LuaJIT only at the start and the end) costs a small fraction of that: direct to the
upstream it does ~100,000 HTTP keep-alive requests/s here, ~100× what one proxy worker serves.

A run prints one JSON line from the ``done`` hook below; :meth:`Wrk.run` returns the same shape as
bench/loadgen.py (``rps``, ``requests``, ``total_requests``, ``statuses``, ``errors``); the statuses are
counted per response by the ``response`` hook of each thread (a few µs per response, far below a
proxy's cost). A new connection per request is wrk's usual way:
``Connection: close``, which every proxy here honours (it answers, then closes; wrk reconnects, with a
full TLS handshake for HTTPS: wrk keeps no TLS session). wrk does not verify the server's
certificate; the proxies verify the upstream's, which is the work being measured.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile

from bench import common

DONE = r"""
local threads = {}
setup = function(thread) table.insert(threads, thread) end
init = function(args) statuses = {} end
response = function(status, headers, body) statuses[status] = (statuses[status] or 0) + 1 end
done = function(summary, latency, requests)
  local all = {}
  for _, t in ipairs(threads) do
    for k, v in pairs(t:get("statuses")) do all[k] = (all[k] or 0) + v end
  end
  local parts = {}
  for k, v in pairs(all) do table.insert(parts, string.format('"%d": %d', k, v)) end
  local e = summary.errors
  io.write(string.format(
    '\n{"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, "timeout": %d, '
    .. '"p50_us": %d, "p99_us": %d, "statuses": {%s}}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(99), table.concat(parts, ", ")))
end
"""


def binary() -> str:
    found = shutil.which("wrk")
    if not found:
        raise common.Skip("wrk not installed (apt-get install wrk; scripts/setup.sh installs it)")
    return found


def argv(url: str, *, connections: int, threads: int, duration: float, new_connection: bool, script: str) -> list[str]:
    """The command line, as one would type it: ``wrk -t2 -c16 -d3s --latency -s done.lua URL``."""
    return [
        binary(),
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        "--timeout",
        "5s",
        "-s",
        script,
        *(["-H", "Connection: close"] if new_connection else []),
        url,
    ]


def parse(stdout: str) -> dict:
    """The JSON line of the ``done`` hook → loadgen.py's result shape. Raises ValueError without one."""
    line = next((ln for ln in reversed(stdout.splitlines()) if ln.startswith("{")), None)
    if line is None:
        raise ValueError(f"wrk printed no result line: {stdout[-500:]!r}")
    d = json.loads(line)
    elapsed = d["duration_us"] / 1e6
    errors = {k: d[k] for k in ("connect", "read", "write", "timeout") if d[k]}
    return {
        "requests": d["requests"],
        "total_requests": d["requests"],
        "elapsed_s": elapsed,
        "rps": d["requests"] / elapsed if elapsed > 0 else None,
        "statuses": d["statuses"],
        "errors": errors,
        "latency_p50_ms": d["p50_us"] / 1000,
        "latency_p99_ms": d["p99_us"] / 1000,
    }


class Wrk:
    """Runs wrk in a network namespace (``ns.exec_argv``; None: this one); one Lua file for the
    object's life."""

    def __init__(self, ns, *, connections: int = 16, threads: int = 2):
        self.ns, self.connections, self.threads = ns, connections, threads
        fd, self.script = tempfile.mkstemp(prefix="tproxy-wrk-", suffix=".lua")
        with os.fdopen(fd, "w") as f:
            f.write(DONE)

    def run(self, url: str, *, duration: float, new_connection: bool = False) -> dict:
        cmd = argv(
            url,
            connections=self.connections,
            threads=self.threads,
            duration=duration,
            new_connection=new_connection,
            script=self.script,
        )
        if self.ns is not None:
            cmd = self.ns.exec_argv(cmd)
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
        if p.returncode != 0:
            raise RuntimeError(f"wrk failed ({p.returncode}): {p.stderr[-800:] or p.stdout[-800:]}")
        return parse(p.stdout)

    def close(self) -> None:
        try:
            os.unlink(self.script)
        except OSError:
            pass
