"""The soak's verdict (results.json), its report (report.md) and plots (PNG) in the report directory."""

from __future__ import annotations

import json
import os

from soak import checks

#: growth limits per minute, judged on each process's longest-lived incarnation after a warm-up
GROWTH_LIMITS = {"rss_mb": 5.0, "fds": 5.0, "threads": 2.0}
RULE_GROWTH_LIMIT = 4.0  # rule lines per minute beyond what the locked pods need


def pct(vals, q):
    if not vals:
        return None
    v = sorted(vals)
    k = (len(v) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def incarnations(samples: list[dict]) -> dict[str, dict[int, list]]:
    """component -> pid -> [(t, stats)]"""
    out: dict[str, dict[int, list]] = {}
    for s in samples:
        for comp, st in (s.get("procs") or {}).items():
            out.setdefault(comp.split("#")[0], {}).setdefault(st["pid"], []).append((s["t"], st))
    return out


def growth(samples: list[dict]) -> dict:
    res = {}
    for comp, by_pid in incarnations(samples).items():
        pid, pts = max(by_pid.items(), key=lambda kv: kv[1][-1][0] - kv[1][0][0])
        res[comp] = {"pid": pid, "incarnations": len(by_pid), "span_s": pts[-1][0] - pts[0][0]}
        for metric, limit in GROWTH_LIMITS.items():
            res[comp][metric] = checks.growth_verdict([(t, st[metric]) for t, st in pts], limit)
    # per locked pod: one redirect and one guard line; the rest (conntrack return, the locked chain's
    # rejects) is constant
    pts = [(s["t"], s["rule_lines"] - 2 * s["locked_pods"]) for s in samples if "rule_lines" in s]
    res["node iptables rules (beyond 2 per locked pod, IPv4)"] = {
        "excess_rules": checks.growth_verdict(pts, RULE_GROWTH_LIMIT, warmup_s=0)
    }
    return res


def summarize(soak, final: dict, started: float) -> dict:
    creates = soak.creates
    by = {}
    for c in creates:
        by[c["outcome"]] = by.get(c["outcome"], 0) + 1
    bad_inj = [c for c in creates if c.get("injection")]
    failed = [c for c in creates if c["outcome"] == "failed"]
    hangs = [c for c in creates if c["outcome"] == "hang"]
    lat = [c["latency"] for c in creates if c["outcome"] == "created"]
    conv = {}
    for p in soak.perturbations:
        key = p["kind"] + (f": {p['flush']}" if p.get("flush") else "")
        conv.setdefault(key, []).append(p)
    conv_summary = {
        k: {
            "n": len(v),
            "converged": sum(1 for p in v if p.get("converged")),
            "errors": [p["error"] for p in v if p.get("error")],
            "p50_s": pct([p["converge_s"] for p in v if p.get("converge_s") is not None], 50),
            "max_s": max([p["converge_s"] for p in v if p.get("converge_s") is not None], default=None),
            "bound_s": _bound(k),
        }
        for k, v in sorted(conv.items())
    }
    not_converged = [p for p in soak.perturbations if not p.get("converged") and not p.get("error")]
    perturb_errors = [p for p in soak.perturbations if p.get("error")]
    bypass = [p for p in soak.perturbations if p.get("bypass")] + [c for c in soak.canary_checks if c["blocked"] == "200"]
    policy_kept = [
        p for p in soak.perturbations if p["kind"].startswith("policy") and tuple(p.get("canary") or ()) != ("418", "200")
    ]
    gr = growth(soak.samples)
    # the soak's own process (API server emulator, kubelet, the harness's records) is reported, not judged:
    # it is test infrastructure, and it keeps every create's record in memory by design
    growing = [
        f"{comp} {m}"
        for comp, r in gr.items()
        if not comp.startswith("kubesim")
        for m, v in r.items()
        if isinstance(v, dict) and v.get("grows")
    ]
    leaks = final.get("leaks_during_soak")
    events = getattr(soak, "leak_events", [])
    by_kind = {}
    for e in events:
        by_kind[e["kind"]] = by_kind.get(e["kind"], 0) + e["packets"]
    cl, cc = final.get("control_leak") or {}, final.get("control_convergence") or {}
    minutes = soak.duration / 60
    invariants = {
        "no leak: 0 packets from pod addresses reached the internet namespace (proxy connections come from the node)": leaks == 0,
        "leak counter works: a pod without the lock was counted (control)": bool(cl.get("detected")),
        "a locked pod that lost its own lock is still stopped by the node's guard, and counted once the guard "
        "is gone too (control)": bool((final.get("control_lock_removed") or {}).get("detected")),
        "no create left hanging (each 201 or a failure with a reason within the server's 30 s timeout)": not hangs,
        "every locked deployment injected exactly once, every plain one untouched": not bad_inj,
        "podwatch (and the proxy, the initializers) converged within the stated bound after every perturbation": not not_converged,
        "convergence check works: a frozen podwatch's flushed chain was reported (control)": bool(cc.get("detected"))
        and bool(cc.get("converged_after_resume")),
        "final state: only the canary's rules left, every soak pod gone": bool(
            (final.get("final_convergence") or {}).get("converged")
        ),
        "a bad policy kept the last good one, a good one loaded (canary 418/200 after each reload)": not policy_kept,
        "never a bypass: the canary's blocked request never answered 200": not bypass,
        "no unbounded growth of RSS, fds, threads (initializers, podwatch, proxy) or node rules (slopes under the limits)": not growing,
        "every perturbation could be applied": not perturb_errors,
        "the harness itself ran cleanly": not soak.errors,
    }
    if minutes >= 10:
        invariants["at least 1,000 creates in the full run"] = len(creates) >= 1000
    return {
        "ok": all(invariants.values()),
        "invariants": invariants,
        "minutes": minutes,
        "seed": soak.seed,
        "started_unix": started,
        "creates": {
            "total": len(creates),
            "by_outcome": by,
            "locked": sum(1 for c in creates if c["locked"]),
            "latency_s": {"p50": pct(lat, 50), "p99": pct(lat, 99), "max": max(lat, default=None)},
            "failed": [f"{c['ns']}/{c['name']}: {c.get('error')}" for c in failed][:20],
            "hangs": [f"{c['ns']}/{c['name']}: {c.get('error')} after {c['latency']:.1f}s" for c in hangs][:20],
            "bad_injections": [f"{c['ns']}/{c['name']}: {c['injection']}" for c in bad_inj][:20],
        },
        "perturbations": {
            "total": len(soak.perturbations),
            "by_kind": conv_summary,
            "not_converged": not_converged[:10],
            "errors": perturb_errors[:10],
        },
        "faults": soak.faults_log,
        "leaks": {"during_soak": leaks, "control": cl, "attributed_ipv4": by_kind, "events": events[:200]},
        "control_convergence": cc,
        "final": final,
        "growth": gr,
        "canary_checks": {"n": len(soak.canary_checks), "codes": _count(c["blocked"] for c in soak.canary_checks)},
        "policy_not_kept": policy_kept,
        "bypass": bypass,
        "errors": soak.errors[:20],
        "_perturbations_raw": soak.perturbations,
        "plots": {"create_latency": soak_series_create(creates)},
    }


def _bound(key: str):
    from soak.run import CONVERGE_BOUND

    return CONVERGE_BOUND.get(key.split(":")[0])


def _count(xs):
    out = {}
    for x in xs:
        out[x] = out.get(x, 0) + 1
    return out


def soak_series_create(creates):
    return [(c["t"], c["latency"], c["locked"]) for c in creates if c["outcome"] == "created"]


def write(results: dict, samples: list[dict], out: str) -> None:
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "samples.json"), "w") as f:
        json.dump(samples, f)
    pngs = plots(results, samples, out)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=1, default=str)
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write(markdown(results, pngs))


def plots(results: dict, samples: list[dict], out: str) -> list[tuple[str, str]]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    made = []

    def save(fig, name, title):
        fig.tight_layout()
        fig.savefig(os.path.join(out, name), dpi=90)
        plt.close(fig)
        made.append((name, title))

    fig, ax = plt.subplots(figsize=(9, 4.5))
    for comp, by_pid in sorted(incarnations(samples).items()):
        first = True
        for _pid, pts in by_pid.items():
            ax.plot(
                [t for t, _ in pts],
                [st["rss_mb"] for _, st in pts],
                label=comp if first else None,
                color=f"C{sorted(incarnations(samples)).index(comp)}",
            )
            first = False
    for t, _spec in results["faults"]:
        ax.axvline(t, color="0.85", lw=0.8)
    ax.set_xlabel("s since start (grey: API fault phase changes)")
    ax.set_ylabel("RSS (MB)")
    ax.legend(fontsize=7)
    ax.set_title("RSS over time, per process (a new line after each kill -9)")
    save(fig, "rss.png", "RSS over time")

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    for ax, metric in zip(axes, ("fds", "threads")):
        for comp, by_pid in sorted(incarnations(samples).items()):
            for i, (_pid, pts) in enumerate(by_pid.items()):
                ax.plot(
                    [t for t, _ in pts],
                    [st[metric] for _, st in pts],
                    label=comp if i == 0 else None,
                    color=f"C{sorted(incarnations(samples)).index(comp)}",
                )
        ax.set_title(metric)
        ax.set_xlabel("s")
    axes[0].legend(fontsize=6)
    pts = [(s["t"], s["rule_lines"], s["locked_pods"]) for s in samples if "rule_lines" in s]
    axes[2].plot([p[0] for p in pts], [p[1] for p in pts], label="rule lines in TPROXY-* chains")
    axes[2].plot([p[0] for p in pts], [2 * p[2] for p in pts], label="2 x locked pods (API)", ls="--")
    axes[2].set_title("node iptables rules")
    axes[2].legend(fontsize=6)
    save(fig, "resources.png", "File descriptors, threads and iptables rules over time")

    series = results["plots"]["create_latency"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4))
    for locked, color, label in ((True, "C3", "annotated"), (False, "C0", "plain")):
        xs = [(t, l) for t, l, lk in series if lk == locked]
        a1.scatter([t for t, _ in xs], [l for _, l in xs], s=6, color=color, label=label)
        v = sorted(l for _, l in xs)
        if v:
            a2.plot(v, [(i + 1) / len(v) for i in range(len(v))], color=color, label=label)
    a1.set_xlabel("s since start")
    a1.set_ylabel("create latency (s)")
    a1.set_yscale("log")
    a1.legend()
    a2.set_xscale("log")
    a2.set_xlabel("create latency (s)")
    a2.set_ylabel("CDF")
    a2.legend()
    save(fig, "create_latency.png", "Create latency (blocking creates through the initializer)")

    by = results["perturbations"]["by_kind"]
    fig, ax = plt.subplots(figsize=(10, 4.5))
    kinds = list(by)
    from soak.run import CONVERGE_BOUND  # noqa: F401

    rawp = results.get("_perturbations_raw") or []
    for i, k in enumerate(kinds):
        vals = [
            p["converge_s"]
            for p in rawp
            if (p["kind"] + (f": {p['flush']}" if p.get("flush") else "")) == k and p.get("converge_s") is not None
        ]
        ax.scatter([i] * len(vals), vals, s=12)
        if by[k]["bound_s"]:
            ax.hlines(by[k]["bound_s"], i - 0.3, i + 0.3, color="r")
    ax.set_xticks(range(len(kinds)))
    ax.set_xticklabels(kinds, rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("time to converge (s); red: stated bound")
    ax.set_title("Convergence after each perturbation")
    save(fig, "convergence.png", "Convergence times")
    return made


def markdown(r: dict, pngs) -> str:
    L = [
        f"# tproxy chaos soak: {'PASS' if r['ok'] else 'FAIL'}",
        "",
        f"{r['minutes']:g} minutes, seed {r['seed']}. Creates: {r['creates']['total']} "
        f"({r['creates']['locked']} annotated), outcomes {r['creates']['by_outcome']}; "
        f"perturbations: {r['perturbations']['total']}.",
        "",
        "## Invariants",
        "",
        "| invariant | holds |",
        "|---|---|",
    ]
    for k, v in r["invariants"].items():
        L.append(f"| {k} | {'yes' if v else '**NO**'} |")
    lat = r["creates"]["latency_s"]
    L += [
        "",
        "## Creates",
        "",
        f"Latency of successful creates: p50 {_f(lat['p50'])} s, p99 {_f(lat['p99'])} s, max {_f(lat['max'])} s.",
        "",
    ]
    for k in ("failed", "hangs", "bad_injections"):
        if r["creates"][k]:
            L += [f"{k}:", ""] + [f"- {x}" for x in r["creates"][k]] + [""]
    L += [
        "## Convergence after perturbations",
        "",
        "| perturbation | n | converged | p50 s | max s | bound s |",
        "|---|---|---|---|---|---|",
    ]
    for k, v in r["perturbations"]["by_kind"].items():
        L.append(f"| {k} | {v['n']} | {v['converged']} | {_f(v['p50_s'])} | {_f(v['max_s'])} | {_f(v['bound_s'])} |")
    L += [
        "",
        "## Leaks",
        "",
        f"Packets from pod addresses counted in the internet namespace during the soak: "
        f"**{r['leaks']['during_soak']}**. Control (a pod without the lock, after the soak): "
        f"{r['leaks']['control']}. Lock removed in a throwaway locked pod, then its node guard: "
        f"{(r.get('final') or {}).get('control_lock_removed')}.",
        "",
        f"IPv4 packets by what their source address was (sampled every 0.5 s): {r['leaks'].get('attributed_ipv4')} "
        "(`live`: a locked pod present in the API before and after; `deleted`: a locked pod whose API object "
        "was deleted in the interval or before, while the kubelet may still run it; `plain`: an unlocked pod).",
        "",
    ]
    for e in r["leaks"].get("events", [])[:30]:
        L.append(
            f"- t={e['t']:.1f}s {e['ip']} {e['packets']} packets, {e['kind']}, {e['pod']}, "
            f"kubelet still runs it: {e['kubelet_still_runs_it']}, during {e.get('during')}"
        )
    L += [
        "",
        f"Convergence control (podwatch SIGSTOPped, redirect chain flushed): {r['control_convergence']}.",
        "",
        "## Growth (longest-lived process of each component, after a 20 s warm-up)",
        "",
        "| component | incarnations | metric | slope /min | first → last | judged | grows |",
        "|---|---|---|---|---|---|---|",
    ]
    for comp, g in r["growth"].items():
        for m, v in g.items():
            if isinstance(v, dict):
                L.append(
                    f"| {comp} | {g.get('incarnations', '')} | {m} | {_f(v['slope_per_min'])} | "
                    f"{_f(v.get('first'))} → {_f(v.get('last'))} | {v['judged']} | {v['grows']} |"
                )
    L += ["", f"API fault phases: {', '.join(s for _, s in r['faults'][: len(set(s for _, s in r['faults']))])}", ""]
    if r["errors"]:
        L += ["## Harness errors", ""] + [f"```\n{e}\n```" for e in r["errors"]]
    for f, title in pngs:
        L += [f"![{title}]({f})", ""]
    return "\n".join(L) + "\n"


def _f(x):
    return "–" if x is None else f"{x:.2f}" if isinstance(x, float) else str(x)
