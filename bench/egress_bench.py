"""egress: tproxy with 1 and N workers vs bare mitmdump vs Debian's squid, side by side in one run.

Every proxy runs at once in the node namespace of bench/topology.py; the node's nat REDIRECT is
switched between them and the rounds interleave the modes, so the machine's load drifts over all
of them alike. Per mode: HTTP and HTTPS, keep-alive and a new connection per request (TCP and TLS
handshake each), req/s from wrk (bench/wrk.py; HTTPS with a new connection per request from ab,
bench/ab.py, which does not spin through a proxied TLS handshake as wrk does) in the client namespace
against an nginx upstream (bench/topology.py), and the proxy's CPU per
request (user + system of the proxy's whole process tree: the supervisor and its workers, squid
and its certificate helpers).

- ``direct``: no proxy (the limit: wrk against nginx).
- ``bare``: one ``mitmdump --mode transparent`` without addon.
- ``tproxy-1`` / ``tproxy-N``: ``python -m proxy.workers`` with 1 and N workers (N = usable CPUs),
  the addon, a policy allowing the two benchmark hosts, podwatch's ``REDIRECT --to-ports A-B --random``.
- ``tproxy-splice``: one tproxy worker whose policy says ``splice: true`` for both hosts: HTTPS
  forwarded by SNI without decryption (proxy/splice.py; its HTTP path is tproxy-1's, so only HTTPS).
- ``squid-bump``: squid in intercept mode with the same allow list: HTTP by ``dstdomain``, HTTPS
  bumped (``ssl_bump peek step1; bump``: decrypted and checked like tproxy), upstream TLS verified.
- ``squid-splice``: HTTPS peeked by SNI and spliced (no decryption): the no-decryption reference
  (its HTTP path is squid-bump's, so only HTTPS is measured).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import yaml

from bench import ab, common, wrk
from bench.proxy_bench import make_ca
from bench.topology import Topology, wait_listening

PORTS = {"bare": 8090, "tproxy-1": 8100, "tproxy-N": 8110, "tproxy-splice": 8120}
HTTPS_ONLY = ("squid-splice", "tproxy-splice")  # their HTTP path is another mode's
SQUID_HTTP, SQUID_BUMP, SQUID_SPLICE = 3129, 3130, 3131
HOSTS = "www.google.com storage.googleapis.com"
SQUID_CONF = """
http_port 127.0.0.1:3128
http_port {http} intercept
https_port {bump} intercept ssl-bump tls-cert={ca} generate-host-certificates=on dynamic_cert_mem_cache_size=8MB name=bump
https_port {splice} intercept ssl-bump tls-cert={ca} generate-host-certificates=on name=splice
sslcrtd_program /usr/lib/squid/security_file_certgen -s {dir}/ssl_db -M 8MB
sslcrtd_children 2 startup=1 idle=1
acl step1 at_step SslBump1
acl bumpport myportname bump
acl allowed_sni ssl::server_name {hosts}
acl allowed dstdomain {hosts}
ssl_bump peek step1
ssl_bump bump bumpport
ssl_bump splice allowed_sni
ssl_bump terminate all
http_access allow allowed
http_access deny all
tls_outgoing_options cafile={upstream_ca}
cache deny all
cache_mem 8 MB
access_log stdio:{dir}/access.log
cache_log {dir}/cache.log
pid_filename {dir}/squid.pid
coredump_dir {dir}
cache_effective_user proxy
shutdown_lifetime 1 seconds
"""


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` and every live descendant (workers, helpers)."""
    tck = os.sysconf("SC_CLK_TCK")
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            stats[int(entry)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tck)
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        if p in stats:
            total += stats[p][1]
        todo += [c for c, (ppid, _) in stats.items() if ppid == p]
    return total


def redirect(topo: Topology, mode: str, n_workers: int) -> None:
    if mode == "direct":
        topo.redirect(None)
    elif mode.startswith("squid"):
        topo.redirect(SQUID_HTTP, dports="80")
        topo.redirect(SQUID_BUMP if mode == "squid-bump" else SQUID_SPLICE, dports="443", flush=False)
    else:
        port = PORTS[mode]
        topo.redirect(f"{port}-{port + n_workers - 1}" if mode == "tproxy-N" else port)


def start_squid(topo: Topology, ca_pem: str) -> subprocess.Popen:
    squid = shutil.which("squid") or "/usr/sbin/squid"
    if not os.path.exists(squid):
        raise common.Skip("squid not installed (apt-get install squid-openssl)")
    d = os.path.join(topo.tmp, "squid")
    os.makedirs(d, exist_ok=True)
    subprocess.run(
        ["/usr/lib/squid/security_file_certgen", "-c", "-s", f"{d}/ssl_db", "-M", "8MB"], check=True, capture_output=True
    )
    conf = os.path.join(d, "squid.conf")
    with open(conf, "w") as f:
        f.write(
            SQUID_CONF.format(
                http=SQUID_HTTP, bump=SQUID_BUMP, splice=SQUID_SPLICE, ca=ca_pem, dir=d, hosts=HOSTS, upstream_ca=topo.ca_file
            )
        )
    subprocess.run(["chown", "-R", "proxy:proxy", d], check=True)
    os.chmod(topo.tmp, 0o755)
    p = topo.spawn(topo.node, [squid, "-N", "-f", conf], log="squid.log")
    for port in (SQUID_HTTP, SQUID_BUMP, SQUID_SPLICE):
        wait_listening(topo.node, port, timeout=60, proc=p)
    return p


def run(cfg: common.BenchConfig) -> dict:
    common.need_root()
    from proxy.cpus import usable_cpus

    n_workers = usable_cpus()
    duration = cfg.pick(1, 3)
    rounds = cfg.pick(1, max(cfg.repeats, 5))
    concurrency = 16
    kinds = [("http", False), ("https", False), ("http", True), ("https", True)]
    wrk.binary(), ab.binary()  # a clear Skip before the namespaces are built
    topo = Topology(prefix="beg").up(upstream="nginx")
    client = wrk.Wrk(topo.client, connections=concurrency, threads=2)
    tls_new = ab.Ab(topo.client, connections=concurrency)
    procs: dict[str, subprocess.Popen] = {}
    notes = [
        f"Client: wrk (C), {concurrency} connections on 2 threads, {duration} s per mode, scheme and connection kind "
        f"per round, {rounds} interleaved round(s) after one unrecorded warm-up pass over every mode"
        + (" (skipped: quick run)" if cfg.quick else "")
        + "; HTTPS with a new connection per request: ab (bench/ab.py), 16 concurrent, because wrk spins "
        "through a proxied TLS handshake (1-6 ms of client CPU per connection, which starved 2 workers); "
        "upstream: one nginx worker (`GET /` → 200). All are C so that the proxies, not the client or the "
        "upstream, are what the shared cores are spent on (bench/wrk.py: the pure-Python loadgen capped the "
        "N-worker figure). req/s and CPU ms/request are medians over rounds; ab counts 2xx and non-2xx "
        "responses, wrk each status.",
        f"tproxy-N = {n_workers} workers (the CPUs this run may use). wrk and nginx still run on the same cores "
        "(a few % of them at these rates), so the req/s ratio N/1 is a slight floor.",
        "CPU ms/request = user+system time of the proxy's process tree over a run ÷ the requests it served.",
        "squid (Debian's squid-openssl) in intercept mode, one process; tproxy = mitmproxy 11.0.2 + addon; "
        "both verify upstream TLS against the test CA and allow only the two benchmark hosts.",
    ]
    res: dict = {"workers": n_workers, "rounds": rounds, "duration_s": duration, "concurrency": concurrency}
    try:
        confdir = os.path.join(topo.tmp, "mitm")
        make_ca(confdir)
        policy = os.path.join(topo.tmp, "policy.yaml")
        with open(policy, "w") as f:
            yaml.safe_dump({"rules": [{"host": h} for h in HOSTS.split()]}, f)
        splice_policy = os.path.join(topo.tmp, "policy-splice.yaml")
        with open(splice_policy, "w") as f:
            yaml.safe_dump({"rules": [{"host": h, "splice": True} for h in HOSTS.split()]}, f)
        mitm = [
            "--mode",
            "transparent",
            "-q",
            "--set",
            f"confdir={confdir}",
            "--set",
            "connection_strategy=lazy",
            "--set",
            f"ssl_verify_upstream_trusted_ca={topo.ca_file}",
            "--set",
            "stream_large_bodies=1m",
        ]
        procs["bare"] = topo.spawn(
            topo.node,
            [
                sys.executable,
                "-c",
                "from mitmproxy.tools.main import mitmdump; mitmdump()",
                *mitm,
                "--listen-port",
                str(PORTS["bare"]),
            ],
            log="bare.log",
        )

        def addon(policy_file: str) -> list:
            return [
                "-s",
                os.path.join(common.REPO, "proxy", "addon.py"),
                "--set",
                f"tproxy_policy={policy_file}",
                "--set",
                "flow_detail=0",
                "--set",
                "termlog_verbosity=error",
            ]

        for mode, n, policy_file in (
            ("tproxy-1", 1, policy),
            ("tproxy-N", n_workers, policy),
            ("tproxy-splice", 1, splice_policy),
        ):
            procs[mode] = topo.spawn(
                topo.node,
                [
                    sys.executable,
                    "-m",
                    "proxy.workers",
                    "--workers",
                    str(n),
                    "--port",
                    str(PORTS[mode]),
                    "--audit",
                    os.path.join(topo.tmp, f"audit-{mode}.log"),
                    "--",
                    *mitm,
                    *addon(policy_file),
                ],
                log=f"{mode}.log",
            )
        procs["squid"] = start_squid(topo, os.path.join(confdir, "mitmproxy-ca.pem"))
        for mode in ("bare", "tproxy-1", "tproxy-N", "tproxy-splice"):
            for i in range(n_workers if mode == "tproxy-N" else 1):
                try:
                    wait_listening(topo.node, PORTS[mode] + i, timeout=60, proc=procs[mode])
                except Exception as e:
                    raise RuntimeError(f"{mode} did not start: {e}; log: {topo.log_tail(mode + '.log')}") from e
        modes = ["direct", "bare", "tproxy-1", "tproxy-N", "tproxy-splice", "squid-bump", "squid-splice"]

        def loadgen(scheme: str, new: bool, dur: float) -> dict:
            if scheme == "https" and new:
                return tls_new.run(f"{scheme}://www.google.com/", duration=dur)
            return client.run(f"{scheme}://www.google.com/", duration=dur, new_connection=new)

        def measured(mode: str) -> list:
            return [k for k in kinds if not (mode in HTTPS_ONLY and k[0] == "http")]

        raw: dict = {m: {f"{s}{'-new' if n else ''}": [] for s, n in measured(m)} for m in modes}
        for mode in modes if not cfg.quick else ():  # warm-up pass, not recorded (certificates, caches)
            redirect(topo, mode, n_workers)
            for scheme, new in measured(mode):
                loadgen(scheme, new, 1)
        for rnd in range(rounds):
            for mode in modes:
                redirect(topo, mode, n_workers)
                owner = procs.get("squid" if mode.startswith("squid") else mode)
                for scheme, new in measured(mode):
                    c0 = tree_cpu_seconds(owner.pid) if owner else None
                    r = loadgen(scheme, new, duration)
                    if owner and r["total_requests"]:
                        r["cpu_ms_per_req"] = (tree_cpu_seconds(owner.pid) - c0) * 1000 / r["total_requests"]
                    raw[mode][f"{scheme}{'-new' if new else ''}"].append(r)
                    common.log(
                        f"egress round {rnd + 1} {mode} {scheme}{' new-conn' if new else ''}: "
                        f"{r['rps']:.0f} req/s statuses={r['statuses']} errors={r['errors']}"
                    )
    finally:
        client.close()
        topo.down()
    return summarize(res, raw, notes, n_workers)


def summarize(res: dict, raw: dict, notes: list, n_workers: int) -> dict:
    table: dict = {}
    rows = []
    for mode, by_kind in raw.items():
        table[mode] = {}
        for kind, runs in by_kind.items():
            statuses: dict = {}
            errors: dict = {}
            for r in runs:
                for k, v in r["statuses"].items():
                    statuses[k] = statuses.get(k, 0) + v
                for k, v in r["errors"].items():
                    errors[k] = errors.get(k, 0) + v
            table[mode][kind] = {
                "rps": common.spread(r["rps"] for r in runs),
                "cpu_ms_per_req": common.spread(r.get("cpu_ms_per_req") for r in runs),
                "statuses": statuses,
                "errors": errors,
            }
            t = table[mode][kind]
            rows.append(
                [
                    kind,
                    mode,
                    t["rps"]["median"],
                    t["rps"]["rel_spread"],
                    t["cpu_ms_per_req"]["median"],
                    json.dumps(statuses),
                    json.dumps(errors) if errors else "",
                ]
            )
    res["results"] = table

    def rps(mode, kind):
        return table.get(mode, {}).get(kind, {}).get("rps", {}).get("median")

    def cpu(mode, kind):
        return table.get(mode, {}).get(kind, {}).get("cpu_ms_per_req", {}).get("median")

    summary = []
    for kind in ("http", "https", "http-new", "https-new"):
        summary.append(
            {
                "metric": f"{kind} req/s: tproxy {n_workers} workers / 1 worker",
                "value": common.ratio(rps("tproxy-N", kind), rps("tproxy-1", kind)),
                "target": "≥ 1.7 (N=2)" if kind == "http" else None,
            }
        )
    for kind in ("https", "https-new"):
        summary.append(
            {
                "metric": f"{kind} proxy CPU per request: tproxy / squid bump",
                "value": common.ratio(cpu("tproxy-1", kind), cpu("squid-bump", kind)),
                "target": "≤ 3",
            }
        )
        summary.append(
            {
                "metric": f"{kind} proxy CPU per request: tproxy / squid splice (no decryption)",
                "value": common.ratio(cpu("tproxy-1", kind), cpu("squid-splice", kind)),
            }
        )
        summary.append(
            {
                "metric": f"{kind} proxy CPU per request: tproxy / bare mitmdump",
                "value": common.ratio(cpu("tproxy-1", kind), cpu("bare", kind)),
            }
        )
    for kind in ("https", "https-new"):  # what splicing saves (issue 17 item 3)
        summary.append(
            {
                "metric": f"{kind} req/s: tproxy splice / tproxy bump (1 worker each)",
                "value": common.ratio(rps("tproxy-splice", kind), rps("tproxy-1", kind)),
            }
        )
        summary.append(
            {
                "metric": f"{kind} proxy CPU per request: tproxy splice / tproxy bump",
                "value": common.ratio(cpu("tproxy-splice", kind), cpu("tproxy-1", kind)),
            }
        )
        summary.append(
            {
                "metric": f"{kind} proxy CPU per request: tproxy splice / squid splice",
                "value": common.ratio(cpu("tproxy-splice", kind), cpu("squid-splice", kind)),
            }
        )
    summary.append(
        {
            "metric": "http req/s: squid / tproxy 1 worker",
            "value": common.ratio(rps("squid-bump", "http"), rps("tproxy-1", "http")),
        }
    )
    bad = {f"{m}/{k}": v["errors"] for m, d in table.items() for k, v in d.items() if v["errors"]}
    non200 = {f"{m}/{k}": v["statuses"] for m, d in table.items() for k, v in d.items() if set(v["statuses"]) - {"200", "2xx"}}
    if bad or non200:
        notes.append(f"request errors: {bad}; non-200: {non200}")
    tables = [
        {
            "title": "Egress proxies side by side (median over rounds)",
            "columns": ["kind", "mode", "req/s", "spread ±rel", "proxy CPU ms/req", "statuses", "errors"],
            "rows": rows,
        }
    ]
    kinds = ("http", "https", "http-new", "https-new")
    plots = [
        {
            "file": "egress_rps.png",
            "kind": "bar",
            "title": "egress: req/s (median)",
            "ylabel": "req/s",
            "series": {f"{m} {k}": rps(m, k) for k in kinds for m in table if rps(m, k)},
        },
        {
            "file": "egress_cpu.png",
            "kind": "bar",
            "title": "egress: proxy CPU ms per request (median)",
            "ylabel": "ms",
            "series": {f"{m} {k}": cpu(m, k) for k in kinds for m in table if cpu(m, k)},
        },
    ]
    res.update(summary=summary, tables=tables, plots=plots, notes=notes)
    if bad or non200:
        res["status"] = f"ok (with request errors in {', '.join(sorted(set(bad) | set(non200)))})"
    return res
