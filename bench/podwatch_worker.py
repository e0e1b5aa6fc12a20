"""Runs inside a fresh network namespace (``ip netns exec NS python -m bench.podwatch_worker``):
program N annotated pods' redirect rules with one algorithm, then time adding more pods one at a
time (programming latency). Prints one JSON object on stdout.

Both algorithms run from a process inside the namespace calling the iptables binaries through
subprocess, exactly as the real controllers do, so neither pays ``ip netns exec`` per call.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
import time

from controllerkit.cli import ExactArgumentParser

BASE = ipaddress.ip_address("198.18.0.0")


def pod(i: int) -> dict:
    return {"namespace": f"ns{i % 7}", "name": f"web-{i}", "ip": str(BASE + 256 + i)}


class Original:
    name = "original"

    def __init__(self, host_port: int = 8080):
        from bench import podwatch_original as original  # the original Go syncFirewall, flaws kept (BASELINE ONLY)

        self.original = original
        self.host_port = host_port

    def add(self, pods_so_far: list[dict], new: dict) -> None:
        # The original keyed rules by pod name only (comment "tproxy-<name>"); names here are unique.
        self.original.sync_pod(new["name"], new["ip"], self.host_port)

    def sync(self, pods: list[dict], deadline: float) -> int:
        done = 0
        for p in pods:
            if time.monotonic() > deadline:
                break
            self.add(pods[:done], p)
            done += 1
        return done


class Ours:
    """tproxy podwatch: render the whole desired state, apply it with one iptables-restore."""

    name = "ours"

    def __init__(self, host_port: int = 8080):
        from bench import podwatch_adapter

        self.adapter = podwatch_adapter.load(host_port)

    def add(self, pods_so_far: list[dict], new: dict) -> None:
        self.adapter.sync(pods_so_far + [new])

    def sync(self, pods: list[dict], deadline: float) -> int:
        self.adapter.sync(pods)
        return len(pods)


def count_redirects() -> int:
    out = subprocess.run(["iptables-save", "-t", "nat"], capture_output=True, text=True).stdout
    return sum(1 for line in out.splitlines() if line.startswith("-A") and "REDIRECT" in line)


def main(argv=None) -> int:
    p = ExactArgumentParser(prog="python -m bench.podwatch_worker", description=__doc__.split("\n\n")[0])
    p.add_argument("--algo", choices=("ours", "original"), required=True)
    p.add_argument("--pods", type=int, required=True, help="pods to program in the sync")
    p.add_argument("--latency-samples", type=int, default=0, help="then add this many pods one by one")
    p.add_argument("--resyncs", type=int, default=0, help="ours: re-apply the same state this many times")
    p.add_argument("--time-cap", type=float, default=120.0, help="stop the sync after this many seconds")
    a = p.parse_args(argv)
    try:
        algo = Ours() if a.algo == "ours" else Original()
    except Exception as e:
        print(json.dumps({"skipped": f"{type(e).__name__}: {e}"}))
        return 0
    pods = [pod(i) for i in range(a.pods)]
    t0 = time.perf_counter()
    done = algo.sync(pods, time.monotonic() + a.time_cap)
    sync_s = time.perf_counter() - t0
    out = {
        "algo": a.algo,
        "pods": a.pods,
        "pods_done": done,
        "capped": done < a.pods,
        "sync_s": sync_s,
        "redirect_rules": count_redirects(),
    }
    if a.resyncs and a.algo == "ours" and done == a.pods:
        rs = []
        for _ in range(a.resyncs):
            t = time.perf_counter()
            algo.sync(pods, 0)
            rs.append(time.perf_counter() - t)
        out["resync_s"] = rs
    if a.latency_samples and done == a.pods:
        lat, have = [], list(pods)
        for i in range(a.latency_samples):
            new = pod(a.pods + i)
            t = time.perf_counter()
            algo.add(have, new)
            lat.append(time.perf_counter() - t)
            have.append(new)
        out["latency_s"] = lat
        out["redirect_rules_after"] = count_redirects()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
