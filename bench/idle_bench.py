"""idle: thousands of idle keep-alive connections held through the proxy, memory per connection.

A client pod (bench/idle_client.py, one asyncio process in the client netns) opens 1,000, then
5,000, then 10,000 connections (half ``http://``, half ``https://``), each after one completed
``GET /``, and leaves them idle; the node's nat REDIRECT sends them to ``python -m proxy.workers``
(2 workers, the addon, podwatch's ``REDIRECT --to-ports A-B --random``), which holds an upstream
connection to kubesim.upstream for each. At every step the proxy's process tree (the supervisor
and its workers, from /proc) is measured: RSS and open sockets. Then every held connection is
checked: none closed by the proxy, and a second ``GET /`` on each (or a sample) is answered.
The same is done with bare ``mitmdump --mode transparent`` (no addon, no supervisor; 2 processes
behind the same redirect, see :class:`Rig`) in the same run; the figure that carries over is the memory per connection (the slope between steps) and
its ratio tproxy ÷ bare.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys

import yaml

from bench import common
from bench.proxy_bench import make_ca
from bench.topology import Topology, wait_listening

HOST = "www.google.com"
PORTS = {"tproxy": 8120, "bare": 8090}
WORKERS = 2
UPSTREAM_IDLE_TIMEOUT = 3600  # the upstream's default 60 s would close the earliest connections mid-run


def tree_pids(pid: int) -> list[int]:
    """``pid`` and every live descendant."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        if p in parents:
            out.append(p)
            todo += [c for c, pp in parents.items() if pp == p]
    return out


def process_memory(pid: int) -> dict:
    """RSS (kB) and open sockets of one process."""
    rss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    sockets = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            sockets += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
        except OSError:
            continue
    return {"pid": pid, "rss_kb": rss, "sockets": sockets}


def tree_memory(pid: int) -> dict:
    """The process tree's RSS and sockets in total, and per process."""
    procs = []
    for p in tree_pids(pid):
        try:
            procs.append(process_memory(p))
        except OSError:  # exited between the listing and the read
            continue
    return {"rss_kb": sum(p["rss_kb"] for p in procs), "sockets": sum(p["sockets"] for p in procs), "processes": procs}


class IdleClient:
    """bench/idle_client.py in the client netns, one JSON command and answer at a time."""

    def __init__(self, topo: Topology, cafile: str, max_connections: int):
        self.log = os.path.join(topo.tmp, "idle-client.log")
        err = open(self.log, "ab")
        argv = [sys.executable, "-m", "bench.idle_client", "--host", HOST, "--cafile", cafile]
        argv += ["--max-connections", str(max_connections)]
        self.proc = topo.client.popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True, cwd=common.REPO)
        err.close()
        topo.procs.append(self.proc)
        self.ready = self._read()

    def _read(self) -> dict:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            with open(self.log, errors="replace") as f:
                raise RuntimeError(f"idle client exited {self.proc.poll()}: {f.read()[-1500:]}")
        return json.loads(line)

    def send(self, **cmd) -> dict:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        out = self._read()
        if "error" in out:
            raise RuntimeError(f"idle client: {out['error']}")
        return out

    def close(self) -> dict:
        out = self.send(op="close")
        self.proc.wait(30)
        return out


class Rig:
    """The topology, tproxy's supervisor with 2 workers and (``bare=True``) 2 bare mitmdumps.

    The bare baseline is the same layout without the supervisor and the addon: one plain
    ``mitmdump`` per port of its own range behind the same ``--random`` redirect. One process
    would also do, but it holds 2 descriptors per connection: 10,000 connections need more than
    a common hard limit of 20,000 open files (which an unprivileged container cannot raise).
    """

    def __init__(self, prefix: str = "bid", bare: bool = True, workers: int = WORKERS, supervisor_nofile: int = 0):
        self.workers = workers
        self.supervisor_nofile = supervisor_nofile  # >0: start proxy.workers with this soft limit
        self.topo = Topology(prefix=prefix).up(upstream_args=("--idle-timeout", str(UPSTREAM_IDLE_TIMEOUT)))
        self.procs: dict[str, list[subprocess.Popen]] = {}
        try:
            self._start(bare)
        except BaseException:
            self.topo.down()
            raise

    def _start(self, bare: bool) -> None:
        topo = self.topo
        confdir = os.path.join(topo.tmp, "mitm")
        mitm_ca = make_ca(confdir)
        self.bundle = os.path.join(topo.tmp, "client-ca.pem")
        with open(self.bundle, "w") as out:
            for f in (topo.ca_file, mitm_ca):
                with open(f) as src:
                    out.write(src.read())
        policy = os.path.join(topo.tmp, "policy.yaml")
        with open(policy, "w") as f:
            yaml.safe_dump({"rules": [{"host": HOST}]}, f)
        mitm = ["--mode", "transparent", "-q", "--set", f"confdir={confdir}", "--set", "connection_strategy=lazy"]
        mitm += ["--set", f"ssl_verify_upstream_trusted_ca={topo.ca_file}", "--set", "stream_large_bodies=1m"]
        self.supervisor_log = "tproxy.log"
        limit = []
        if self.supervisor_nofile:
            hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
            limit = ["prlimit", f"--nofile={self.supervisor_nofile}:{hard}", "--"]
        self.procs["tproxy"] = [
            topo.spawn(
                topo.node,
                limit
                + [sys.executable, "-m", "proxy.workers", "--workers", str(self.workers), "--port", str(PORTS["tproxy"])]
                + ["--audit", os.path.join(topo.tmp, "audit.log"), "--", *mitm]
                + ["-s", os.path.join(common.REPO, "proxy", "addon.py"), "--set", f"tproxy_policy={policy}"]
                + ["--set", "flow_detail=0", "--set", "termlog_verbosity=error"],
                log=self.supervisor_log,
            )
        ]
        if bare:
            bare_argv = [sys.executable, "-c", "from mitmproxy.tools.main import mitmdump; mitmdump()", *mitm]
            self.procs["bare"] = [
                topo.spawn(topo.node, bare_argv + ["--listen-port", str(PORTS["bare"] + i)], log=f"bare-{i}.log")
                for i in range(self.workers)
            ]
        for mode, procs in self.procs.items():
            for i in range(self.workers):
                try:
                    wait_listening(topo.node, PORTS[mode] + i, timeout=60, proc=procs[min(i, len(procs) - 1)])
                except Exception as e:
                    raise RuntimeError(f"{mode} did not start: {e}; log: {topo.log_tail('tproxy.log')}") from e

    def redirect(self, mode: str) -> None:
        """podwatch's rule for the client: the worker range (tproxy) or the bare proxy's port."""
        port = PORTS[mode]
        self.topo.redirect(f"{port}-{port + self.workers - 1}" if self.workers > 1 else port)

    def memory(self, mode: str) -> dict:
        trees = [tree_memory(p.pid) for p in self.procs[mode]]
        return {
            "rss_kb": sum(t["rss_kb"] for t in trees),
            "sockets": sum(t["sockets"] for t in trees),
            "processes": [p for t in trees for p in t["processes"]],
        }

    def upstream_memory(self) -> dict:
        return tree_memory(self.topo.upstream.pid)

    def events(self, name: str) -> list[dict]:
        out = []
        for line in self.topo.log_tail(self.supervisor_log, 10**8).splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and rec.get("event") == name:
                out.append(rec)
        return out

    def down(self) -> None:
        self.topo.down()


def hold(rig: Rig, mode: str, steps: list[int], sample: int, deadline: float | None = None) -> dict:
    """Open connections up to each step through ``mode``, measure, then check every one; close them."""
    rig.redirect(mode)
    client = IdleClient(rig.topo, rig.bundle, steps[-1])
    try:
        warm = client.send(op="open", http=2, https=2)  # certificates generated, code paths loaded
        if warm["opened"] != 4:
            raise RuntimeError(f"{mode}: warm-up connections failed: {warm}")
        points = [{"connections": 0, **_point(rig, mode, warm)}]
        held = warm["held"]
        failed: dict = {}
        for n in steps:
            more = n - (held - 4)
            r = client.send(op="open", http=more // 2, https=more - more // 2, deadline=deadline)
            held = r["held"]
            for k, v in r["failed"].items():
                failed[k] = failed.get(k, 0) + v
            points.append({"connections": held - 4, **_point(rig, mode, r)})
            common.log(
                f"idle {mode}: {held - 4} held, proxy RSS {points[-1]['rss_kb'] / 1024:.0f} MB, "
                f"{points[-1]['sockets']} sockets, failed {r['failed']}"
            )
        check = client.send(op="check", sample=sample)
    finally:
        if client.proc.poll() is None:
            client.close()
    for a, b in zip(points, points[1:]):
        b["kb_per_connection"] = round((b["rss_kb"] - a["rss_kb"]) / max(1, b["connections"] - a["connections"]), 3)
    return {"points": points, "failed": failed, "check": check, "client_open_files_limit": client.ready["open_files_limit"]}


def _point(rig: Rig, mode: str, r: dict) -> dict:
    m = rig.memory(mode)
    return {
        "rss_kb": m["rss_kb"],
        "sockets": m["sockets"],
        "per_process_rss_kb": [p["rss_kb"] for p in m["processes"]],
        "per_process_sockets": [p["sockets"] for p in m["processes"]],
        "upstream_rss_kb": rig.upstream_memory()["rss_kb"],
        "statuses": r["statuses"],
    }


def slope(points: list[dict], start: int = 1) -> float | None:
    """kB per connection from ``points[start]`` to the last point."""
    a, b = points[start], points[-1]
    if b["connections"] == a["connections"]:
        return None
    return round((b["rss_kb"] - a["rss_kb"]) / (b["connections"] - a["connections"]), 3)


def run(cfg: common.BenchConfig) -> dict:
    common.need_root()
    steps = cfg.pick([200, 600], [1000, 5000, 10000])
    sample = cfg.pick(0, 0)  # every held connection gets its second request
    rig = Rig()
    res: dict = {"steps": steps, "workers": WORKERS, "modes": {}}
    try:
        for mode in ("tproxy", "bare"):
            res["modes"][mode] = hold(rig, mode, steps, sample)
        res["worker_exits"] = len(rig.events("worker_exited"))
        res["open_files_limit_raised"] = rig.events("open_files_limit_raised")
    finally:
        rig.down()
    return summarize(res)


def summarize(res: dict) -> dict:
    rows, summary = [], []
    per_conn = {}
    for mode, r in res["modes"].items():
        pts = r["points"]
        per_conn[mode] = slope(pts)
        for p in pts:
            rows.append(
                [
                    mode,
                    p["connections"],
                    round(p["rss_kb"] / 1024, 1),
                    p.get("kb_per_connection"),
                    p["sockets"],
                    round(p["upstream_rss_kb"] / 1024, 1),
                ]
            )
        c = r["check"]
        summary.append(
            {
                "metric": f"{mode}: connections closed by the proxy while idle (of {c['held']})",
                "value": c["closed_by_peer"],
                "target": "0",
            }
        )
        summary.append(
            {
                "metric": f"{mode}: second requests answered 200 (of {c['checked']} checked)",
                "value": c["statuses"].get("200", 0),
            }
        )
        summary.append(
            {
                "metric": f"{mode}: kB per idle connection ({pts[1]['connections']}→{pts[-1]['connections']})",
                "value": per_conn[mode],
            }
        )
    summary.append(
        {"metric": "kB per idle connection: tproxy ÷ bare mitmdump", "value": common.ratio(per_conn["tproxy"], per_conn["bare"])}
    )
    notes = [
        f"Connections half http://, half https://, each after one completed GET /, then idle; tproxy = "
        f"proxy.workers with {res['workers']} workers + addon (RSS = supervisor + workers), bare = {res['workers']} "
        "plain mitmdumps (no addon, no supervisor) behind the same --random redirect. kB per connection = RSS slope between steps; the headline is from the first step to the last.",
        "Every connection holds 2 sockets in the proxy (the pod's and the upstream's); the upstream (kubesim.upstream) "
        "runs one thread per connection and closes none during the run (--idle-timeout "
        f"{UPSTREAM_IDLE_TIMEOUT}).",
    ]
    bad = {m: r["failed"] for m, r in res["modes"].items() if r["failed"] or r["check"]["failed"]}
    if bad:
        notes.append(f"failed connections or second requests: {bad}")
        res["status"] = f"ok (with failed connections in {', '.join(sorted(bad))})"
    res.update(
        summary=summary,
        tables=[
            {
                "title": "Idle keep-alive connections held: proxy RSS per step",
                "columns": ["mode", "connections", "proxy RSS MB", "kB/conn since previous", "proxy sockets", "upstream RSS MB"],
                "rows": rows,
            }
        ],
        plots=[
            {
                "file": "idle_rss.png",
                "kind": "line",
                "title": "idle connections: proxy RSS (MB)",
                "series": {
                    m: [[p["connections"], round(p["rss_kb"] / 1024, 1)] for p in r["points"]] for m, r in res["modes"].items()
                },
            }
        ],
        notes=notes,
    )
    return res
