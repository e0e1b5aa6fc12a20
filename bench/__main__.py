"""``python -m bench [--quick] [--only NAME[,NAME]]``: run the benchmark suite, write the report.

Each benchmark measures a tproxy component next to its baseline in the same run and reports
ratios; results go to ``bench/results/latest.json`` and ``bench/results/report.md`` (+ PNG plots).
A missing component is recorded as ``"skipped: <reason>"``; the exit status is non-zero only
when the harness itself broke (a benchmark ended in ``error:``), so CI catches a broken harness
without enforcing performance thresholds.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from controllerkit.cli import ExactArgumentParser

from bench import common, report

#: name -> module path; order = run order (kubesim first: the others are read as ratios to it).
BENCHMARKS = {
    "kubesim": "bench.kubesim_bench",
    "initializer": "bench.initializer_bench",
    "podwatch": "bench.podwatch_bench",
    "sidecar": "bench.sidecar_bench",
    "proxy": "bench.proxy_bench",
    "policy_scopes": "bench.policy_scopes_bench",
    "egress": "bench.egress_bench",
    "profile": "bench.profile_bench",
    "idle": "bench.idle_bench",
}


def parse_args(argv=None) -> argparse.Namespace:
    p = ExactArgumentParser(
        prog="python -m bench",
        description="tproxy benchmarks: each component vs its baseline, measured side by side in one run. "
        "Writes latest.json, report.md and PNG plots. Needs root (network namespaces).",
    )
    p.add_argument("--quick", action="store_true", help="small workloads (< 2 min in total): the CI smoke test")
    p.add_argument("--only", metavar="NAME[,NAME]", default="", help=f"run a subset of: {', '.join(BENCHMARKS)}")
    p.add_argument(
        "--out",
        metavar="DIR",
        default=os.path.join(common.REPO, "bench", "results"),
        help="output directory (default: bench/results)",
    )
    p.add_argument("--repeats", type=int, default=None, help="repeats per measurement where cheap (default 3; 1 with --quick)")
    p.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    args = p.parse_args(argv)
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in names if n not in BENCHMARKS]
        if unknown:
            p.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
        args.names = names
    else:
        args.names = list(BENCHMARKS)
    if args.repeats is not None and args.repeats < 1:
        p.error("--repeats must be >= 1")
    return args


def cross_ratios(b: dict) -> dict | None:
    """Controller figures as ratios to the API server's own write rate, all from this run.

    A blocking create through an initializer costs the server two writes (the POST and the
    initializer's PUT), so the burst's creates/s × 2 is compared with kubesim's writes/s.
    """
    ks = b.get("kubesim", {})
    ini = b.get("initializer", {})
    wps = (ks.get("writes_per_s") or {}).get("median")
    if not wps or not str(ini.get("status", "")).startswith("ok"):
        return None
    summary, rows = [], []
    for key, sc in (ini.get("scenarios") or {}).items():
        cps = (sc.get("per_s") or {}).get("median")
        r = common.ratio(2 * cps, wps) if cps else None
        rows.append([key, cps, r])
        if key == "tproxy/clean":
            summary.append({"metric": "initializer burst: API writes/s (2 per create) ÷ kubesim writes/s", "value": r})
    return {
        "status": "ok",
        "elapsed_s": 0.0,
        "summary": summary,
        "tables": [
            {
                "title": "Initializer bursts as a share of the API server's write rate (same run)",
                "columns": ["controller/scenario", "creates/s", "2 × creates/s ÷ kubesim writes/s"],
                "rows": rows,
            }
        ],
        "notes": [
            f"kubesim writes/s (median, 8 threads): {wps:.0f}; the burst uses {ini.get('concurrency')} concurrent clients, "
            "so the share also reflects the server's behaviour under that many blocked requests."
        ],
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.list:
        for name, mod in BENCHMARKS.items():
            print(f"{name:12s} {mod}")
        return 0
    import importlib

    os.makedirs(args.out, exist_ok=True)
    cfg = common.BenchConfig(quick=args.quick, out_dir=args.out, repeats=args.repeats or (1 if args.quick else 3))
    t0 = time.monotonic()
    results = {
        "schema": 1,
        "mode": "quick" if args.quick else "full",
        "machine": common.machine_info(),
        "benchmarks": {},
    }
    for name in args.names:
        common.log(f"--- {name} ---")
        try:
            mod = importlib.import_module(BENCHMARKS[name])
            fn = mod.run
        except Exception as e:  # a syntax error in a module is a harness error, not a skip
            results["benchmarks"][name] = {"status": f"error: cannot import {BENCHMARKS[name]}: {e}"}
            continue
        results["benchmarks"][name] = common.run_guarded(name, fn, cfg)
    cross = cross_ratios(results["benchmarks"])
    if cross:
        results["benchmarks"]["cross"] = cross
    results["elapsed_s"] = round(time.monotonic() - t0, 1)
    json_path = os.path.join(args.out, "latest.json")
    results["report"] = report.write(results, args.out, plots=not args.no_plots)
    common.dump_json(results, json_path)
    print(report.summary_text(results))
    print(f"wrote {json_path} and {results['report']['markdown']}")
    errors = [n for n, r in results["benchmarks"].items() if str(r.get("status", "")).startswith("error")]
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
