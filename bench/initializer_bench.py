"""initializer: a burst of blocking creates through the 1.7 Initializers flow, tproxy vs bare.

Per scenario a fresh ``kubesim serve`` (own process, optional ``--faults``) holds an
InitializerConfiguration for deployments naming ``tproxy.initializer.kubernetes.io``; the
controller under test runs as its own process:
- *bare*: bench/bare_initializer.py — list/watch + GET + PUT removing pending, nothing else;
- *tproxy*: ``python -m initializer`` (injection from the ConfigMap, the real controller).
N threads then create N annotated deployments at once (``POST`` blocks until initialized: 201).
Reported: per-create latency p50/p99, burst throughput (N / wall time), failures, and afterwards
a check that every deployment is initialized (visible to a plain list) and, for tproxy, injected
exactly once.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import yaml

from bench import common
from bench.kubeutil import KubeSim, ensure_namespace, free_port

NAME = "tproxy.initializer.kubernetes.io"
ANNOTATION = "initializer.kubernetes.io/tproxy"
NS = "bench"
CONFIG_NS = "tproxy-system"
CONFIG = {
    "containers": [{"name": "tproxy", "image": "tproxy-sidecar:0.1.0", "securityContext": {"privileged": True}}],
    "volumes": [{"name": "ca-certs-debian", "configMap": {"name": "tproxy-root-certs"}}],
    "volumeMounts": [{"name": "ca-certs-debian", "mountPath": "/etc/ssl/certs/"}],
    "envVars": [{"name": "http_proxy", "value": "$(NODE_NAME):1080"}],
}


def deployment(name: str) -> dict:
    return {
        "apiVersion": "apps/v1beta1",
        "kind": "Deployment",
        "metadata": {"name": name, "annotations": {ANNOTATION: "true"}},
        "spec": {
            "replicas": 1,
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "app", "image": "debian:9"}]}},
        },
    }


def setup(client) -> None:
    ensure_namespace(client, NS)
    ensure_namespace(client, CONFIG_NS)
    client.create(
        f"/api/v1/namespaces/{CONFIG_NS}/configmaps",
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "tproxy-initializer"},
            "data": {"config": yaml.safe_dump(CONFIG)},
        },
    )
    client.create(
        "/apis/admissionregistration.k8s.io/v1alpha1/initializerconfigurations",
        {
            "apiVersion": "admissionregistration.k8s.io/v1alpha1",
            "kind": "InitializerConfiguration",
            "metadata": {"name": "tproxy"},
            "initializers": [{"name": NAME, "rules": [{"apiGroups": ["*"], "apiVersions": ["*"], "resources": ["deployments"]}]}],
        },
    )


def controller_argv(kind: str, kubeconfig: str) -> list[str]:
    if kind == "bare":
        return [sys.executable, "-m", "bench.bare_initializer", "--kubeconfig", kubeconfig]
    return [
        sys.executable,
        "-m",
        "initializer",
        "--kubeconfig",
        kubeconfig,
        "-namespace",
        CONFIG_NS,
        "--metrics-port",
        str(free_port()),
        "--metrics-host",
        "127.0.0.1",
        "--log-level",
        "warning",
    ]


def wait_working(client, deadline_s: float = 60) -> float:
    """Blocking-create canaries until one returns 201: the controller is up and has its config."""
    from controllerkit.errors import ApiError

    t0 = time.monotonic()
    i = 0
    while time.monotonic() - t0 < deadline_s:
        i += 1
        try:
            client.create(f"/apis/apps/v1beta1/namespaces/{NS}/deployments", deployment(f"canary-{i}"), timeout="5s")
            return time.monotonic() - t0
        except ApiError as e:
            if e.code not in (504, 500, 409):
                raise
    raise TimeoutError(f"no blocking create succeeded within {deadline_s} s (controller not working)")


def burst(ks: KubeSim, n: int, concurrency: int) -> dict:
    client = ks.client(pool=concurrency + 4, timeout=90)
    path = f"/apis/apps/v1beta1/namespaces/{NS}/deployments"
    lat: list[float] = []
    codes: dict[str, int] = {}
    lock = threading.Lock()
    next_i = [0]
    go = threading.Barrier(concurrency + 1)

    def worker():
        go.wait()
        while True:
            with lock:
                i = next_i[0]
                next_i[0] += 1
            if i >= n:
                return
            t0 = time.perf_counter()
            try:
                client.create(path, deployment(f"web-{i}"))
                code = "201"
            except Exception as e:
                code = str(getattr(e, "code", type(e).__name__))
            dt = time.perf_counter() - t0
            with lock:
                codes[code] = codes.get(code, 0) + 1
                if code == "201":
                    lat.append(dt)

    ths = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for t in ths:
        t.start()
    go.wait()
    t0 = time.perf_counter()
    for t in ths:
        t.join(120)
    wall = time.perf_counter() - t0
    return {
        "n": n,
        "concurrency": concurrency,
        "wall_s": wall,
        "per_s": n / wall,
        "codes": codes,
        "failures": n - codes.get("201", 0),
        "latency": common.latency_summary(lat),
        "latency_s": lat,
    }


def verify(client, kind: str, n: int) -> dict:
    items = client.list(f"/apis/apps/v1beta1/namespaces/{NS}/deployments").get("items", [])
    items = [d for d in items if d["metadata"]["name"].startswith("web-")]
    pending = client.list(f"/apis/apps/v1beta1/namespaces/{NS}/deployments", includeUninitialized="true")
    uninit = [d["metadata"]["name"] for d in pending.get("items", []) if (d["metadata"].get("initializers") or {}).get("pending")]
    out = {"initialized": len(items), "still_uninitialized": len(uninit)}
    if kind == "tproxy":
        counts = [
            sum(1 for c in (d["spec"]["template"]["spec"].get("initContainers") or []) if c.get("name") == "tproxy")
            for d in items
        ]
        out["injected_once"] = sum(1 for c in counts if c == 1)
        out["injected_twice_or_more"] = sum(1 for c in counts if c > 1)
        out["not_injected"] = sum(1 for c in counts if c == 0)
    return out


def scenario(kind: str, faults: str | None, n: int, concurrency: int) -> dict:
    with KubeSim(faults=faults) as ks:
        admin = ks.client()
        setup(admin)
        log_path = os.path.join(ks.tmp, f"{kind}.log")
        with open(log_path, "ab") as logf:
            proc = subprocess.Popen(controller_argv(kind, ks.kubeconfig), stdout=logf, stderr=subprocess.STDOUT, cwd=common.REPO)
        try:
            try:
                ready_s = wait_working(admin)
            except Exception as e:
                tail = open(log_path, "rb").read()[-1200:].decode(errors="replace")
                raise RuntimeError(f"{kind} controller not working: {e}; log: {tail}; kubesim: {ks.log_tail(600)}") from e
            r = burst(ks, n, concurrency)
            r["ready_s"] = ready_s
            r["verify"] = verify(admin, kind, n)
            r["server_rss_mb"] = ks.rss_mb()
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
    common.log(
        f"initializer {kind} faults={faults}: {r['per_s']:.0f}/s p50 {r['latency']['p50_ms']} ms "
        f"p99 {r['latency']['p99_ms']} ms codes={r['codes']} verify={r['verify']}"
    )
    return r


def run(cfg: common.BenchConfig) -> dict:
    common.need_module("kubesim.apiserver.cli")
    have_ours = True
    try:
        common.need_module("initializer.controller", "Controller")
        common.need_module("initializer.__main__")
    except common.Skip as e:
        have_ours = str(e)
    n = cfg.pick(100, 500)
    concurrency = cfg.pick(100, 500)
    faults = cfg.pick("conflict=0.2,watch_cut=0.05", "conflict=0.2,watch_cut=0.02")
    kinds = ["bare", "tproxy"] if have_ours is True else ["bare"]
    reps = cfg.pick(1, min(cfg.repeats, 3))
    res: dict = {"n": n, "concurrency": concurrency, "faults": faults, "repeats": reps, "scenarios": {}}
    runs: dict[str, list[dict]] = {}
    for _rep in range(reps):  # interleaved: bare and tproxy alternate, so drift hits both
        for label, fl in (("clean", None), ("faults", faults)):
            for kind in kinds:
                runs.setdefault(f"{kind}/{label}", []).append(scenario(kind, fl, n, concurrency))
    sc = res["scenarios"]
    for key, rs in runs.items():
        codes: dict = {}
        for r in rs:
            for c, v in r["codes"].items():
                codes[c] = codes.get(c, 0) + v
        verify = {k: sum(r["verify"].get(k) or 0 for r in rs) for k in rs[0]["verify"]}
        sc[key] = {
            "runs": len(rs),
            "per_s": common.spread(r["per_s"] for r in rs),
            "p50_ms": common.spread(r["latency"]["p50_ms"] for r in rs),
            "p99_ms": common.spread(r["latency"]["p99_ms"] for r in rs),
            "max_ms": max(r["latency"]["max_ms"] or 0 for r in rs),
            "codes": codes,
            "failures": sum(r["failures"] for r in rs),
            "verify": verify,
            "ready_s": [round(r["ready_s"], 2) for r in rs],
            "latency_sample_ms": common.quantile_sample([x for r in rs for x in r["latency_s"]]),
        }
    summary = []
    for label in ("clean", "faults"):
        b, o = sc.get(f"bare/{label}"), sc.get(f"tproxy/{label}")
        if b and o:
            summary.append(
                {
                    "metric": f"{label}: create latency p50 tproxy ÷ bare",
                    "value": common.ratio(o["p50_ms"]["median"], b["p50_ms"]["median"]),
                    "target": "≤ 2",
                }
            )
            summary.append(
                {
                    "metric": f"{label}: create latency p99 tproxy ÷ bare",
                    "value": common.ratio(o["p99_ms"]["median"], b["p99_ms"]["median"]),
                    "target": "≤ 2",
                }
            )
            summary.append(
                {
                    "metric": f"{label}: burst throughput bare ÷ tproxy",
                    "value": common.ratio(b["per_s"]["median"], o["per_s"]["median"]),
                    "target": "≤ 2",
                }
            )
            summary.append(
                {"metric": f"{label}: tproxy failed creates (of {n * o['runs']})", "value": o["failures"], "target": "0"}
            )
    res["summary"] = summary
    res["tables"] = [
        {
            "title": f"{n} blocking creates, {concurrency} concurrent, {reps} interleaved run(s) (medians; faults: {faults})",
            "columns": [
                "controller/scenario",
                "creates/s",
                "±rel",
                "p50 ms",
                "p99 ms",
                "max ms",
                "codes",
                "initialized",
                "uninitialized",
                "injected once",
                "injected twice",
            ],
            "rows": [
                [
                    k,
                    r["per_s"]["median"],
                    r["per_s"]["rel_spread"],
                    r["p50_ms"]["median"],
                    r["p99_ms"]["median"],
                    r["max_ms"],
                    " ".join(f"{c}:{v}" for c, v in sorted(r["codes"].items())),
                    r["verify"]["initialized"],
                    r["verify"]["still_uninitialized"],
                    r["verify"].get("injected_once"),
                    r["verify"].get("injected_twice_or_more"),
                ]
                for k, r in sc.items()
            ],
        }
    ]
    res["plots"] = [
        {
            "file": "initializer_latency.png",
            "kind": "cdf",
            "title": "initializer: blocking create latency",
            "xlabel": "ms",
            "ylabel": "fraction",
            "series": {k: r["latency_sample_ms"] for k, r in sc.items()},
        }
    ]
    res["notes"] = [
        "kubesim serve and each controller run as separate processes; the burst client is controllerkit.kube.Client "
        "(official kubernetes client) with one connection per thread; all on the same 2 cores.",
        "bare = bench/bare_initializer.py (list/watch + GET + PUT removing pending, 2 workers); "
        "tproxy = python -m initializer (default 2 workers).",
        f"faults = kubesim --faults {faults} (conflict: fraction of PUTs answered 409; watch_cut: per-event "
        "probability that the watch stream is closed).",
    ]
    if have_ours is not True:
        res["status"] = f"ok (tproxy initializer skipped: {have_ours})"
    return res
