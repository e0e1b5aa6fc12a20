"""End-to-end programming latency through the real podwatch controller (runs inside a fresh netns).

``ip netns exec NS python -m bench.podwatch_e2e_worker --pods N --samples K`` starts, inside the
namespace, ``kubesim serve`` on the namespace's loopback and ``python -m podwatch`` for node
``bench-node``; creates N annotated pods with IPs on that node and waits until the node's redirect
chain holds them all; then K times: create one more annotated pod, give it its IP (PUT status), and
poll the nat table (every 20 ms: each poll costs CPU that podwatch competes for) until a rule for that IP is there. Latency = "status with podIP
accepted by the API server" → "rule visible in iptables": watch delivery + podwatch's coalescing
interval (default 0.1 s) + its sync. Prints one JSON object.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
import threading
import time

from controllerkit.cli import ExactArgumentParser

NODE = "bench-node"
ANNOTATION = "initializer.kubernetes.io/tproxy"
BASE = ipaddress.ip_address("198.18.0.0")


def pod_obj(i: int) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"web-{i}", "annotations": {ANNOTATION: "true"}, "labels": {"app": "web"}},
        "spec": {"nodeName": NODE, "containers": [{"name": "app", "image": "debian:9"}]},
    }


def set_ip(client, ns: str, i: int) -> None:
    path = f"/api/v1/namespaces/{ns}/pods/web-{i}/status"
    for _ in range(5):
        obj = client.get(f"/api/v1/namespaces/{ns}/pods/web-{i}")
        obj["status"] = {**(obj.get("status") or {}), "phase": "Running", "podIP": str(BASE + 256 + i)}
        try:
            client.replace(path, obj)
            return
        except Exception as e:  # 409: re-read and retry
            if getattr(e, "code", None) != 409:
                raise
    raise RuntimeError(f"could not set the IP of web-{i}")


def chain_ips() -> set[str]:
    out = subprocess.run(["iptables", "-w", "-t", "nat", "-S", "TPROXY-REDIRECT"], capture_output=True, text=True).stdout
    ips = set()
    for line in out.splitlines():
        parts = line.split()
        if "-s" in parts:
            ips.add(parts[parts.index("-s") + 1].split("/")[0])
    return ips


def main(argv=None) -> int:
    p = ExactArgumentParser(prog="python -m bench.podwatch_e2e_worker", description=__doc__.split("\n\n")[0])
    p.add_argument("--pods", type=int, required=True)
    p.add_argument("--samples", type=int, default=20)
    p.add_argument("--timeout", type=float, default=120.0)
    a = p.parse_args(argv)
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    from bench.kubeutil import KubeSim, ensure_namespace

    ks = KubeSim()
    pw = None
    try:
        client = ks.client(pool=12)
        ns = "bench"
        ensure_namespace(client, ns)
        pw = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "podwatch",
                "--kubeconfig",
                ks.kubeconfig,
                "--node-name",
                NODE,
                "--metrics-port",
                "0",
                "--log-level",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        # N pods in parallel (8 threads), then wait for the chain to hold them all.
        nxt = [0]
        lock = threading.Lock()
        errors: list[str] = []

        def make():
            while True:
                with lock:
                    i = nxt[0]
                    nxt[0] += 1
                if i >= a.pods:
                    return
                try:
                    client.create(f"/api/v1/namespaces/{ns}/pods", pod_obj(i))
                    set_ip(client, ns, i)
                except Exception as e:
                    errors.append(str(e))

        t0 = time.perf_counter()
        ths = [threading.Thread(target=make) for _ in range(8)]
        for t in ths:
            t.start()
        for t in ths:
            t.join()
        if errors:
            raise RuntimeError(f"creating pods failed: {errors[:3]}")
        deadline = time.monotonic() + a.timeout
        while len(chain_ips()) < a.pods:
            if pw.poll() is not None:
                raise RuntimeError(f"podwatch exited {pw.returncode}: {pw.stderr.read()[-800:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"podwatch programmed {len(chain_ips())} of {a.pods} pods in {a.timeout} s")
            time.sleep(0.2)
        initial = time.perf_counter() - t0
        lat = []
        for k in range(a.samples):
            i = a.pods + k
            client.create(f"/api/v1/namespaces/{ns}/pods", pod_obj(i))
            time.sleep(0.15)  # let the create's own (IP-less) event settle
            ip = str(BASE + 256 + i)
            set_ip(client, ns, i)
            ts = time.perf_counter()
            while ip not in chain_ips():
                if time.perf_counter() - ts > 30:
                    raise TimeoutError(f"rule for {ip} not programmed within 30 s")
                time.sleep(0.02)
            lat.append(time.perf_counter() - ts)
        print(json.dumps({"pods": a.pods, "initial_program_s": initial, "latency_s": lat}))
        return 0
    finally:
        if pw is not None and pw.poll() is None:
            pw.terminate()
            try:
                pw.wait(10)
            except subprocess.TimeoutExpired:
                pw.kill()
        ks.stop()


if __name__ == "__main__":
    sys.exit(main())
