"""podwatch: rule sync time and programming latency, tproxy vs the original per-pod algorithm.

Each (algorithm, pod count) runs in a fresh network namespace (``bench.podwatch_worker``), from a
process inside the namespace calling the iptables binaries, as the real controllers do:
- *sync*: from an empty table to N annotated pods programmed. Ours = render the whole state and
  one ``iptables-restore --noflush``; original = per pod ``iptables -t nat -L PREROUTING --line-numbers``
  + regex + one ``iptables -A`` per port (``bench/podwatch_original.py``, the Go ``syncFirewall`` in Python,
  flaws kept on purpose).
- *programming latency*: with N pods programmed, a new pod gets its IP; time from "pod IP known"
  to "rules applied", measured by timing the render+apply path (not through the API server), so
  it excludes watch delivery and the controller's coalescing interval.
"""

from __future__ import annotations

import json
import subprocess
import sys

from bench import common


def _worker(algo: str, pods: int, *, latency_samples: int = 0, resyncs: int = 0, time_cap: float = 120) -> dict:
    from kubesim.netns import Netns

    ns = Netns.create("bpw")
    try:
        argv = [
            sys.executable,
            "-m",
            "bench.podwatch_worker",
            "--algo",
            algo,
            "--pods",
            str(pods),
            "--latency-samples",
            str(latency_samples),
            "--resyncs",
            str(resyncs),
            "--time-cap",
            str(time_cap),
        ]
        p = subprocess.run(ns.exec_argv(argv), capture_output=True, text=True, cwd=common.REPO, timeout=time_cap + 120)
        if p.returncode != 0:
            raise RuntimeError(f"podwatch worker ({algo}, {pods}) exited {p.returncode}: {p.stderr[-800:]}")
        return json.loads(p.stdout.strip().splitlines()[-1])
    finally:
        ns.delete()


def run(cfg: common.BenchConfig) -> dict:
    common.need_root()
    sizes = cfg.pick([10, 100, 300], [10, 100, 1000, 5000])
    lat_at = cfg.pick(300, 1000)
    lat_samples = cfg.pick(20, 100)
    cap = cfg.pick(20.0, 240.0)
    res: dict = {"sizes": sizes, "latency_at_pods": lat_at, "ours": {}, "original": {}}
    notes = [
        "sync = empty table → N annotated pods programmed, each algorithm in a fresh netns, "
        "from a process inside it calling iptables via subprocess (iptables-nft here).",
        "ours = one render of the full state + one iptables-restore --noflush per table (podwatch.rules); "
        "original = per pod iptables -t nat -L PREROUTING --line-numbers + regex + one iptables -A per port "
        "(bench/podwatch_original.py: the original Go syncFirewall, flaws kept, baseline only).",
        f"programming latency = time to program one new pod with {lat_at} pods present, timed around the "
        "render+apply path (not through the API server: excludes watch delivery and coalescing).",
    ]
    ours_skip = None
    for n in sizes:
        for algo in ("ours", "original"):
            if algo == "ours" and ours_skip:
                continue
            reps = cfg.repeats if (algo == "ours" or n <= 100) else 1
            runs = []
            for rep in range(reps):  # latency samples once per (algo, size): they are many already
                r = _worker(
                    algo,
                    n,
                    latency_samples=lat_samples if (n == lat_at and rep == 0) else 0,
                    resyncs=cfg.pick(1, 3) if algo == "ours" else 0,
                    time_cap=cap,
                )
                if "skipped" in r:
                    ours_skip = r["skipped"]
                    break
                runs.append(r)
            if not runs:
                continue
            common.log(
                f"podwatch {algo} {n} pods: sync {[round(r['sync_s'], 3) for r in runs]} s"
                + (" (capped)" if runs[0]["capped"] else "")
            )
            entry = {
                "sync_s": common.spread(r["sync_s"] for r in runs),
                "pods_done": runs[0]["pods_done"],
                "capped": runs[0]["capped"],
                "redirect_rules": runs[0]["redirect_rules"],
            }
            if runs[0]["capped"]:
                d = runs[0]["pods_done"]
                entry["note"] = f"stopped after {cap:.0f} s with {d} of {n} pods programmed; its sync time is a lower bound"
            if any("resync_s" in r for r in runs):
                entry["resync_s"] = common.spread(x for r in runs for x in r.get("resync_s", []))
            lats = [x for r in runs for x in r.get("latency_s", [])]
            if lats:
                entry["latency"] = common.latency_summary(lats)
                entry["latency_samples_ms"] = [round(x * 1000, 3) for x in lats]
            res[algo][str(n)] = entry
    for n in sizes:
        note = res["original"].get(str(n), {}).get("note")
        if note:
            notes.append(f"original at {n:,} pods: {note}")
    if ours_skip:
        res["ours_status"] = f"skipped: {ours_skip}"
        notes.append(f"ours skipped: {ours_skip}")

    # End to end through the real controller (kubesim + python -m podwatch in one fresh netns).
    if not ours_skip:
        e2e_samples = cfg.pick(10, 50)
        try:
            from kubesim.netns import Netns

            common.need_module("podwatch.controller")
            common.need_module("kubesim.apiserver.cli")
            ns = Netns.create("bpe")
            try:
                argv = [sys.executable, "-m", "bench.podwatch_e2e_worker", "--pods", str(lat_at), "--samples", str(e2e_samples)]
                p = subprocess.run(ns.exec_argv(argv), capture_output=True, text=True, cwd=common.REPO, timeout=300)
            finally:
                ns.delete()
            if p.returncode != 0:
                raise RuntimeError(f"e2e worker exited {p.returncode}: {p.stderr[-800:]}")
            e2e = json.loads(p.stdout.strip().splitlines()[-1])
            res["e2e"] = {
                "pods": lat_at,
                "initial_program_s": e2e["initial_program_s"],
                "latency": common.latency_summary(e2e["latency_s"]),
                "latency_samples_ms": [round(x * 1000, 3) for x in e2e["latency_s"]],
            }
            common.log(f"podwatch e2e at {lat_at} pods: {res['e2e']['latency']}")
        except common.Skip as e:
            res["e2e"] = {"status": f"skipped: {e}"}
        notes.append(
            "end to end = through the real controller: kubesim + `python -m podwatch` in one fresh netns; "
            "time from the API server accepting the pod's status with its podIP to the rule being visible "
            "in `iptables -t nat -S` (polled every 20 ms): watch delivery + coalescing (min-sync-interval "
            "0.1 s) + sync. No end-to-end figure for the original: it was never a controller here."
        )

    rows, summary = [], []
    for n in sizes:
        o, b = res["ours"].get(str(n)), res["original"].get(str(n))
        so = o["sync_s"]["median"] if o else None
        sb = b["sync_s"]["median"] if b else None
        sp = common.ratio(sb, so, 1)
        rows.append(
            [
                n,
                so,
                (o or {}).get("sync_s", {}).get("rel_spread"),
                sb,
                ("≥ " if b and b["capped"] else "") + (str(sp) if sp is not None else "–"),
                (o or {}).get("redirect_rules"),
                (b or {}).get("redirect_rules"),
            ]
        )
        if n == lat_at and sp is not None:
            summary.append({"metric": f"sync speed-up vs original at {n:,} pods (×)", "value": sp, "target": "≥ 20 at 1,000"})
        if n == 5000 and sp is not None:
            summary.append(
                {
                    "metric": "sync speed-up vs original at 5,000 pods (×)" + (" (lower bound)" if b and b["capped"] else ""),
                    "value": sp,
                }
            )
    tables = [
        {
            "title": "Sync time (s, median) from empty to N pods",
            "columns": ["pods", "ours (s)", "ours spread (±rel)", "original (s)", "speed-up ×", "ours rules", "original rules"],
            "rows": rows,
        }
    ]
    lo, lb = res["ours"].get(str(lat_at), {}).get("latency"), res["original"].get(str(lat_at), {}).get("latency")
    le = (res.get("e2e") or {}).get("latency")
    if lo or lb or le:
        tables.append(
            {
                "title": f"Programming latency of one new pod with {lat_at} pods present (ms)",
                "columns": ["algorithm", "n", "p50", "p90", "p99", "max"],
                "rows": [
                    [name, l["n"], l["p50_ms"], l["p90_ms"], l["p99_ms"], l["max_ms"]]
                    for name, l in (
                        ("ours, render+apply path", lo),
                        ("original, per-pod path", lb),
                        ("ours, end to end via the controller", le),
                    )
                    if l
                ],
            }
        )
    if le:
        summary.append(
            {
                "metric": f"programming latency p99 at {lat_at} pods, end to end via the controller",
                "value": le["p99_ms"],
                "unit": "ms",
                "target": "≤ 250 ms at 1,000",
            }
        )
    if lo:
        summary.append(
            {
                "metric": f"programming latency p99 at {lat_at} pods (ours, render+apply path)",
                "value": lo["p99_ms"],
                "unit": "ms",
                "target": "≤ 250 ms at 1,000",
            }
        )
    if lo and lb:
        summary.append(
            {
                "metric": f"programming latency p50 ratio original/ours at {lat_at} pods",
                "value": common.ratio(lb["p50_ms"], lo["p50_ms"], 2),
            }
        )
    plots = [
        {
            "file": "podwatch_sync.png",
            "kind": "line",
            "title": "podwatch: sync time vs pods",
            "xlabel": "annotated pods",
            "ylabel": "sync time (s)",
            "logx": True,
            "logy": True,
            "series": {
                _label(res, name): [[n, res[name][str(n)]["sync_s"]["median"]] for n in sizes if str(n) in res[name]]
                for name in ("ours", "original")
                if res[name]
            },
        }
    ]
    cdf = {
        name: res[name][str(lat_at)]["latency_samples_ms"]
        for name in ("ours", "original")
        if "latency_samples_ms" in res[name].get(str(lat_at), {})
    }
    if le:
        cdf["ours end to end"] = res["e2e"]["latency_samples_ms"]
    if cdf:
        plots.append(
            {
                "file": "podwatch_latency.png",
                "kind": "cdf",
                "logx": True,
                "title": f"podwatch: programming latency at {lat_at} pods",
                "xlabel": "ms",
                "ylabel": "fraction",
                "series": cdf,
            }
        )
    res.update(summary=summary, tables=tables, plots=plots, notes=notes)
    if ours_skip:
        res["status"] = f"ok (ours skipped: {ours_skip})"
    return res


def _label(res: dict, name: str) -> str:
    capped = [n for n, e in res[name].items() if e.get("capped")]
    return f"{name} (at {', '.join(capped)} pods: capped, lower bound)" if capped else name
