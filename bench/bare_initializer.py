"""The baseline Initializer for the benchmark: the least a correct 1.7 initializer must do.

List+watch deployments (``apps/v1beta1``, all namespaces, ``includeUninitialized=true``); for
every object whose ``pending[0]`` is ours: GET it, drop our entry (``initializers: null`` when we
were last), PUT it with the read resourceVersion; on 409 re-GET and redo. No injection, no config,
no metrics — so tproxy's initializer is read as a ratio to the bare cost of the protocol.
Relists on 410 and re-watches from the last resourceVersion when a stream is cut. Worker count as
tproxy's default (2). ``python -m bench.bare_initializer --kubeconfig PATH [--name NAME]``.
"""

from __future__ import annotations

import queue
import sys
import threading
import time

from controllerkit.cli import ExactArgumentParser

DEPLOYMENTS = "/apis/apps/v1beta1/deployments"


def ours_first(obj: dict, name: str) -> bool:
    pend = ((obj.get("metadata") or {}).get("initializers") or {}).get("pending") or []
    return bool(pend) and pend[0].get("name") == name


def release(client, key: str, name: str) -> str:
    from controllerkit.errors import ApiError

    ns, n = key.split("/", 1)
    path = f"/apis/apps/v1beta1/namespaces/{ns}/deployments/{n}"
    for _ in range(20):
        try:
            obj = client.get(path)
        except ApiError as e:
            if e.code == 404:
                return "gone"
            raise
        if not ours_first(obj, name):
            return "not-ours"
        init = obj["metadata"]["initializers"]
        rest = init["pending"][1:]
        obj["metadata"]["initializers"] = {**init, "pending": rest} if rest else None
        try:
            client.replace(path, obj)
            return "released"
        except ApiError as e:
            if e.code in (409, 500):
                continue
            if e.code == 404:
                return "gone"
            raise
    return "gave-up"


def main(argv=None) -> int:
    p = ExactArgumentParser(prog="python -m bench.bare_initializer", description=__doc__.split("\n\n")[0])
    p.add_argument("--kubeconfig", required=True)
    p.add_argument("--name", default="tproxy.initializer.kubernetes.io")
    p.add_argument("--workers", type=int, default=2)
    a = p.parse_args(argv)
    from controllerkit.kube import Client
    from controllerkit.errors import ApiError, StreamError

    client = Client.from_config(a.kubeconfig)
    q: "queue.Queue[str]" = queue.Queue()
    queued: set[str] = set()
    lock = threading.Lock()

    def enqueue(obj):
        if ours_first(obj, a.name):
            key = f"{obj['metadata']['namespace']}/{obj['metadata']['name']}"
            with lock:
                if key in queued:
                    return
                queued.add(key)
            q.put(key)

    def worker():
        while True:
            key = q.get()
            with lock:
                queued.discard(key)
            try:
                release(client, key, a.name)
            except Exception as e:  # retried later: never forget a key
                print(f"bare_initializer: {key}: {e}", file=sys.stderr, flush=True)
                time.sleep(0.2)
                with lock:
                    queued.add(key)
                q.put(key)

    for _ in range(a.workers):
        threading.Thread(target=worker, daemon=True).start()
    print("bare_initializer: started", flush=True)
    rv = None
    while True:
        try:
            if rv is None:
                lst = client.list(DEPLOYMENTS, includeUninitialized="true")
                rv = lst["metadata"]["resourceVersion"]
                for obj in lst.get("items", []):
                    enqueue(obj)
            for etype, obj in client.watch(DEPLOYMENTS, resource_version=rv, timeout_seconds=300, includeUninitialized="true"):
                rv = obj.get("metadata", {}).get("resourceVersion", rv)
                if etype in ("ADDED", "MODIFIED"):
                    enqueue(obj)
        except ApiError as e:
            if e.code == 410:
                rv = None
                continue
            print(f"bare_initializer: watch: {e}", file=sys.stderr, flush=True)
            time.sleep(0.2)
        except StreamError:
            time.sleep(0.05)


if __name__ == "__main__":
    sys.exit(main())
