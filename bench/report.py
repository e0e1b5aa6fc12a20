"""Render ``latest.json`` into ``report.md`` with small PNG plots (matplotlib, Agg backend).

The report is generic: every benchmark result may carry
- ``summary``: ``[{"metric", "value", "unit"?, "target"?}]`` — the ratios quoted at the top;
- ``tables``: ``[{"title", "columns": [...], "rows": [[...], ...]}]``;
- ``plots``: ``[{"file", "title", "kind": "line"|"bar"|"cdf", "xlabel", "ylabel",
  "series": {label: [[x, y], ...]} (line) | {label: value} (bar) | {label: [samples]} (cdf),
  "logx"?, "logy"?}]``;
- ``notes``: ``[str]`` — how it was measured.
so a benchmark module decides what to show and this module only draws it.
"""

from __future__ import annotations

import os

TITLE = "tproxy benchmark report"


def write(results: dict, out_dir: str, *, plots: bool = True) -> dict:
    """Write report.md (and the PNGs); return {"markdown": path, "plots": [paths], "plot_error"?}."""
    made, plot_error = [], None
    if plots:
        try:
            made = _draw_all(results, out_dir)
        except Exception as e:  # a broken plot must not lose the numbers
            plot_error = f"{type(e).__name__}: {e}"
    md = render_markdown(results, made_plots={os.path.basename(p) for p in made}, plot_error=plot_error)
    path = os.path.join(out_dir, "report.md")
    with open(path + ".tmp", "w") as f:
        f.write(md)
    os.replace(path + ".tmp", path)
    out = {"markdown": path, "plots": made}
    if plot_error:
        out["plot_error"] = plot_error
    return out


def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        if v == 0:
            return "0"
        if abs(v) >= 100:
            return f"{v:,.0f}"
        if abs(v) >= 1:
            return f"{v:.2f}"
        return f"{v:.3g}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v).replace("|", "\\|")


def _first_line(s) -> str:
    s = str(s or "")
    return s.splitlines()[0][:300] if s else s


def summary_rows(results: dict) -> list[tuple[str, dict]]:
    rows = []
    for name, r in results.get("benchmarks", {}).items():
        for s in r.get("summary", []) or []:
            rows.append((name, s))
    return rows


def render_markdown(results: dict, *, made_plots=frozenset(), plot_error=None) -> str:
    m = results.get("machine", {})
    pk = m.get("packages", {})
    lines = [f"# {TITLE}", ""]
    lines.append(
        f"Mode **{results.get('mode')}**, run {m.get('date_utc')} in {results.get('elapsed_s', '?')} s "
        f"(commit `{m.get('git_commit')}`"
        + (
            f", plus uncommitted changes in {', '.join(m['git_uncommitted_files'][:8])}"
            + (" …" if len(m["git_uncommitted_files"]) > 8 else "")
            if m.get("git_uncommitted_files")
            else ""
        )
        + ")."
    )
    lines.append("")
    lines.append(
        f"- Machine: {m.get('nproc')} CPUs ({m.get('cpu')}), {m.get('mem_mb')} MB RAM, "
        f"kernel {m.get('kernel')}, {m.get('os')}; load average at start {m.get('loadavg_at_start')}"
    )
    lines.append(
        f"- Python {m.get('python')}; "
        + ", ".join(f"{k} {v}" for k, v in pk.items() if v)
        + (f"; {m['tools']['iptables']}" if m.get("tools", {}).get("iptables") else "")
    )
    lines.append(
        "- Absolute figures on this shared, noisy machine are not comparable across runs; "
        "every ratio below compares two figures measured side by side in this run."
    )
    lines.append("")
    try:
        para = performance_paragraph(results)
    except Exception as e:  # the paragraph is a convenience; never lose the report for it
        para = f"(paragraph unavailable: {type(e).__name__}: {e})"
    lines += ["## In one paragraph", "", para, ""]
    lines.append("## Summary")
    lines.append("")
    lines.append("| benchmark | metric | value | target |")
    lines.append("|---|---|---|---|")
    for name, s in summary_rows(results):
        unit = s.get("unit", "")
        lines.append(
            f"| {name} | {_fmt(s.get('metric'))} | {_fmt(s.get('value'))}{(' ' + unit) if unit else ''} "
            f"| {_fmt(s.get('target', ''))} |"
        )
    lines.append("")
    lines.append("| benchmark | status | time (s) |")
    lines.append("|---|---|---|")
    for name, r in results.get("benchmarks", {}).items():
        lines.append(f"| {name} | {_fmt(_first_line(r.get('status')))} | {_fmt(r.get('elapsed_s'))} |")
    lines.append("")
    if plot_error:
        lines += [f"_Plots failed: {plot_error}_", ""]
    for name, r in results.get("benchmarks", {}).items():
        lines.append(f"## {name}")
        lines.append("")
        lines.append(f"Status: {_first_line(r.get('status'))}")
        lines.append("")
        if r.get("traceback"):
            lines += ["```", str(r["traceback"]).rstrip()[-2000:], "```", ""]
        for note in r.get("notes", []) or []:
            lines.append(f"- {note}")
        if r.get("notes"):
            lines.append("")
        for t in r.get("tables", []) or []:
            lines.append(f"**{t.get('title', '')}**")
            lines.append("")
            cols = t.get("columns", [])
            lines.append("| " + " | ".join(_fmt(c) for c in cols) + " |")
            lines.append("|" + "---|" * len(cols))
            for row in t.get("rows", []):
                lines.append("| " + " | ".join(_fmt(c) for c in row) + " |")
            lines.append("")
        for p in r.get("plots", []) or []:
            if p.get("file") in made_plots:
                lines.append(f"![{p.get('title', '')}]({p['file']})")
                lines.append("")
    return "\n".join(lines) + "\n"


def performance_paragraph(results: dict) -> str:
    """The README's "Performance" paragraph, built from this run's figures (ratios only)."""
    b = results.get("benchmarks", {})

    def val(name, prefix):
        for s in b.get(name, {}).get("summary", []) or []:
            if str(s.get("metric", "")).startswith(prefix):
                return s.get("value")
        return None

    parts = []
    px = b.get("proxy", {})
    if str(px.get("status", "")).startswith("ok") and val("proxy", "http proxy CPU per request: addon-10 / bare"):
        dl = px.get("download", {}).get("addon-10", {})
        parts.append(
            f"Through the proxy, the tproxy addon uses {_pct(val('proxy', 'http proxy CPU per request: addon-10 / bare'))} "
            f"(HTTP) and {_pct(val('proxy', 'https proxy CPU per request: addon-10 / bare'))} (HTTPS) CPU per request "
            f"than bare `mitmdump --mode transparent` (keep-alive req/s ratio "
            f"{_fmt(val('proxy', 'http keep-alive req/s: addon-10 / bare'))} / "
            f"{_fmt(val('proxy', 'https keep-alive req/s: addon-10 / bare'))}), and a 10,000-rule policy uses "
            f"{_pct(val('proxy', 'http proxy CPU per request: addon-10k / addon-10'))} / "
            f"{_pct(val('proxy', 'https proxy CPU per request: addon-10k / addon-10'))} than a 10-rule one; "
            f"a {_size(px.get('download_bytes', 0))} download streams through it with the proxy's memory flat "
            f"(+{_fmt(dl.get('rss_growth_mb'))} MB RSS)."
        )
    pw = b.get("podwatch", {})
    if str(pw.get("status", "")).startswith("ok") and pw.get("ours"):
        at = pw.get("latency_at_pods")
        e2e = (pw.get("e2e") or {}).get("latency") or {}
        parts.append(
            f"podwatch programs {at:,} pods {_fmt(val('podwatch', f'sync speed-up vs original at {at:,}'))}× faster "
            f"than the original per-pod iptables loop"
            + (
                f" (5,000 pods: ≥ {_fmt(val('podwatch', 'sync speed-up vs original at 5,000'))}×, the original "
                f"was stopped at its time cap)"
                if val("podwatch", "sync speed-up vs original at 5,000")
                else ""
            )
            + (
                f"; a new pod's rules are in place {_fmt(e2e.get('p50_ms'))} ms (p50) / {_fmt(e2e.get('p99_ms'))} ms "
                f"(p99) after its IP reaches the API server, with {at:,} pods on the node"
                if e2e
                else ""
            )
            + "."
        )
    ini = b.get("initializer", {})
    if str(ini.get("status", "")).startswith("ok") and val("initializer", "clean: create latency p50"):
        parts.append(
            f"A burst of {ini.get('n')} blocking creates through the tproxy initializer takes "
            f"{_fmt(val('initializer', 'clean: create latency p50'))}× (p50) / "
            f"{_fmt(val('initializer', 'clean: create latency p99'))}× (p99) the latency of a bare GET+PUT initializer "
            f"({_fmt(val('initializer', 'faults: create latency p50'))}× / {_fmt(val('initializer', 'faults: create latency p99'))}× "
            f"with 20 % injected conflicts and watch cuts), with "
            f"{val('initializer', 'clean: tproxy failed creates')} + {val('initializer', 'faults: tproxy failed creates')} "
            f"failed creates" + (" and every deployment injected exactly once." if _injected_once(ini) else ".")
        )
    sc = b.get("sidecar", {})
    if str(sc.get("status", "")).startswith("ok") and val("sidecar", "init container start→exit with the real proxy"):
        parts.append(
            f"The egress-lock init container starts, locks and proves interception in "
            f"{_fmt(val('sidecar', 'init container start→exit with the real proxy'))} ms "
            f"({_fmt(val('sidecar', 'start→exit (stand-in) ÷ lock only'))}× the lock alone)."
        )
    ks = b.get("kubesim", {})
    if str(ks.get("status", "")).startswith("ok"):
        parts.append(
            f"(kubesim, the API server emulator these run against, sustains "
            f"{_fmt(val('kubesim', 'writes/s'))} writes/s on the same machine.)"
        )
    m = results.get("machine", {})
    head = (
        f"Measured side by side in one run of `make bench` on a shared {m.get('nproc')}-core VM "
        f"({results.get('machine', {}).get('date_utc', '')[:10]}); ratios, not absolute figures, are what carry over. "
    )
    return head + " ".join(parts) + " Full report: [bench/results/report.md](bench/results/report.md)."


def _pct(ratio) -> str:
    """1.19 -> "19 % more", 0.97 -> "3 % less"."""
    if ratio is None:
        return "–"
    d = (ratio - 1) * 100
    return f"{abs(d):.0f} % {'more' if d >= 0 else 'less'}"


def _size(n: int) -> str:
    return f"{n // 2**30} GB" if n >= 2**30 else f"{n // 2**20} MB"


def _injected_once(ini: dict) -> bool:
    scs = [v for k, v in (ini.get("scenarios") or {}).items() if k.startswith("tproxy/")]
    return bool(scs) and all(
        v["verify"].get("injected_twice_or_more") == 0
        and v["verify"].get("not_injected") == 0
        and v["verify"].get("still_uninitialized") == 0
        for v in scs
    )


def summary_text(results: dict) -> str:
    out = [f"tproxy bench ({results.get('mode')}, {results.get('elapsed_s')} s)"]
    for name, r in results.get("benchmarks", {}).items():
        out.append(f"  {name}: {_first_line(r.get('status'))}")
    for name, s in summary_rows(results):
        out.append(f"    {name}: {s.get('metric')} = {_fmt(s.get('value'))} {s.get('unit', '')}".rstrip())
    return "\n".join(out)


def _draw_all(results: dict, out_dir: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    for name, r in results.get("benchmarks", {}).items():
        for spec in r.get("plots", []) or []:
            series = spec.get("series") or {}
            if not series:
                continue
            fig, ax = plt.subplots(figsize=(5.2, 3.2), dpi=100)
            kind = spec.get("kind", "line")
            if kind == "line":
                for label, pts in series.items():
                    pts = [p for p in pts if p[1] is not None]
                    if pts:
                        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
            elif kind == "bar":
                labels = list(series)
                vals = [series[k] or 0 for k in labels]
                ax.bar(range(len(labels)), vals, color="tab:blue")
                ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right", fontsize=8)
            elif kind == "cdf":
                for label, samples in series.items():
                    s = sorted(x for x in samples if x is not None)
                    if s:
                        ax.plot(s, [(i + 1) / len(s) for i in range(len(s))], label=label)
            if spec.get("logx"):
                ax.set_xscale("log")
            if spec.get("logy"):
                ax.set_yscale("log")
            ax.set_title(spec.get("title", name), fontsize=9)
            ax.set_xlabel(spec.get("xlabel", ""), fontsize=8)
            ax.set_ylabel(spec.get("ylabel", ""), fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(True, alpha=0.3)
            if kind != "bar":
                ax.legend(fontsize=7)
            fig.tight_layout()
            path = os.path.join(out_dir, spec["file"])
            fig.savefig(path)
            plt.close(fig)
            made.append(path)
    return made
