"""Smoke test of the benchmark harness (issue 9): ``python -m bench --quick`` end to end.

No performance thresholds: this only proves that the suite runs on a CI machine, that every
benchmark either measures (with its baseline, in the same run) or says why it was skipped, and
that the JSON and the Markdown report are well formed. Plus fast unit tests of the statistics
and the report writer that need no root.
"""

import json
import statistics
import os
import subprocess
import sys

import pytest

from bench import common, report
from bench.__main__ import BENCHMARKS, parse_args

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


# -- unit: statistics and report ---------------------------------------------------------------
def test_percentiles_interpolate_and_handle_empty():
    assert common.percentile([], 50) is None
    assert common.percentile([5], 99) == 5.0
    assert common.percentile([1, 2, 3, 4], 50) == 2.5
    assert common.percentile(list(range(101)), 99) == 99.0


def test_spread_reports_median_and_relative_half_range():
    s = common.spread([10.0, 12.0, 8.0])
    assert s["median"] == 10.0 and s["min"] == 8.0 and s["max"] == 12.0
    assert s["rel_spread"] == 0.2
    assert common.spread([])["median"] is None


def test_ratio_refuses_missing_or_zero_denominator():
    assert common.ratio(10, 4) == 2.5
    assert common.ratio(None, 4) is None and common.ratio(1, 0) is None


def test_skip_and_error_become_statuses_not_crashes():
    def skipper(cfg):
        raise common.Skip("component x not found")

    def breaker(cfg):
        raise ValueError("boom")

    cfg = common.BenchConfig(quick=True)
    assert common.run_guarded("a", skipper, cfg)["status"] == "skipped: component x not found"
    r = common.run_guarded("b", breaker, cfg)
    assert r["status"].startswith("error: ValueError: boom") and "Traceback" in r["traceback"]


def test_report_renders_header_summary_tables_and_plots(tmp_path):
    results = {
        "mode": "quick",
        "elapsed_s": 1.0,
        "machine": common.machine_info(),
        "benchmarks": {
            "x": {
                "status": "ok",
                "elapsed_s": 0.5,
                "summary": [{"metric": "speed-up", "value": 42.0, "target": "≥ 20"}],
                "tables": [{"title": "T", "columns": ["a", "b"], "rows": [[1, 2.5]]}],
                "plots": [
                    {"file": "x.png", "kind": "line", "title": "t", "series": {"s": [[1, 1], [10, 3]]}},
                    {"file": "y.png", "kind": "cdf", "series": {"s": [1, 2, 3]}},
                    {"file": "z.png", "kind": "bar", "series": {"a": 1, "b": 2}},
                ],
            },
            "y": {"status": "skipped: not there", "elapsed_s": 0.0},
        },
    }
    out = report.write(results, str(tmp_path))
    md = open(out["markdown"]).read()
    assert "nproc" not in md and f"{os.cpu_count()} CPUs" in md and "Python " in md
    assert "| x | speed-up | 42.00 | ≥ 20 |" in md
    assert "| y | skipped: not there |" in md
    assert "![t](x.png)" in md
    assert "## In one paragraph" in md and "ratios, not absolute figures" in md
    for f in ("x.png", "y.png", "z.png"):
        assert open(tmp_path / f, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_only_rejects_unknown_benchmark_names(capsys):
    assert parse_args(["--only", "proxy,podwatch"]).names == ["proxy", "podwatch"]
    with pytest.raises(SystemExit):
        parse_args(["--only", "proxy,nonsense"])
    assert "unknown benchmark(s) nonsense" in capsys.readouterr().err


def test_policy_scopes_quick_variant_measures_both_sides_on_the_same_path():
    """bench/policy_scopes_bench.py, quick: scoped and single policies measured side by side, half
    the requests allowed (the workload exercises the rules, not only misses); no thresholds."""
    from bench import policy_scopes_bench

    r = policy_scopes_bench.run(common.BenchConfig(quick=True))
    assert r["status"] == "ok" and r["namespaces"] == 100 and r["rules_per_namespace"] == 100
    assert 0.45 <= r["allowed_fraction"] <= 0.55
    assert len(r["scoped_ns"]) == len(r["single_ns"]) == r["rounds"]
    assert r["ratio"] > 0 and r["ratio_of_medians"] > 0 and r["summary"][0]["target"] == "≤ 1.05"
    assert r["tables"][0]["rows"][0][0] == "100 scopes x 100 rules"
    # each process is one draw of the heap layout and hash seed: the headline is their median
    per = r["ratio_per_process"]
    assert len(per) == 2 and r["ratio"] == statistics.median(per)
    assert all(f"{x:.3f}" in r["summary"][0]["metric"] for x in per)
    # and the first request of a connection (through the host index), measured the same way
    first = r["ratio_first_per_process"]
    assert len(first) == 2 and r["ratio_first"] == statistics.median(first) > 0
    assert r["summary"][1]["value"] == round(r["ratio_first"], 3) and r["summary"][1]["target"] == "≤ 1.05"
    assert len(r["scoped_first_ns"]) == len(r["single_first_ns"]) == r["rounds"]


def test_policy_scopes_measurement_that_fails_says_why(monkeypatch):
    from bench import policy_scopes_bench

    with pytest.raises(RuntimeError, match=r"(?s)policy scopes measurement failed \(exit 1\).*ZeroDivisionError"):
        policy_scopes_bench._measure_in_a_process(10, 0, 10, 1)  # no rules: a namespace needs ten


# -- end to end: the quick suite -------------------------------------------------------------
# exclusive: the benchmarks load both cores and their figures (rates, CPU per request) need quiet
@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    p = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    return p, out


@pytest.mark.root
@pytest.mark.slow
@pytest.mark.exclusive
def test_quick_suite_runs_every_benchmark_without_harness_errors(quick_run):
    p, out = quick_run
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
    data = json.load(open(out / "latest.json"))
    assert data["mode"] == "quick"
    assert set(BENCHMARKS) <= set(data["benchmarks"]) <= set(BENCHMARKS) | {"cross"}
    accepted = ("ok",) if IN_CI else ("ok", "skipped: ")
    for name, r in data["benchmarks"].items():
        # on CI a benchmark that skips is a benchmark that was not run: fail, as the suite does for skips
        assert r["status"].startswith(accepted), (name, r["status"])
    m = data["machine"]
    assert m["nproc"] and m["kernel"] and m["python"] and m["packages"]["mitmproxy"]


@pytest.mark.root
@pytest.mark.slow
@pytest.mark.exclusive
def test_quick_suite_computes_ratios_from_side_by_side_measurements(quick_run):
    _, out = quick_run
    b = json.load(open(out / "latest.json"))["benchmarks"]
    measured = {n: r for n, r in b.items() if r["status"].startswith("ok")}
    assert measured, "no benchmark measured anything"
    for name, r in measured.items():
        assert r["summary"], name
        for s in r["summary"]:
            assert isinstance(s["metric"], str)
            assert s["value"] is None or isinstance(s["value"], (int, float)), (name, s)
    if "proxy" in measured:  # baselines measured in the same run as the component
        small = measured["proxy"]["small"]
        assert {"direct", "bare"} <= set(small)
        assert small["bare"]["http"]["rps"]["median"] and small["direct"]["http"]["rps"]["median"]
        assert measured["proxy"]["download"]["direct"]["bytes"] == measured["proxy"]["download_bytes"]
    if "egress" in BENCHMARKS:  # tproxy 1 and N workers next to bare mitmdump and squid, one run
        eg = b["egress"]
        assert eg["status"].startswith("ok"), eg["status"]
        res = eg["results"]
        assert set(res) == {"direct", "bare", "tproxy-1", "tproxy-N", "tproxy-splice", "squid-bump", "squid-splice"}
        for mode, kinds in res.items():
            assert set(kinds) == (
                {"https", "https-new"}
                if mode in ("squid-splice", "tproxy-splice")
                else {"http", "https", "http-new", "https-new"}
            ), mode
            for kind, r in kinds.items():
                # wrk reports each status; ab (https-new) only 2xx and non-2xx (bench/ab.py)
                ok = {"2xx"} if kind == "https-new" else {"200"}
                assert r["rps"]["median"] and set(r["statuses"]) == ok, (mode, kind, r)
                if mode != "direct":
                    assert r["cpu_ms_per_req"]["median"] > 0, (mode, kind)
        ratios = {s["metric"]: s["value"] for s in eg["summary"]}
        assert ratios["https proxy CPU per request: tproxy / squid bump"] > 0
        assert ratios["https proxy CPU per request: tproxy splice / tproxy bump"] > 0
    if "profile" in BENCHMARKS:  # py-spy over bare mitmdump and mitmdump + addon
        prof = b["profile"]
        assert prof["status"] == "ok", prof["status"]
        for kind in ("https", "https-new"):
            bare, tproxy = prof["results"][kind]["bare"], prof["results"][kind]["tproxy"]
            assert bare["samples"] > 0 and bare["addon_share_pct"] == 0.0  # no proxy/ frame without the addon
            assert tproxy["addon_share_pct"] > 0 and tproxy["top_self"], (kind, tproxy)
    if "idle" in BENCHMARKS:  # idle keep-alive connections held through tproxy and bare mitmdump, one run
        idle = b["idle"]
        assert idle["status"] == "ok", idle["status"]
        for mode in ("tproxy", "bare"):
            r = idle["modes"][mode]
            assert [p["connections"] for p in r["points"]] == [0, *idle["steps"]], mode
            assert r["failed"] == {} and r["check"]["closed_by_peer"] == 0, (mode, r["check"])
            assert r["check"]["statuses"] == {"200": idle["steps"][-1] + 4}, (mode, r["check"])
            assert r["points"][-1]["sockets"] >= 2 * idle["steps"][-1], mode
        ratios = {s["metric"]: s["value"] for s in idle["summary"]}
        assert ratios["kB per idle connection: tproxy ÷ bare mitmdump"] > 0
    if "podwatch" in measured:
        pw = measured["podwatch"]
        for n in pw["sizes"]:
            assert pw["original"][str(n)]["sync_s"]["median"] > 0
            if pw["ours"]:
                assert pw["ours"][str(n)]["sync_s"]["median"] > 0
        # the original writes one rule per port per pod: the baseline really programmed them
        assert pw["original"]["10"]["redirect_rules"] == 20
    if "initializer" in measured:
        sc = measured["initializer"]["scenarios"]
        bare = sc["bare/clean"]
        assert bare["codes"].get("201") == measured["initializer"]["n"] * bare["runs"]


@pytest.mark.root
@pytest.mark.slow
@pytest.mark.exclusive
def test_quick_suite_writes_a_readable_report_with_plots(quick_run):
    _, out = quick_run
    md = open(out / "report.md").read()
    assert md.startswith("# tproxy benchmark report")
    assert "## Summary" in md and "Machine:" in md
    for name in BENCHMARKS:
        assert f"## {name}" in md
    pngs = [f for f in os.listdir(out) if f.endswith(".png")]
    assert pngs
    for f in pngs:
        assert f"]({f})" in md
        assert open(out / f, "rb").read(4) == b"\x89PNG"


def test_quantile_sample_keeps_extremes_and_bounds_size():
    vals = [i / 1000 for i in range(10_000)]
    q = common.quantile_sample(vals, 100)
    assert len(q) == 100 and q[0] == 0.0 and q[-1] == 9999.0 and q == sorted(q)
    assert common.quantile_sample([0.002, 0.001]) == [1.0, 2.0]
