"""Many idle keep-alive connections from one asyncio process, driven over stdin/stdout.

``python -m bench.idle_client --host www.google.com --cafile BUNDLE`` (run in the client netns)
reads one JSON command per line and answers one JSON line each:

- ``{"op": "open", "http": N, "https": M}``: open N more ``http://HOST/`` and M more ``https://HOST/``
  connections (at most ``--parallel`` handshakes at a time), each sending one keep-alive
  ``GET /`` and reading the whole response, then left idle. Answer: ``opened``, ``held``,
  ``failed`` (by error), ``statuses``. With ``"deadline": S`` the ones not done after S seconds
  are abandoned and counted as failed.
- ``{"op": "check", "sample": K}``: how many held connections the other side has closed
  (``closed_by_peer``: EOF seen while idle), then a second ``GET /`` on K of the others
  (``0`` = all), answered ``statuses``/``failed``.
- ``{"op": "close"}``: close every connection, answer ``closed``, exit.

One socket per connection, no thread per connection: the client is not what limits the count.
Its open-files limit is raised to what ``--max-connections`` needs (root may raise the hard limit).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import ssl
import sys

from controllerkit.cli import ExactArgumentParser

IO_TIMEOUT = 120.0  # one request on a loaded 2-core machine; a hang is an error, not a wait forever


def raise_nofile(needed: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = needed + 256
    if soft >= want:
        return soft
    if hard != resource.RLIM_INFINITY and hard < want:
        try:  # root may raise the hard limit (up to fs.nr_open)
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
            return want
        except (ValueError, OSError):
            want = hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return want


class Conn:
    __slots__ = ("scheme", "reader", "writer")

    def __init__(self, scheme: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.scheme, self.reader, self.writer = scheme, reader, writer


async def get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str) -> int:
    """One keep-alive ``GET /``; the status, the whole body read (Content-Length)."""
    writer.write(f"GET / HTTP/1.1\r\nHost: {host}\r\nAccept: */*\r\n\r\n".encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
        elif name.strip().lower() == "connection" and value.strip().lower() == "close":
            raise ConnectionError("the server answered Connection: close")
    if length:
        await reader.readexactly(length)
    return status


class Client:
    def __init__(self, host: str, cafile: str | None, parallel: int):
        self.host = host
        self.tls = ssl.create_default_context(cafile=cafile)
        self.gate = asyncio.Semaphore(parallel)
        self.conns: list[Conn] = []

    async def _open_one(self, scheme: str, statuses: dict, failed: dict) -> None:
        async with self.gate:
            try:
                async with asyncio.timeout(IO_TIMEOUT):
                    if scheme == "https":
                        r, w = await asyncio.open_connection(self.host, 443, ssl=self.tls, server_hostname=self.host)
                    else:
                        r, w = await asyncio.open_connection(self.host, 80)
                    status = await get(r, w, self.host)
            except Exception as e:  # noqa: BLE001 - counted by kind; the bench reports them
                key = f"{scheme} {type(e).__name__}"
                failed[key] = failed.get(key, 0) + 1
                return
        statuses[str(status)] = statuses.get(str(status), 0) + 1
        self.conns.append(Conn(scheme, r, w))

    async def open(self, http: int, https: int, deadline: float | None = None) -> dict:
        statuses: dict = {}
        failed: dict = {}
        before = len(self.conns)
        jobs = [self._open_one("http", statuses, failed) for _ in range(http)]
        jobs += [self._open_one("https", statuses, failed) for _ in range(https)]
        tasks = [asyncio.ensure_future(j) for j in jobs]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=deadline)
            for t in pending:  # a proxy that stopped accepting: report it now, not after every IO_TIMEOUT
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            if pending:
                failed["not done by the deadline"] = len(pending)
        return {"opened": len(self.conns) - before, "held": len(self.conns), "failed": failed, "statuses": statuses}

    async def check(self, sample: int) -> dict:
        await asyncio.sleep(0)  # let the loop deliver any pending EOF before counting
        closed = {"http": 0, "https": 0}
        alive = []
        for c in self.conns:
            if c.reader.at_eof() or c.writer.is_closing():
                closed[c.scheme] += 1
            else:
                alive.append(c)
        chosen = alive if not sample or sample >= len(alive) else random.Random(1).sample(alive, sample)
        statuses: dict = {}
        failed: dict = {}

        async def again(c: Conn) -> None:
            async with self.gate:
                try:
                    async with asyncio.timeout(IO_TIMEOUT):
                        s = await get(c.reader, c.writer, self.host)
                except Exception as e:  # noqa: BLE001
                    key = f"{c.scheme} {type(e).__name__}"
                    failed[key] = failed.get(key, 0) + 1
                    return
            statuses[str(s)] = statuses.get(str(s), 0) + 1

        await asyncio.gather(*(again(c) for c in chosen))
        return {
            "held": len(self.conns),
            "closed_by_peer": sum(closed.values()),
            "closed_by_peer_by_scheme": closed,
            "checked": len(chosen),
            "statuses": statuses,
            "failed": failed,
        }

    async def close(self) -> dict:
        n = len(self.conns)
        for c in self.conns:
            c.writer.close()
        await asyncio.gather(*(c.writer.wait_closed() for c in self.conns), return_exceptions=True)
        self.conns.clear()
        return {"closed": n}


async def serve(args: argparse.Namespace) -> int:
    client = Client(args.host, args.cafile, args.parallel)
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            await client.close()
            return 0
        try:
            cmd = json.loads(line)
            op = cmd["op"]
            if op == "open":
                deadline = cmd.get("deadline")
                out = await client.open(
                    int(cmd.get("http", 0)), int(cmd.get("https", 0)), float(deadline) if deadline is not None else None
                )
            elif op == "check":
                out = await client.check(int(cmd.get("sample", 0)))
            elif op == "close":
                out = await client.close()
            else:
                raise ValueError(f"unknown op {op!r}")
        except (ValueError, KeyError, TypeError) as e:
            out = {"error": f"bad command {line.strip()!r}: {e}"}
            op = ""
        print(json.dumps(out), flush=True)
        if op == "close":
            return 0


def main(argv=None) -> int:
    p = ExactArgumentParser(prog="python -m bench.idle_client", description=__doc__.split("\n\n")[0])
    p.add_argument("--host", required=True, help="the virtual host to GET / from (port 80 and 443)")
    p.add_argument("--cafile", default=None, help="CA bundle for HTTPS (the proxy's CA)")
    p.add_argument("--parallel", type=int, default=200, help="connections being opened at a time")
    p.add_argument("--max-connections", type=int, default=20000, help="sizes the open-files limit")
    args = p.parse_args(argv)
    if args.parallel < 1 or args.max_connections < 1:
        p.error("--parallel and --max-connections must be >= 1")
    limit = raise_nofile(args.max_connections)
    print(json.dumps({"event": "ready", "open_files_limit": limit}), flush=True)
    return asyncio.run(serve(args))


if __name__ == "__main__":
    sys.exit(main())
