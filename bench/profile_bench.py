"""profile: where the proxy's CPU goes, bare mitmdump vs mitmdump + the tproxy addon, under the egress load.

Both proxies run at once in the node namespace of bench/topology.py (one mitmdump each, the egress
bench's options); the node's nat REDIRECT is switched between them. For each, HTTPS keep-alive and
HTTPS with a new connection per request (bench/loadgen.py, 8 threads): py-spy (a sampling profiler
that reads the process from outside: the proxy runs unmodified) records the process for the measured
window, ``--function --full-filenames --nonblocking``, idle time excluded, so the samples are the
proxy's busy CPU. From the stacks:

- the top frames by *self* samples (the function on the CPU), as a share of the busy samples;
- the **addon's share**: samples with any frame of the repository's ``proxy/`` package on the stack
  (its hooks and everything they call), i.e. what the addon adds to mitmproxy's own request path --
  except time inside the mitmproxy parser that proxy/request_target.py wraps (bare mitmdump parses too);
- the addon's functions by *inclusive* samples (a stack counts once per function).

Plus the CPU per request of each process over the same window (/proc), as a ratio tproxy / bare.
"""

from __future__ import annotations

import collections
import os
import shutil
import subprocess
import sys
import time

import yaml

from bench import common
from bench.proxy_bench import cpu_seconds, make_ca
from bench.topology import Topology, wait_listening

PORTS = {"bare": 8090, "tproxy": 8100}
HOSTS = ("www.google.com", "storage.googleapis.com")
KINDS = (("https", False), ("https", True))
RATE = 200  # samples per second
TOP = 10
PROXY_DIR = os.path.join(common.REPO, "proxy") + os.sep
# proxy/ functions that wrap one of mitmproxy's own (request_target.py wraps the HTTP/1 request-head
# parser): what the wrapped function does, bare mitmdump does too, so it is not the addon's.
WRAPPERS = ("read_request_head_keeping_target",)


def parse_frame(frame: str) -> tuple[str, str]:
    """``"request (/repo/proxy/core.py:310)"`` → ``("request", "/repo/proxy/core.py:310")``."""
    name, _, rest = frame.rpartition(" (")
    if not name:
        return frame, ""
    return name, rest[:-1] if rest.endswith(")") else rest


def short_location(location: str) -> str:
    """A frame's file, shortened to the package path (``mitmproxy/proxy/layers/http/...``)."""
    path, _, line = location.rpartition(":")
    path = path or location
    for marker in ("site-packages" + os.sep, common.REPO + os.sep):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    else:
        if "/lib/python" in path:
            path = "stdlib/" + path.rsplit("/", 1)[-1]
    return f"{path}:{line}" if line.isdigit() else path


def _addon_frames(frames: list[tuple[str, str]], proxy_dir: str, wrappers: tuple) -> list[tuple[str, str]]:
    """The stack's frames in ``proxy_dir``; none when the only ones are wrappers and the sample is
    inside the mitmproxy function they wrap."""
    mine = [(i, f) for i, f in enumerate(frames) if f[1].startswith(proxy_dir)]
    if mine and all(f[0].rsplit(".", 1)[-1] in wrappers for _, f in mine) and mine[-1][0] < len(frames) - 1:
        return []
    return [f for _, f in mine]


def analyse(raw: str, proxy_dir: str = PROXY_DIR, top: int = TOP, wrappers: tuple = WRAPPERS) -> dict:
    """py-spy ``--format raw`` output (``frame;frame;...;leaf COUNT`` per line, root first) → the
    total busy samples, the addon's share, the top self frames and the addon's inclusive frames."""
    total = 0
    addon = 0
    own: collections.Counter = collections.Counter()
    addon_incl: collections.Counter = collections.Counter()
    for line in raw.splitlines():
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [parse_frame(f) for f in stack.split(";")]
        total += n
        name, loc = frames[-1]
        own[f"{name} ({short_location(loc)})"] += n
        mine = {f"{nm} ({short_location(lc)})" for nm, lc in _addon_frames(frames, proxy_dir, wrappers)}
        if mine:
            addon += n
            for key in mine:
                addon_incl[key] += n
    share = (lambda n: round(100.0 * n / total, 1)) if total else (lambda n: None)
    return {
        "samples": total,
        "addon_share_pct": share(addon),
        "top_self": [[frame, share(n)] for frame, n in own.most_common(top)],
        "addon_inclusive": [[frame, share(n)] for frame, n in addon_incl.most_common(top)],
    }


def pyspy_binary() -> str:
    found = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
    if not os.path.exists(found):
        raise common.Skip("py-spy not installed (the bench extra: pip install -e '.[bench]')")
    return found


def run(cfg: common.BenchConfig) -> dict:
    common.need_root()
    pyspy = pyspy_binary()
    duration = cfg.pick(4.0, 10.0)
    concurrency = 8
    topo = Topology(prefix="bpf").up()
    procs: dict[str, subprocess.Popen] = {}
    results: dict = {}
    try:
        confdir = os.path.join(topo.tmp, "mitm")
        mitm_ca = make_ca(confdir)
        bundle = os.path.join(topo.tmp, "client-ca.pem")
        with open(bundle, "w") as out:
            for f in (topo.ca_file, mitm_ca):
                out.write(open(f).read())
        policy = os.path.join(topo.tmp, "policy.yaml")
        with open(policy, "w") as f:
            yaml.safe_dump({"rules": [{"host": h} for h in HOSTS]}, f)
        mitm = [sys.executable, "-c", "from mitmproxy.tools.main import mitmdump; mitmdump()", "--mode", "transparent"]
        mitm += ["-q", "--set", f"confdir={confdir}", "--set", "connection_strategy=lazy"]
        mitm += ["--set", f"ssl_verify_upstream_trusted_ca={topo.ca_file}", "--set", "stream_large_bodies=1m"]
        addon = ["-s", os.path.join(common.REPO, "proxy", "addon.py"), "--set", f"tproxy_policy={policy}"]
        addon += ["--set", "flow_detail=0", "--set", "termlog_verbosity=error"]
        addon += ["--set", f"tproxy_audit={os.path.join(topo.tmp, 'audit.log')}"]
        procs["bare"] = topo.spawn(topo.node, [*mitm, "--listen-port", str(PORTS["bare"])], log="bare.log")
        procs["tproxy"] = topo.spawn(topo.node, [*mitm, *addon, "--listen-port", str(PORTS["tproxy"])], log="tproxy.log")
        for mode, p in procs.items():
            wait_listening(topo.node, PORTS[mode], timeout=60, proc=p)

        def loadgen(new: bool, dur: float, warmup: float) -> dict:
            argv = [sys.executable, "-m", "bench.loadgen", "https://www.google.com/", "-c", str(concurrency)]
            argv += ["-d", str(dur), "--warmup", str(warmup), "--cafile", bundle] + (["--new-connection"] if new else [])
            p = subprocess.run(
                topo.client.exec_argv(argv), capture_output=True, text=True, cwd=common.REPO, timeout=dur + warmup + 60
            )
            if p.returncode != 0:
                raise RuntimeError(f"loadgen failed: {p.stderr[-800:]}")
            import json

            return json.loads(p.stdout)

        for scheme, new in KINDS:
            kind = f"{scheme}{'-new' if new else ''}"
            for mode, proc in procs.items():
                topo.redirect(PORTS[mode])
                loadgen(new, 0.5, 0.2)  # warm: certificates generated, connections pooled
                out = os.path.join(topo.tmp, f"{mode}-{kind}.txt")
                spy = subprocess.Popen(
                    [pyspy, "record", "--pid", str(proc.pid), "--rate", str(RATE), "--duration", str(int(duration + 1))]
                    + ["--format", "raw", "--function", "--full-filenames", "--nonblocking", "-o", out],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                time.sleep(0.5)  # py-spy attaches before the measured window opens
                c0 = cpu_seconds(proc.pid)
                r = loadgen(new, duration, 0.0)
                cpu = cpu_seconds(proc.pid) - c0
                _, err = spy.communicate(timeout=duration + 60)
                if spy.returncode != 0 or not os.path.exists(out):
                    raise RuntimeError(f"py-spy failed on {mode}: {err[-800:]}")
                with open(out) as f:
                    a = analyse(f.read())
                a["rps"] = r["rps"]
                a["statuses"] = r["statuses"]
                a["cpu_ms_per_req"] = cpu * 1000 / r["total_requests"] if r["total_requests"] else None
                results.setdefault(kind, {})[mode] = a
                common.log(f"profile {mode} {kind}: {r['rps']:.0f} req/s, {a['samples']} samples, addon {a['addon_share_pct']} %")
    finally:
        topo.down()
    return summarize(results, duration, concurrency)


def summarize(results: dict, duration: float, concurrency: int) -> dict:
    summary, tables = [], []
    for kind, by_mode in results.items():
        t, b = by_mode.get("tproxy", {}), by_mode.get("bare", {})
        summary.append(
            {"metric": f"{kind}: the addon's share of the proxy's busy CPU samples (%)", "value": t.get("addon_share_pct")}
        )
        summary.append(
            {
                "metric": f"{kind} proxy CPU per request (profiled window): tproxy / bare mitmdump",
                "value": common.ratio(t.get("cpu_ms_per_req"), b.get("cpu_ms_per_req")),
            }
        )
        for mode, a in by_mode.items():
            tables.append(
                {
                    "title": f"Top frames by self samples: {mode} ({kind}, {a['samples']} busy samples)",
                    "columns": ["frame", "% of busy samples"],
                    "rows": a["top_self"],
                }
            )
        if t.get("addon_inclusive"):
            tables.append(
                {
                    "title": f"The addon's functions, inclusive ({kind}; the addon is {t['addon_share_pct']} % in all)",
                    "columns": ["frame", "% of busy samples"],
                    "rows": t["addon_inclusive"],
                }
            )
    notes = [
        f"py-spy {RATE} Hz, --function --nonblocking, idle excluded, {duration} s per mode and kind, "
        f"{concurrency} client threads (bench/loadgen.py) against one mitmdump each; bare and tproxy run "
        "the egress bench's mitmproxy options, tproxy adds the addon (policy allowing the two benchmark hosts).",
        "The addon's share counts every sample with a frame of proxy/ on the stack (its hooks and what they call), "
        "except samples inside mitmproxy's HTTP/1 request-head parser under the addon's wrapper (proxy/request_target.py), "
        "which bare mitmdump runs too.",
    ]
    return {"results": results, "summary": summary, "tables": tables, "notes": notes}
