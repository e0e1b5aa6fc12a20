"""N proxy workers behind one REDIRECT --to-ports A-B --random (proxy/workers.py, podwatch/rules.py).

Real mitmdump workers under the real supervisor in a node netns, podwatch's real nat rules for the
client (the guard is left out on purpose: the redirect alone must fail closed when a worker is
dead), kubesim's upstream in an internet netns. The policy allows only storage.googleapis.com, so a
request to www.google.com answered 200 would have gone *around* the proxy (the upstream answers it),
418 is the proxy, and a reset/refused connection is the dead worker's port failing closed.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys

import pytest
import yaml

from bench.topology import CLIENT_IP, Topology
from kubesim.polling import scaled, wait_for
from podwatch import rules

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PORT = 8080

CLIENT = r"""
import json, socket, sys
host, n = sys.argv[1], int(sys.argv[2])
out = []
for i in range(n):
    try:
        s = socket.create_connection((host, 80), timeout=10)
        s.sendall(f"GET /solutions-public-assets/ HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        s.close()
        out.append(int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else "empty")
    except ConnectionRefusedError:
        out.append("refused")
    except ConnectionResetError:
        out.append("reset")
print(json.dumps(out))
"""


class Node:
    """The topology plus a supervisor with ``workers`` workers on 8080.. in the node netns."""

    def __init__(self, tmp_path, workers: int = 2, extra: tuple[str, ...] = (), other_pods: int = 0):
        self.topo = Topology(prefix="pw").up()
        self.tmp = str(tmp_path)
        self.audit = os.path.join(self.tmp, "audit.log")
        self.ports_file = os.path.join(self.tmp, "ports")
        policy = os.path.join(self.tmp, "policy.yaml")
        with open(policy, "w") as f:
            yaml.safe_dump({"rules": [{"host": "storage.googleapis.com"}]}, f)
        identity = os.path.join(self.tmp, "identity.json")
        with open(identity, "w") as f:
            pods = {
                f"10.{i // 250}.{i % 250}.7": {"namespace": f"ns-{i}", "name": f"pod-{i}", "serviceAccount": "sa"}
                for i in range(other_pods)
            }
            pods[CLIENT_IP] = {"namespace": "shop", "name": "web-1", "serviceAccount": "web"}
            json.dump({"version": 1, "node": "n1", "pods": pods}, f)
        self.stderr = open(os.path.join(self.tmp, "supervisor.err"), "wb")
        argv = [
            sys.executable,
            "-m",
            "proxy.workers",
            "--workers",
            str(workers),
            "--port",
            str(PORT),
            "--metrics-port",
            "9182",
            "--audit",
            self.audit,
            "--ports-file",
            self.ports_file,
            *extra,
            "--",
            "--mode",
            "transparent",
            "-s",
            os.path.join(REPO, "proxy", "addon.py"),
            "--set",
            f"confdir={os.path.join(self.tmp, 'mitm')}",
            "--set",
            "connection_strategy=lazy",
            "--set",
            "flow_detail=0",
            "--set",
            "termlog_verbosity=error",
            "--set",
            f"tproxy_policy={policy}",
            "--set",
            f"tproxy_identity={identity}",
            "--set",
            "tproxy_audit_flush_ms=0",
        ]
        self.sup = self.topo.node.popen(argv, stdout=subprocess.DEVNULL, stderr=self.stderr, cwd=REPO)
        self.topo.procs.append(self.sup)

    def log(self) -> str:
        with open(self.stderr.name, encoding="utf-8", errors="replace") as f:
            return f.read()

    def events(self, name: str) -> list[dict]:
        out = []
        for line in self.log().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec.get("event") == name:
                out.append(rec)
        return out

    def node_get(self, path: str) -> tuple[int, str]:
        code = (
            "import sys, urllib.request, urllib.error\n"
            "try:\n r = urllib.request.urlopen('http://127.0.0.1:9182' + sys.argv[1], timeout=5); "
            "print(r.status); print(r.read().decode(), end='')\n"
            "except urllib.error.HTTPError as e:\n print(e.code); print(e.read().decode(), end='')\n"
            "except OSError as e:\n print(0); print(e)\n"
        )
        out = self.topo.node.run(sys.executable, "-c", code, path, check=False).stdout
        status, _, body = out.partition("\n")
        return int(status or 0), body

    def wait_ready(self, n: int) -> None:
        wait_for(
            lambda: self.node_get("/readyz") == (200, f"{n}/{n} proxy workers ready\n"),
            timeout=60,
            interval=0.2,
            what=f"{n} workers ready; log: {self.log()[-2000:]}",
        )

    def redirect(self) -> None:
        with open(self.ports_file) as f:
            ports = f.read().strip()
        text = rules.render([rules.LockedPod(CLIENT_IP, "shop", "web-1")], ports)["ipv4"]["nat"]
        rules.restore("ipv4", "nat", text, runner=rules.netns_runner(self.topo.node.name))

    def requests(self, host: str, n: int) -> list:
        p = self.topo.client.run(sys.executable, "-c", CLIENT, host, str(n), timeout=scaled(120))
        return json.loads(p.stdout)

    def down(self) -> None:
        if self.sup.poll() is None:
            self.sup.send_signal(signal.SIGTERM)
            self.sup.wait(scaled(30))
        self.topo.down()
        self.stderr.close()


@pytest.fixture
def node(tmp_path):
    nodes: list[Node] = []

    def make(**kw) -> Node:
        nodes.append(Node(tmp_path, **kw))
        return nodes[-1]

    yield make
    for n in nodes:
        n.down()


def metric(text: str, selector: str) -> float:
    """The sum of the samples ``name{label="v",...}`` selects: labels not named (e.g. ``namespace``) are
    summed over, as a PromQL ``sum`` would."""
    from prometheus_client.parser import text_string_to_metric_families

    name, _, rest = selector.partition("{")
    wanted = dict(re.findall(r'(\w+)="([^"]*)"', rest))
    return sum(
        s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in wanted.items())
    )


def worker_requests(node: Node) -> list[float]:
    """Allowed requests per worker, from each worker's own (private) metrics port."""
    out = []
    for rec in node.events("worker_started")[:2]:
        code = (
            "import sys, urllib.request; print(urllib.request.urlopen("
            "f'http://127.0.0.1:{sys.argv[1]}/metrics', timeout=5).read().decode())"
        )
        text = node.topo.node.run(sys.executable, "-c", code, str(rec["metrics_port"])).stdout
        out.append(metric(text, 'tproxy_requests_total{decision="allow",host="storage.googleapis.com"}'))
    return out


def test_two_workers_share_the_load_one_audit_and_one_metrics_endpoint(node):
    n = node(workers=2)
    n.wait_ready(2)
    with open(n.ports_file) as f:
        assert f.read() == "8080-8081\n"
    n.redirect()
    results = n.requests("storage.googleapis.com", 40)
    assert results == [200] * 40
    per_worker = worker_requests(n)
    assert sum(per_worker) == 40 and all(c > 0 for c in per_worker), per_worker  # --random spreads them
    status, text = n.node_get("/metrics")
    assert status == 200
    assert metric(text, 'tproxy_requests_total{decision="allow",host="storage.googleapis.com"}') == 40
    assert metric(text, 'tproxy_workers{state="ready"}') == 2
    assert metric(text, "tproxy_policy_rules") == 1  # the same policy in both: not summed
    # one audit line per request, whole JSON objects, each with the pod's identity
    wait_for(lambda: sum(1 for _ in open(n.audit)) >= 40, timeout=10, what="audit lines")
    lines = [json.loads(ln) for ln in open(n.audit)]
    assert len(lines) == 40
    assert {(ln["pod_namespace"], ln["pod_name"], ln["decision"], ln["status"]) for ln in lines} == {
        ("shop", "web-1", "allow", 200)
    }


def test_every_worker_answers_the_interception_probe(node):
    n = node(workers=2)
    n.wait_ready(2)
    n.redirect()
    probe = (
        "import json, urllib.request\nout = []\nfor i in range(16):\n"
        " r = urllib.request.urlopen(urllib.request.Request('http://192.0.2.1/.tproxy/probe', "
        "headers={'X-Tproxy-Probe-Nonce': f'n{i}'}), timeout=10)\n"
        " out.append([r.status, r.headers['X-Tproxy-Probe']])\nprint(json.dumps(out))\n"
    )
    out = json.loads(n.topo.client.run(sys.executable, "-c", probe).stdout)
    assert out == [[200, f"n{i}"] for i in range(16)]
    status, text = n.node_get("/metrics")
    assert metric(text, "tproxy_probe_requests_total") == 16


def test_a_dead_workers_share_fails_closed_never_around_the_proxy(node):
    # a long first restart delay keeps worker 1 dead while the client tries
    n = node(workers=2, extra=("--restart-initial", "600"))
    n.wait_ready(2)
    n.redirect()
    worker1 = n.events("worker_started")[1]
    assert worker1["worker"] == 1
    os.kill(worker1["pid"], signal.SIGKILL)
    wait_for(lambda: n.events("worker_exited"), timeout=10, what="worker_exited logged")
    results = n.requests("www.google.com", 40)  # refused by policy: 200 would mean a bypass
    assert 200 not in results
    assert set(results) <= {418, "refused", "reset"}, results
    assert 418 in results and ({"refused", "reset"} & set(results)), results
    exited = n.events("worker_exited")[0]
    assert exited["worker"] == 1 and exited["exit_status"] == -9
    assert n.node_get("/readyz") == (503, "1/2 proxy workers ready\n")


def test_a_dead_worker_is_restarted_and_serves_again(node):
    n = node(workers=2)
    n.wait_ready(2)
    n.redirect()
    os.kill(n.events("worker_started")[1]["pid"], signal.SIGKILL)
    wait_for(
        lambda: len(n.events("worker_ready")) >= 3, timeout=60, interval=0.2, what=f"worker 1 ready again; log: {n.log()[-2000:]}"
    )
    n.wait_ready(2)
    assert n.requests("www.google.com", 20) == [418] * 20
    status, text = n.node_get("/metrics")
    assert metric(text, 'tproxy_worker_restarts_total{worker="1"}') == 1
    assert metric(text, 'tproxy_requests_total{decision="block",host="unmatched"}') == 20


def _supervise(tmp_path, *args: str, worker_args: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "proxy.workers", "--ports-file", str(tmp_path / "ports"), *args, "--", *worker_args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=scaled(120),
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    "args,message",
    [
        (("--workers", "999"), "more than the"),
        (("--workers", "0"), "at least 1"),
        (("--workers", "many"), "not a number or 'auto'"),
        (("--workers", "2", "--port", "65535"), "not all TCP ports"),
        (("--workers", "2", "--port", "30000", "--metrics-port", "30001"), "inside the workers' port range"),
    ],
)
def test_bad_worker_counts_and_ranges_are_refused_before_anything_starts(tmp_path, args, message):
    p = _supervise(tmp_path, *args)
    assert p.returncode == 2 and message in p.stderr, p.stderr
    assert not (tmp_path / "ports").exists()


def test_a_port_clash_is_refused_naming_the_port(tmp_path):
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        port = busy.getsockname()[1]
        p = _supervise(tmp_path, "--workers", "1", "--port", str(port))
    assert p.returncode == 2 and f"port {port} (worker 0) is not free" in p.stderr, p.stderr
    assert not (tmp_path / "ports").exists()


@pytest.mark.parametrize("worker_args", [("--listen-port", "9"), ("--set", "tproxy_audit=/tmp/x")])
def test_options_the_supervisor_owns_are_refused(tmp_path, worker_args):
    p = _supervise(tmp_path, "--workers", "1", worker_args=worker_args)
    assert p.returncode == 2 and "the supervisor" in p.stderr, p.stderr


def test_a_worker_crash_loop_stops_the_supervisor_with_a_clear_error(tmp_path):
    # the addon refuses connection_strategy=eager: every start of the worker exits
    p = _supervise(
        tmp_path,
        "--workers",
        "1",
        "--port",
        str(_free_port()),
        "--max-start-failures",
        "2",
        "--restart-initial",
        "0.1",
        worker_args=(
            "--mode",
            "transparent",
            "-s",
            os.path.join(REPO, "proxy", "addon.py"),
            "--set",
            "connection_strategy=eager",
            "--set",
            f"confdir={tmp_path}/mitm",
        ),
    )
    assert p.returncode == 1, p.stderr
    assert "worker 0" in p.stderr and "exited 2 times in a row before it was ready" in p.stderr
    assert "tproxy needs connection_strategy=lazy" in p.stderr  # the worker's own reason is in the log


def test_a_port_range_renders_one_random_redirect_per_pod():
    text = rules.render([rules.LockedPod("198.18.1.2", "shop", "web-1")], "8080-8083")["ipv4"]["nat"]
    assert "-j REDIRECT --to-ports 8080-8083 --random" in text
    one = rules.render([rules.LockedPod("198.18.1.2", "shop", "web-1")], 8080)["ipv4"]["nat"]
    assert one.rstrip().endswith("-j REDIRECT --to-ports 8080\nCOMMIT")


@pytest.mark.parametrize(
    "content,expected,problem",
    [
        ("8080-8081\n", "8080-8081", None),
        ("8080\n", 8080, None),
        ("9090-9091\n", 8080, "does not start at the host port 8080"),
        ("8081-8080\n", 8080, "ascending range"),
        ("8080-9999\n", 8080, "more than 64 ports"),
        ("garbage", 8080, "not a port or a range"),
        (None, 8080, "No such file"),
    ],
)
def test_podwatch_reads_the_workers_port_range_or_falls_back_to_the_host_port(tmp_path, content, expected, problem):
    path = tmp_path / "ports"
    if content is not None:
        path.write_text(content)
    ports, why = rules.read_ports_file(str(path), 8080)
    assert ports == expected
    assert (why is None) if problem is None else (problem in why), why


@pytest.mark.parametrize(
    "files,expected",
    [
        ({"cpu.max": "150000 100000"}, 2),  # cgroup v2 quota of 1.5 CPUs: 2 workers (rounded up)
        ({"cpu.max": "50000 100000"}, 1),
        ({"cpu.max": "max 100000"}, None),  # unlimited: the affinity decides
        ({"cpu/cpu.cfs_quota_us": "100000", "cpu/cpu.cfs_period_us": "100000"}, 1),  # cgroup v1
        ({"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"}, None),
    ],
)
def test_auto_workers_follow_the_cpu_quota_and_the_affinity(tmp_path, files, expected):
    from proxy.cpus import usable_cpus

    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    affinity = len(os.sched_getaffinity(0))
    assert usable_cpus(str(tmp_path)) == (affinity if expected is None else min(affinity, expected))


def test_an_unwritable_ports_file_is_a_clear_error(tmp_path):
    p = _supervise(
        tmp_path, "--workers", "1", "--port", str(_free_port()), "--ports-file", str(tmp_path / "missing-dir" / "ports")
    )
    assert p.returncode == 2 and "cannot write the ports file for podwatch" in p.stderr, p.stderr
    assert "Traceback" not in p.stderr


def test_podwatch_follows_the_ports_file_and_logs_each_problem_once(tmp_path):
    from podwatch.controller import PodWatch

    class Log:
        def __init__(self):
            self.lines = []

        def warning(self, event, **kw):
            self.lines.append((event, kw))

        info = warning

    log = Log()
    path = tmp_path / "ports"
    pw = PodWatch(node="n1", annotation="a", host_port=8080, ports_file=str(path), logger=log)
    assert pw._proxy_ports() == 8080 and pw._proxy_ports() == 8080
    assert [e for e, _ in log.lines] == ["proxy_ports_unusable"]  # once, not per sync
    path.write_text("8080-8081\n")
    assert pw._proxy_ports() == "8080-8081"
    assert log.lines[-1] == ("proxy_ports", {"ports": "8080-8081"})


def test_policy_reloads_under_load_drop_no_request(node):
    """Issue 17 item 4: every request sent while both workers reload the policy again and again is
    answered 200 and audited (counted on both sides)."""
    n = node(workers=2)
    n.wait_ready(2)
    n.redirect()
    policy = os.path.join(n.tmp, "policy.yaml")
    out_path = os.path.join(n.tmp, "load.json")
    with open(out_path, "w") as out:  # a file, not a pipe: the result (with latencies) outgrows a pipe buffer
        load = n.topo.client.popen(
            [
                sys.executable,
                "-m",
                "bench.loadgen",
                "http://storage.googleapis.com/solutions-public-assets/hello.txt",
                "-c",
                "4",
                "-d",
                "6",
                "--warmup",
                "0",
                "--timeout",
                "10",
            ],
            stdout=out,
            stderr=subprocess.DEVNULL,
            cwd=REPO,
        )
    reloads = 0
    while load.poll() is None:
        seen = len(n.events("policy_loaded"))
        tmp = policy + ".new"
        with open(tmp, "w") as f:  # the same allow rule plus a changing one, swapped in atomically
            yaml.safe_dump({"rules": [{"host": "storage.googleapis.com"}, {"host": f"r{reloads}.example.org"}]}, f)
        os.replace(tmp, policy)
        wait_for(
            lambda: len(n.events("policy_loaded")) >= seen + 2 or load.poll() is not None,
            timeout=20,
            what="both workers loaded the new policy",
        )
        if len(n.events("policy_loaded")) >= seen + 2:
            reloads += 1
    assert load.wait() == 0
    with open(out_path) as f:
        r = json.load(f)
    assert reloads >= 3, reloads
    assert r["total_requests"] > 0 and r["errors"] == {} and r["statuses"] == {"200": r["requests"]}, r
    wait_for(lambda: sum(1 for _ in open(n.audit)) >= r["total_requests"], timeout=10, what="audit lines")
    lines = [json.loads(ln) for ln in open(n.audit)]
    assert len(lines) == r["total_requests"] and {ln["status"] for ln in lines} == {200}


def test_a_thousand_pods_identity_entries_audit_the_right_pod(node):
    """Issue 17 item 4: with 1,000 pods in the identity map, each worker audits the client's own."""
    n = node(workers=2, other_pods=999)
    n.wait_ready(2)
    n.redirect()
    assert n.requests("storage.googleapis.com", 20) == [200] * 20
    wait_for(lambda: sum(1 for _ in open(n.audit)) >= 20, timeout=10, what="audit lines")
    lines = [json.loads(ln) for ln in open(n.audit)]
    assert len(lines) == 20
    assert {(ln["pod_namespace"], ln["pod_name"], ln["pod_service_account"]) for ln in lines} == {("shop", "web-1", "web")}


def test_node_metrics_sum_traffic_but_not_the_shared_configuration():
    """Every worker loads the same policy and watches the same namespace policies: the node's
    figures for those are one worker's (the maximum), while traffic is summed over the workers."""
    from proxy.metrics import Metrics
    from proxy.worker_metrics import merge
    from prometheus_client.exposition import generate_latest

    texts = []
    for served in (3, 5):
        m = Metrics()
        for _ in range(served):
            m.count_request("allowed", None, "payments")
        m.policy_reloads.labels("success").inc()
        m.policy_rules.set(10)
        m.namespace_policies.set(2)
        m.namespace_rejections.labels("builds", "ceiling").inc()
        texts.append(generate_latest(m.registry).decode())
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for fam in merge(texts) for s in fam.samples}
    allowed = [v for (n, labels), v in samples.items() if n == "tproxy_requests_total" and ("namespace", "payments") in labels]
    assert allowed == [8.0]
    assert samples[("tproxy_policy_reloads_total", (("result", "success"),))] == 1.0
    assert samples[("tproxy_policy_rules", ())] == 10.0
    assert samples[("tproxy_namespace_policies", ())] == 2.0
    assert samples[("tproxy_namespace_policy_rejections_total", (("cause", "ceiling"), ("namespace", "builds")))] == 1.0


def test_workers_die_with_a_killed_supervisor_so_a_new_one_can_take_the_ports(node):
    """SIGKILL leaves the supervisor no chance to stop its workers; they get SIGKILL from the kernel
    (PR_SET_PDEATHSIG), so no orphan keeps the node's ports and a restarted supervisor starts."""
    n = node(workers=2)
    n.wait_ready(2)
    pids = [rec["pid"] for rec in n.events("worker_started")]
    assert len(pids) == 2
    n.sup.kill()
    n.sup.wait(scaled(30))

    def gone(pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().split(") ", 1)[1].startswith("Z")  # a zombie has exited
        except FileNotFoundError:
            return True

    wait_for(lambda: all(gone(p) for p in pids), timeout=30, interval=0.1, what=f"workers {pids} gone")
    bind = "import socket, sys\nfor p in sys.argv[1:]:\n    socket.socket().bind(('0.0.0.0', int(p)))\nprint('free')"
    assert n.topo.node.run(sys.executable, "-c", bind, str(PORT), str(PORT + 1)).stdout.strip() == "free"
