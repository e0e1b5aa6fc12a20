"""kubesim: API server emulator throughput, the yardstick for the controller figures.

- writes/s: T client threads create ConfigMaps, then update each one (PUT with its
  resourceVersion), through the official client over HTTPS (controllerkit.kube.Client, one
  keep-alive connection per thread).
- watch fan-out: W watchers on one namespace's ConfigMaps; one writer creates M objects; time from
  the first create until every watcher has seen all M ADDED events (delivered events/s), and the
  per-event delay from "create sent" to "last watcher got it".
"""

from __future__ import annotations

import threading
import time

from bench import common
from bench.kubeutil import KubeSim, ensure_namespace


def _cm(name: str, i: int) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "labels": {"bench": "w"}},
        "data": {"i": str(i), "payload": "x" * 200},
    }


def writes(ks: KubeSim, threads: int, per_thread: int, ns: str) -> dict:
    client = ks.client(pool=threads + 4)
    ensure_namespace(client, ns)
    path = f"/api/v1/namespaces/{ns}/configmaps"
    create_lat: list[float] = []
    update_lat: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(threads + 1)

    def worker(t: int):
        mine = []
        barrier.wait()
        for i in range(per_thread):
            name = f"cm-{t}-{i}"
            t0 = time.perf_counter()
            try:
                obj = client.create(path, _cm(name, i))
                mine.append(obj)
                with lock:
                    create_lat.append(time.perf_counter() - t0)
            except Exception as e:
                with lock:
                    errors.append(f"create: {e}")
        barrier.wait()
        for obj in mine:
            obj["data"]["i"] = obj["data"]["i"] + "u"
            t0 = time.perf_counter()
            try:
                client.replace(f"{path}/{obj['metadata']['name']}", obj)
                with lock:
                    update_lat.append(time.perf_counter() - t0)
            except Exception as e:
                with lock:
                    errors.append(f"update: {e}")
        barrier.wait()

    ths = [threading.Thread(target=worker, args=(t,), daemon=True) for t in range(threads)]
    for th in ths:
        th.start()
    barrier.wait()
    t0 = time.perf_counter()
    barrier.wait()
    t1 = time.perf_counter()
    barrier.wait()
    t2 = time.perf_counter()
    for th in ths:
        th.join()
    return {
        "threads": threads,
        "creates": len(create_lat),
        "updates": len(update_lat),
        "create_per_s": len(create_lat) / (t1 - t0),
        "update_per_s": len(update_lat) / (t2 - t1),
        "writes_per_s": (len(create_lat) + len(update_lat)) / (t2 - t0),
        "create_latency": common.latency_summary(create_lat),
        "update_latency": common.latency_summary(update_lat),
        "errors": len(errors),
        "error_sample": errors[:3],
        "server_rss_mb": ks.rss_mb(),
    }


def fanout(ks: KubeSim, watchers: int, events: int, ns: str) -> dict:
    client = ks.client(pool=watchers + 4)
    ensure_namespace(client, ns)
    path = f"/api/v1/namespaces/{ns}/configmaps"
    rv = client.list(path).get("metadata", {}).get("resourceVersion")
    seen = [0] * watchers
    last_at: dict[str, float] = {}
    lock = threading.Lock()
    done = threading.Event()
    ready = threading.Barrier(watchers + 1)
    errors: list[str] = []
    streams = []

    def watch(w: int):
        try:
            stream = client.open_watch(path, resource_version=rv, timeout_seconds=120)
        except Exception as e:
            errors.append(str(e))
            ready.wait()
            return
        streams.append(stream)
        ready.wait()
        try:
            for etype, obj in stream:
                if etype != "ADDED":
                    continue
                now = time.perf_counter()
                with lock:
                    seen[w] += 1
                    name = obj["metadata"]["name"]
                    last_at[name] = max(last_at.get(name, 0.0), now)
                    if all(s >= events for s in seen):
                        done.set()
                if seen[w] >= events:
                    break
        except Exception as e:
            errors.append(f"watch {w}: {e}")

    ths = [threading.Thread(target=watch, args=(w,), daemon=True) for w in range(watchers)]
    for th in ths:
        th.start()
    ready.wait()
    created_at: dict[str, float] = {}
    t0 = time.perf_counter()
    for i in range(events):
        name = f"fan-{watchers}-{i}"
        created_at[name] = time.perf_counter()  # sent: a watcher may see the event before the writer's 201
        client.create(path, _cm(name, i))
    ok = done.wait(60)
    t1 = time.perf_counter()
    for s in streams:
        try:
            s.close()
        except Exception:
            pass
    delays = [last_at[n] - created_at[n] for n in created_at if n in last_at]
    return {
        "watchers": watchers,
        "events": events,
        "complete": ok,
        "delivered": sum(seen),
        "delivered_per_s": sum(seen) / (t1 - t0),
        "all_seen_s": t1 - t0,
        "delay_to_last_watcher": common.latency_summary(delays),
        "errors": len(errors),
        "error_sample": errors[:3],
    }


def run(cfg: common.BenchConfig) -> dict:
    threads = 8
    per_thread = cfg.pick(25, 100)
    watcher_counts = cfg.pick([1, 10], [1, 10, 50])
    events = cfg.pick(50, 200)
    res: dict = {"writes": [], "fanout": []}
    with KubeSim() as ks:
        for rep in range(cfg.repeats):
            r = writes(ks, threads, per_thread, f"bench-w{rep}")
            common.log(f"kubesim writes rep {rep + 1}: {r['writes_per_s']:.0f}/s (errors {r['errors']})")
            res["writes"].append(r)
        for w in watcher_counts:
            r = fanout(ks, w, events, f"bench-f{w}")
            common.log(f"kubesim fan-out {w} watchers: {r['delivered_per_s']:.0f} events/s complete={r['complete']}")
            res["fanout"].append(r)
    wps = common.spread(r["writes_per_s"] for r in res["writes"])
    cps = common.spread(r["create_per_s"] for r in res["writes"])
    ups = common.spread(r["update_per_s"] for r in res["writes"])
    res["writes_per_s"] = wps
    res["summary"] = [
        {
            "metric": f"writes/s (create+update, {threads} threads, official client over HTTPS)",
            "value": wps["median"],
            "target": "≥ 300",
        },
    ]
    if len(res["fanout"]) > 1:
        f1, fn = res["fanout"][0], res["fanout"][-1]
        res["summary"].append(
            {
                "metric": f"watch fan-out: delivered events/s with {fn['watchers']} watchers ÷ with {f1['watchers']}",
                "value": common.ratio(fn["delivered_per_s"], f1["delivered_per_s"]),
            }
        )
    res["tables"] = [
        {
            "title": f"Writes ({threads} threads × {per_thread} ConfigMaps, then one update each; {cfg.repeats} run(s))",
            "columns": ["", "median /s", "spread ±rel", "p50 ms (last run)", "p99 ms (last run)"],
            "rows": [
                [
                    "create",
                    cps["median"],
                    cps["rel_spread"],
                    res["writes"][-1]["create_latency"]["p50_ms"],
                    res["writes"][-1]["create_latency"]["p99_ms"],
                ],
                [
                    "update (PUT)",
                    ups["median"],
                    ups["rel_spread"],
                    res["writes"][-1]["update_latency"]["p50_ms"],
                    res["writes"][-1]["update_latency"]["p99_ms"],
                ],
                ["all writes", wps["median"], wps["rel_spread"], None, None],
            ],
        },
        {
            "title": f"Watch fan-out ({events} creates by one writer)",
            "columns": ["watchers", "all seen", "delivered events/s", "create sent → last watcher p50 ms", "p99 ms", "errors"],
            "rows": [
                [
                    r["watchers"],
                    r["complete"],
                    r["delivered_per_s"],
                    r["delay_to_last_watcher"]["p50_ms"],
                    r["delay_to_last_watcher"]["p99_ms"],
                    r["errors"],
                ]
                for r in res["fanout"]
            ],
        },
    ]
    res["plots"] = [
        {
            "file": "kubesim_fanout.png",
            "kind": "line",
            "logx": True,
            "title": "kubesim: watch fan-out",
            "xlabel": "watchers",
            "ylabel": "delivered events/s",
            "series": {"events/s": [[r["watchers"], r["delivered_per_s"]] for r in res["fanout"]]},
        }
    ]
    res["notes"] = [
        "kubesim serve runs as its own process on 127.0.0.1; the clients are controllerkit.kube.Client "
        "(raw REST over the official kubernetes 36.0.3 ApiClient), HTTPS, bearer token."
    ]
    if any(r["errors"] for r in res["writes"] + res["fanout"]):
        res["status"] = "ok (with client errors: see tables)"
    return res
