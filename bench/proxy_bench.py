"""proxy: direct vs bare ``mitmdump --mode transparent`` vs our addon (10 and 10,000 rules).

All proxies run at once in the node namespace on their own ports; the node's REDIRECT is switched
between them, and the rounds interleave the modes (direct, bare, addon-10, addon-10k, direct, …),
so drift in the machine's load hits every mode alike. Small requests: keep-alive GETs of
``www.google.com/`` (a ~100-byte page) over HTTP and HTTPS from a client namespace with N threads
(bench/loadgen.py). Large download: ``/bytes/N`` with curl, throughput and the proxy's RSS sampled
every 50 ms.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import yaml

from bench import common
from bench.topology import Topology, wait_listening

ADDON = os.path.join(common.REPO, "proxy", "addon.py")
MODES = ("direct", "bare", "addon-10", "addon-10k")
PORTS = {"bare": 8080, "addon-10": 8081, "addon-10k": 8082}


def make_policy(n_rules: int) -> dict:
    """An allow policy of ``n_rules`` rules: half exact hosts, half wildcards; the host under test last."""
    rules = []
    for i in range(n_rules - 2):
        rules.append({"host": f"host-{i}.example.net"} if i % 2 else {"host": f"*.svc{i}.example.org"})
    rules.append({"host": "storage.googleapis.com", "paths": ["/solutions-public-assets/"]})
    rules.append({"host": "www.google.com"})
    return {"mode": "enforce", "rules": rules}


def make_ca(confdir: str) -> str:
    """Generate mitmproxy's CA once so every proxy instance (and the client) shares it."""
    from mitmproxy import certs

    os.makedirs(confdir, exist_ok=True)
    certs.CertStore.from_store(confdir, "mitmproxy", 2048)
    return os.path.join(confdir, "mitmproxy-ca-cert.pem")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all threads), from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process in kB."""
    rss = hwm = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
    return rss, hwm


def run(cfg: common.BenchConfig) -> dict:
    common.need_root()
    if not os.path.exists(os.path.join(common.REPO, "kubesim", "upstream.py")):
        raise common.Skip("kubesim/upstream.py not found")
    have_addon = os.path.exists(ADDON)
    duration = cfg.pick(1.5, 2.0)
    rounds = cfg.pick(1, max(cfg.repeats, 12))  # many short interleaved rounds: paired ratios resist load bursts
    concurrency = 8
    dl_bytes = cfg.pick(64 * 2**20, 2**30)
    modes = [m for m in MODES if have_addon or not m.startswith("addon")]
    topo = Topology().up()
    res: dict = {"modes": modes, "concurrency": concurrency, "duration_s": duration, "rounds": rounds, "download_bytes": dl_bytes}
    notes = [
        f"keep-alive GETs with {concurrency} client threads (one persistent connection each), "
        f"{duration} s measured per mode and scheme per round after a 0.5 s warm-up, {rounds} interleaved round(s); "
        "one unrecorded warm-up pass over all modes first; req/s are medians over rounds; ratios are *paired* (A ÷ B within each round, then the median); "
        "latency percentiles over all requests of all rounds. Proxy CPU ms/req = the mitmdump process's user+system "
        "time over a run ÷ the requests it served (warm-up included): robust to other jobs on the machine.",
        "the load generator is pure Python: its own ceiling caps the *direct* figure, so proxy/direct "
        "understates the gap; bare/addon ratios are unaffected (both far below the ceiling).",
        "proxies: mitmdump 11.0.2 --mode transparent, connection_strategy=lazy, stream_large_bodies=1m (as proxy/Dockerfile), upstream TLS verified "
        "against the test CA; addon = proxy/addon.py with a policy of 10 or 10,000 rules "
        "(half exact hosts, half *. wildcards, the host under test last).",
    ]
    if not have_addon:
        res["addon_status"] = "skipped: proxy/addon.py not found"
        notes.append("addon modes skipped: proxy/addon.py not found")
    try:
        confdir = os.path.join(topo.tmp, "mitm")
        mitm_ca = make_ca(confdir)
        bundle = os.path.join(topo.tmp, "client-ca.pem")
        with open(bundle, "w") as out:
            for f in (topo.ca_file, mitm_ca):
                out.write(open(f).read())
        procs = {}
        base = [
            sys.executable,
            "-c",
            "from mitmproxy.tools.main import mitmdump; mitmdump()",
            "--mode",
            "transparent",
            "-q",
            "--set",
            f"confdir={confdir}",
            "--set",
            "connection_strategy=lazy",
            "--set",
            f"ssl_verify_upstream_trusted_ca={topo.ca_file}",
        ]
        for mode in modes:
            if mode == "direct":
                continue
            argv = base + ["--listen-port", str(PORTS[mode]), "--set", "stream_large_bodies=1m"]
            if mode.startswith("addon"):
                pol = os.path.join(topo.tmp, f"policy-{mode}.yaml")
                with open(pol, "w") as f:
                    yaml.safe_dump(make_policy(10 if mode == "addon-10" else 10_000), f)
                argv += ["-s", ADDON, "--set", f"tproxy_policy={pol}"] + addon_extra_args(mode)
            procs[mode] = topo.spawn(topo.node, argv, log=f"{mode}.log")
        for mode, p in procs.items():
            try:
                wait_listening(topo.node, PORTS[mode], timeout=60, proc=p)
            except Exception as e:
                raise RuntimeError(f"{mode} proxy did not start: {e}; log: {topo.log_tail(mode + '.log')}") from e

        def loadgen(scheme: str, dur: float, warmup: float) -> dict:
            argv = [
                sys.executable,
                "-m",
                "bench.loadgen",
                f"{scheme}://www.google.com/",
                "-c",
                str(concurrency),
                "-d",
                str(dur),
                "--warmup",
                str(warmup),
                "--cafile",
                bundle,
            ]
            p = subprocess.run(
                topo.client.exec_argv(argv), capture_output=True, text=True, cwd=common.REPO, timeout=dur + warmup + 60
            )
            if p.returncode != 0:
                raise RuntimeError(f"loadgen failed: {p.stderr[-800:]}")
            return json.loads(p.stdout)

        raw: dict = {m: {"http": [], "https": []} for m in modes}
        # Warm-up pass, not recorded: each proxy mints its leaf certificate, fills its caches and
        # the interpreter settles before any mode is measured.
        for mode in modes:
            topo.redirect(PORTS.get(mode))
            for scheme in ("http", "https"):
                loadgen(scheme, 0.5, 0.5)
        for rnd in range(rounds):
            for mode in modes:
                topo.redirect(PORTS.get(mode))
                for scheme in ("http", "https"):
                    pid = procs[mode].pid if mode in procs else None
                    c0 = cpu_seconds(pid) if pid else None
                    r = loadgen(scheme, duration, 0.5)
                    if pid and r["total_requests"]:
                        r["cpu_ms_per_req"] = (cpu_seconds(pid) - c0) * 1000 / r["total_requests"]
                    raw[mode][scheme].append(r)
                    common.log(
                        f"proxy round {rnd + 1} {mode} {scheme}: {r['rps']:.0f} req/s "
                        f"statuses={r['statuses']} errors={r['errors']}"
                    )
        small: dict = {}
        for mode in modes:
            small[mode] = {}
            for scheme in ("http", "https"):
                runs = raw[mode][scheme]
                lats = [x for r in runs for x in r["latencies_s"]]
                statuses: dict = {}
                errors: dict = {}
                for r in runs:
                    for k, v in r["statuses"].items():
                        statuses[k] = statuses.get(k, 0) + v
                    for k, v in r["errors"].items():
                        errors[k] = errors.get(k, 0) + v
                small[mode][scheme] = {
                    "rps": common.spread(r["rps"] for r in runs),
                    "proxy_cpu_ms_per_req": common.spread(r.get("cpu_ms_per_req") for r in runs),
                    "latency": common.latency_summary(lats),
                    "statuses": statuses,
                    "errors": errors,
                    "latency_sample_ms": common.quantile_sample(lats),
                }
        res["small"] = small
        # Paired ratios: mode A ÷ mode B within each round (seconds apart), then their median —
        # sturdier on a shared machine than a ratio of medians taken minutes apart.
        pairs = [("addon-10", "bare"), ("addon-10k", "addon-10"), ("addon-10k", "bare"), ("bare", "direct")]
        res["paired_ratios"] = {
            f"{a}/{b}": {
                sc: common.spread(ra["rps"] / rb["rps"] for ra, rb in zip(raw[a][sc], raw[b][sc]) if ra["rps"] and rb["rps"])
                for sc in ("http", "https")
            }
            for a, b in pairs
            if a in raw and b in raw
        }
        # CPU per request of the proxy process: far less sensitive to other jobs on the machine
        # than wall-clock throughput (it counts the proxy's own work, not its waiting for a core).
        res["paired_cpu_ratios"] = {
            f"{a}/{b}": {
                sc: common.spread(
                    ra["cpu_ms_per_req"] / rb["cpu_ms_per_req"]
                    for ra, rb in zip(raw[a][sc], raw[b][sc])
                    if ra.get("cpu_ms_per_req") and rb.get("cpu_ms_per_req")
                )
                for sc in ("http", "https")
            }
            for a, b in pairs[:3]
            if a in raw and b in raw
        }

        # -- large streamed download -----------------------------------------------------------
        dl: dict = {}
        for mode in modes:
            if mode == "addon-10k":
                continue
            topo.redirect(PORTS.get(mode))
            pid = procs[mode].pid if mode in procs else None
            before = rss_kb(pid) if pid else None
            peak = [0]
            stop = threading.Event()

            def sample():
                while not stop.is_set():
                    try:
                        peak[0] = max(peak[0], rss_kb(pid)[0])
                    except OSError:
                        return
                    stop.wait(0.05)

            t = threading.Thread(target=sample, daemon=True)
            if pid:
                t.start()
            argv = [
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "--max-time",
                "300",
                "-w",
                "%{http_code} %{size_download} %{time_total} %{speed_download}",
                f"http://www.google.com/bytes/{dl_bytes}",
            ]
            p = subprocess.run(topo.client.exec_argv(argv), capture_output=True, text=True, timeout=320)
            stop.set()
            if pid:
                t.join()
            code, size, total, speed = (p.stdout.split() + ["0"] * 4)[:4]
            dl[mode] = {
                "status": int(code),
                "bytes": int(size),
                "time_s": float(total),
                "mb_per_s": round(float(speed) / 2**20, 1),
                "rss_before_mb": round(before[0] / 1024, 1) if before else None,
                "rss_peak_mb": round(peak[0] / 1024, 1) if pid else None,
                "rss_growth_mb": round((peak[0] - before[0]) / 1024, 1) if pid else None,
            }
            common.log(f"proxy download {mode}: {dl[mode]}")
        res["download"] = dl
    finally:
        topo.down()

    # -- ratios --------------------------------------------------------------------------------
    def med(mode, scheme):
        return res["small"].get(mode, {}).get(scheme, {}).get("rps", {}).get("median")

    def paired(a, b, scheme):
        if a == b:
            return 1.0
        return res["paired_ratios"].get(f"{a}/{b}", {}).get(scheme, {}).get("median")

    summary, rows = [], []
    for scheme in ("http", "https"):
        for mode in modes:
            s = res["small"][mode][scheme]
            rows.append(
                [
                    scheme,
                    mode,
                    s["rps"]["median"],
                    s["rps"]["rel_spread"],
                    s["proxy_cpu_ms_per_req"]["median"],
                    s["latency"]["p50_ms"],
                    s["latency"]["p99_ms"],
                    paired(mode, "bare", scheme) if mode != "direct" else None,
                    json.dumps(s["statuses"]),
                    json.dumps(s["errors"]) if s["errors"] else "",
                ]
            )
        if have_addon:
            summary.append(
                {
                    "metric": f"{scheme} keep-alive req/s: addon-10 / bare mitmdump",
                    "value": paired("addon-10", "bare", scheme),
                    "target": "≥ 0.90",
                }
            )
            summary.append(
                {
                    "metric": f"{scheme} keep-alive req/s: addon-10k / addon-10",
                    "value": paired("addon-10k", "addon-10", scheme),
                    "target": "≥ 0.95",
                }
            )
            # The same targets read as CPU time: the proxy's own work per request, the figure least
            # disturbed by other jobs on a shared machine (req/s also moves with the scheduler).
            for a_, b_, target in (("addon-10", "bare", "≤ 1.10"), ("addon-10k", "addon-10", "≤ 1.05")):
                summary.append(
                    {
                        "metric": f"{scheme} proxy CPU per request: {a_} / {b_}",
                        "value": res["paired_cpu_ratios"].get(f"{a_}/{b_}", {}).get(scheme, {}).get("median"),
                        "target": target,
                    }
                )
        summary.append(
            {"metric": f"{scheme} keep-alive req/s: bare mitmdump / direct", "value": paired("bare", "direct", scheme)}
        )
    dmode = "addon-10" if "addon-10" in dl else "bare"
    if dl.get(dmode) and dl.get("direct"):
        summary.append(
            {
                "metric": f"download throughput {dmode} / direct ({dl_bytes // 2**20} MB)",
                "value": common.ratio(dl[dmode]["mb_per_s"], dl["direct"]["mb_per_s"]),
            }
        )
        summary.append(
            {
                "metric": f"{dmode} peak RSS during the {dl_bytes // 2**20} MB download",
                "value": dl[dmode]["rss_peak_mb"],
                "unit": "MB",
            }
        )
    tables = [
        {
            "title": "Small keep-alive requests",
            "columns": [
                "scheme",
                "mode",
                "req/s (median)",
                "spread ±rel",
                "proxy CPU ms/req",
                "p50 ms",
                "p99 ms",
                "÷ bare (paired)",
                "statuses",
                "errors",
            ],
            "rows": rows,
        },
        {
            "title": "Paired ratios of req/s (per round, then median and spread)",
            "columns": ["ratio", "scheme", "median", "min", "max", "rounds"],
            "rows": [
                [k, sc, v["median"], v["min"], v["max"], len(v["runs"])]
                for k, d in res["paired_ratios"].items()
                for sc, v in d.items()
            ],
        },
        {
            "title": "Paired ratios of the proxy's CPU time per request (per round, then median and spread)",
            "columns": ["ratio", "scheme", "median", "min", "max", "rounds"],
            "rows": [
                [k, sc, v["median"], v["min"], v["max"], len(v["runs"])]
                for k, d in res["paired_cpu_ratios"].items()
                for sc, v in d.items()
            ],
        },
        {
            "title": f"Streamed download of {dl_bytes:,} bytes (plain HTTP, curl)",
            "columns": ["mode", "HTTP status", "bytes", "MB/s", "proxy RSS before (MB)", "peak (MB)", "growth (MB)"],
            "rows": [
                [m, d["status"], d["bytes"], d["mb_per_s"], d["rss_before_mb"], d["rss_peak_mb"], d["rss_growth_mb"]]
                for m, d in dl.items()
            ],
        },
    ]
    plots = [
        {
            "file": "proxy_rps.png",
            "kind": "bar",
            "title": "proxy: keep-alive req/s (median)",
            "ylabel": "req/s",
            "series": {f"{m} {s}": med(m, s) for s in ("http", "https") for m in modes},
        },
        {
            "file": "proxy_vs_bare.png",
            "kind": "bar",
            "title": "proxy: keep-alive req/s ÷ bare mitmdump (same run)",
            "ylabel": "ratio",
            "series": {f"{m} {s}": paired(m, "bare", s) for s in ("http", "https") for m in modes if m != "direct"},
        },
        {
            "file": "proxy_latency.png",
            "kind": "cdf",
            "logx": True,
            "title": "proxy: HTTPS latency distribution",
            "xlabel": "ms",
            "ylabel": "fraction",
            "series": {m: res["small"][m]["https"]["latency_sample_ms"] for m in modes},
        },
    ]
    res.update(summary=summary, tables=tables, plots=plots, notes=notes)
    bad = {f"{m}/{sc}": res["small"][m][sc]["errors"] for m in modes for sc in ("http", "https") if res["small"][m][sc]["errors"]}
    non200 = {
        f"{m}/{sc}": res["small"][m][sc]["statuses"]
        for m in modes
        for sc in ("http", "https")
        if set(res["small"][m][sc]["statuses"]) - {"200"}
    }
    if bad or non200:
        notes.append(f"request errors (a request stuck > 3 s counts as TimeoutError): {bad}; non-200: {non200}")
    if not have_addon:
        res["status"] = "ok (addon skipped: proxy/addon.py not found)"
    elif bad or non200:
        res["status"] = f"ok (with request errors in {', '.join(sorted(set(bad) | set(non200)))})"
    return res


def addon_extra_args(mode: str) -> list[str]:
    """Options our addon needs to run twice on one node (filled in from the addon's options)."""
    return []
