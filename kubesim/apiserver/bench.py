"""A tiny throughput benchmark of the emulator through the official client over HTTPS.

``run(n, concurrency)`` creates ``n`` ConfigMaps (plain writes) with ``concurrency`` threads over
keep-alive connections while one watcher counts the events, then ``n`` blocking Deployment creates
that an in-process initializer thread completes (the Initializers round trip). It returns a dict of
rates, so benchmarks of the controllers can report their cost as a ratio to the bare emulator.
"""
from __future__ import annotations

import concurrent.futures
import threading
import time


def run(n: int = 500, concurrency: int = 16, k8s_version: str = "1.7", srv=None) -> dict:
    from kubernetes.client import CoreV1Api

    from kubesim.apiserver import APIServer
    from kubesim.testing import api_client_for, raw, watch_events

    own = srv is None
    if own:
        srv = APIServer(k8s_version=k8s_version).start()
    try:
        clients = [api_client_for(srv) for _ in range(concurrency)]
        seen = {"n": 0}
        done = threading.Event()

        def watch():
            for _ in watch_events(api_client_for(srv), "/api/v1/namespaces/default/configmaps",
                                  {"resourceVersion": str(srv.store.rv)}, timeout=120):
                seen["n"] += 1
                if seen["n"] >= n:
                    done.set()
                    return

        threading.Thread(target=watch, daemon=True).start()
        time.sleep(0.2)

        def write(i):
            CoreV1Api(clients[i % concurrency]).create_namespaced_config_map(
                "default", {"metadata": {"name": f"bench-{i}"}, "data": {"i": str(i)}})

        t0 = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(concurrency) as ex:
            list(ex.map(write, range(n)))
        t_write = time.perf_counter() - t0
        done.wait(60)
        t_watch = time.perf_counter() - t0

        # Blocking creates completed by an initializer thread watching with includeUninitialized.
        raw(clients[0], "POST", "/apis/admissionregistration.k8s.io/v1alpha1/initializerconfigurations",
            body={"metadata": {"name": "bench"}, "initializers": [{"name": "bench.initializer.kubesim.io",
                  "rules": [{"apiGroups": ["*"], "apiVersions": ["*"], "resources": ["deployments"]}]}]})
        stop = threading.Event()

        def initializer():
            c = api_client_for(srv)
            for ev in watch_events(c, "/apis/extensions/v1beta1/deployments",
                                   {"includeUninitialized": "true", "resourceVersion": str(srv.store.rv)},
                                   timeout=120):
                obj = ev["object"]
                if ev["type"] == "ADDED" and obj["metadata"].get("initializers"):
                    m = obj["metadata"]
                    raw(c, "PATCH", f"/apis/extensions/v1beta1/namespaces/{m['namespace']}/deployments/{m['name']}",
                        body={"metadata": {"initializers": None}}, content_type="application/merge-patch+json")
                if stop.is_set():
                    return

        threading.Thread(target=initializer, daemon=True).start()
        time.sleep(0.2)

        def blocking(i):
            s, _ = raw(clients[i % concurrency], "POST", "/apis/extensions/v1beta1/namespaces/default/deployments",
                       body={"metadata": {"name": f"bench-{i}"}, "spec": {"template": {
                           "metadata": {"labels": {"app": "b"}},
                           "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}})
            return s

        t1 = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(concurrency) as ex:
            codes = list(ex.map(blocking, range(n)))
        t_block = time.perf_counter() - t1
        stop.set()
        return {"n": n, "concurrency": concurrency,
                "writes_per_s": n / t_write, "watch_events_per_s": seen["n"] / t_watch,
                "blocking_creates_per_s": n / t_block,
                "blocking_create_codes": {c: codes.count(c) for c in set(codes)}}
    finally:
        if own:
            srv.stop()


if __name__ == "__main__":
    import json
    import sys
    print(json.dumps(run(int(sys.argv[1]) if len(sys.argv) > 1 else 500,
                         int(sys.argv[2]) if len(sys.argv) > 2 else 16), indent=2))
