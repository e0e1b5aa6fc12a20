"""sidecar: time from the init container's start to its exit, when the node already intercepts.

Each run creates a fresh pod namespace (veth to the node namespace, whose nat PREROUTING
REDIRECTs the pods' tcp 80/443 to the responder's port) and runs ``sidecar/start.sh`` in it, as
the kubelet would: it applies the IPv4+IPv6 lock, then proves interception with the probe.
Modes, interleaved run by run:
- ``python``: ``python3 -c pass`` in the pod (interpreter start, the floor);
- ``lock-only``: ``start.sh --no-verify`` (lock applied, no proof);
- ``stand-in``: full run, probe answered by bench/probe_standin.py (the least any proxy does);
- ``proxy``: full run, probe answered by the real ``mitmdump --mode transparent`` + tproxy addon.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from bench import common
from bench.topology import Topology, wait_listening

STANDIN_PORT = 8090
PROXY_PORT = 8080
START_SH = os.path.join(common.REPO, "sidecar", "start.sh")
ADDON = os.path.join(common.REPO, "proxy", "addon.py")


def run(cfg: common.BenchConfig) -> dict:
    common.need_root()
    if not os.path.exists(START_SH):
        raise common.Skip("sidecar/start.sh not found")
    from kubesim.netns import Netns, veth

    have_proxy = os.path.exists(ADDON)
    runs = cfg.pick(3, 10)
    modes = ["python", "lock-only", "stand-in"] + (["proxy"] if have_proxy else [])
    topo = Topology(prefix="bsc").up(upstream=False)
    times: dict[str, list[float]] = {m: [] for m in modes}
    failures: dict[str, list[str]] = {m: [] for m in modes}
    try:
        procs = {
            "stand-in": topo.spawn(
                topo.node, [sys.executable, "-m", "bench.probe_standin", "--port", str(STANDIN_PORT)], log="standin.log"
            )
        }
        if have_proxy:
            from bench.proxy_bench import make_ca

            confdir = os.path.join(topo.tmp, "mitm")
            make_ca(confdir)
            procs["proxy"] = topo.spawn(
                topo.node,
                [
                    sys.executable,
                    "-c",
                    "from mitmproxy.tools.main import mitmdump; mitmdump()",
                    "--mode",
                    "transparent",
                    "--listen-port",
                    str(PROXY_PORT),
                    "-q",
                    "--set",
                    f"confdir={confdir}",
                    "--set",
                    "connection_strategy=lazy",
                    "-s",
                    ADDON,
                ],
                log="proxy.log",
            )
        wait_listening(topo.node, STANDIN_PORT, proc=procs["stand-in"])
        if have_proxy:
            wait_listening(topo.node, PROXY_PORT, timeout=60, proc=procs["proxy"])
        env = {**os.environ, "ALLOW_DNS": "198.18.0.53", "TPROXY_VERIFY_TIMEOUT": "15", "TPROXY_PYTHON": sys.executable}
        k = 0
        for _i in range(runs):
            for mode in modes:
                k += 1
                pod = Netns.create("bscp")
                try:
                    node_if = f"bp{k}"
                    veth(topo.node, node_if, pod, "eth0")
                    net = f"198.19.{k}"
                    topo.node.add_addr(node_if, f"{net}.1/24")
                    pod.add_addr("eth0", f"{net}.2/24")
                    pod.route("default", "via", f"{net}.1")
                    port = PROXY_PORT if mode == "proxy" else STANDIN_PORT
                    topo.node.run("iptables", "-t", "nat", "-F", "PREROUTING")
                    topo.node.run(
                        "iptables",
                        "-t",
                        "nat",
                        "-A",
                        "PREROUTING",
                        "-s",
                        f"{net}.2",
                        "-p",
                        "tcp",
                        "-m",
                        "multiport",
                        "--dports",
                        "80,443",
                        "-j",
                        "REDIRECT",
                        "--to-ports",
                        str(port),
                    )
                    if mode == "python":
                        argv = [sys.executable, "-c", "pass"]
                    elif mode == "lock-only":
                        argv = ["sh", START_SH, "--no-verify"]
                    else:
                        argv = ["sh", START_SH]
                    t0 = time.perf_counter()
                    p = subprocess.run(pod.exec_argv(argv), capture_output=True, text=True, env=env, cwd=common.REPO, timeout=60)
                    dt = time.perf_counter() - t0
                    if p.returncode == 0:
                        times[mode].append(dt)
                    else:
                        failures[mode].append(f"exit {p.returncode}: {p.stderr.strip()[-300:]}")
                finally:
                    pod.delete()
                    topo.node.run("ip", "link", "del", node_if, check=False)
    finally:
        topo.down()
    res: dict = {
        "runs": runs,
        "modes": modes,
        "seconds": {m: common.spread(times[m]) for m in modes},
        "failures": {m: f for m, f in failures.items() if f},
    }
    med = {m: res["seconds"][m]["median"] for m in modes}
    summary = []
    if med.get("proxy") is not None:
        summary.append(
            {
                "metric": "init container start→exit with the real proxy ready (median)",
                "value": round(med["proxy"] * 1000, 1),
                "unit": "ms",
            }
        )
        summary.append(
            {"metric": "start→exit: real proxy ÷ stand-in responder", "value": common.ratio(med["proxy"], med.get("stand-in"))}
        )
    summary.append(
        {
            "metric": "start→exit (stand-in) ÷ lock only (cost of the proof)",
            "value": common.ratio(med.get("stand-in"), med.get("lock-only")),
        }
    )
    res["summary"] = summary
    res["tables"] = [
        {
            "title": f"Init container start → exit ({runs} runs each, fresh pod netns per run)",
            "columns": ["mode", "median ms", "min ms", "max ms", "failures"],
            "rows": [
                [
                    m,
                    _ms(res["seconds"][m]["median"]),
                    _ms(res["seconds"][m]["min"]),
                    _ms(res["seconds"][m]["max"]),
                    len(failures[m]),
                ]
                for m in modes
            ],
        }
    ]
    res["plots"] = [
        {
            "file": "sidecar.png",
            "kind": "bar",
            "title": "sidecar: start → exit (median)",
            "ylabel": "ms",
            "series": {m: _ms(med[m]) for m in modes},
        }
    ]
    res["notes"] = [
        "sidecar/start.sh runs under `ip netns exec` in a fresh pod namespace, ALLOW_DNS set; "
        "the node REDIRECT is in place before the sidecar starts (proxy ready)."
    ]
    if not have_proxy:
        res["status"] = "ok (real proxy skipped: proxy/addon.py not found)"
    if any(failures.values()):
        res["status"] = "ok (with sidecar failures: see latest.json)"
    return res


def _ms(x):
    return None if x is None else round(x * 1000, 1)
