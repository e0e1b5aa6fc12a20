"""podwatch as a process in its node namespace, against the kubesim API server (over HTTPS).

The API server runs in the test process (root namespace); a forwarder whose listener lives in the
node namespace makes it reachable at https://127.0.0.1:6443 from podwatch, as in-cluster.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from capture_topology import INET4, REPO, CaptureNet, wait_for
from podwatch import rules

HOST_PORT = 18080
METRICS_PORT = 19101
NODE = "node-1"
ANN = "initializer.kubernetes.io/tproxy"


class Cluster:
    def __init__(self, tmp):
        from controllerkit.kube import Client, resource_path
        from kubesim.apiserver import APIServer
        from kubesim.topology import Forwarder

        self.path = resource_path
        self.srv = APIServer().start()
        self.net = CaptureNet.create()
        self.fwd = None
        self.proc = None
        try:
            self.net.add_pod("web")
            self.net.serve(self.net.internet, "inet", f"tcp:{INET4}:80")
            self.net.serve(self.net.node, "proxy", f"tcp:0.0.0.0:{HOST_PORT}")
            port = int(self.srv.url.rsplit(":", 1)[1])
            self.fwd = Forwarder(self.net.node.name, ("127.0.0.1", 6443), ("127.0.0.1", port))
            self.kubeconfig = self.srv.write_kubeconfig(os.path.join(tmp, "kubeconfig"), server="https://127.0.0.1:6443")
            self.identity = os.path.join(tmp, "identity", "pods.json")
            self.log = open(os.path.join(tmp, "podwatch.log"), "a+")
            self.api = Client.from_url(self.srv.url, token=self.srv.admin_token, ca_file=self.srv.ca_file)
            for ns in ("team-a", "team-b"):
                self.api.create(resource_path("v1", "namespaces"), {"metadata": {"name": ns}})
        except Exception:
            self.close()
            raise

    def start(self):
        argv = [
            sys.executable,
            "-m",
            "podwatch",
            "--kubeconfig",
            self.kubeconfig,
            "--node-name",
            NODE,
            "-hostPort",
            str(HOST_PORT),
            "--metrics-port",
            str(METRICS_PORT),
            "--metrics-host",
            "127.0.0.1",
            "--identity-file",
            self.identity,
            "--min-sync-interval",
            "0.05",
            "--resync-period",
            "1",
        ]
        self.proc = self.net.node.popen(argv, cwd=REPO, stdout=self.log, stderr=self.log, env={**os.environ, "PYTHONPATH": REPO})

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(10)
        self.proc = None

    def close(self):
        self.stop()
        if self.fwd:
            self.fwd.stop()
        self.net.delete()
        self.srv.stop()

    def add_pod(self, ns, name, ip, *, ann="true", node=NODE):
        meta = {"name": name, "namespace": ns, "labels": {"app": name}}
        if ann is not None:
            meta["annotations"] = {ANN: ann}
        self.api.create(
            self.path("v1", "pods", ns),
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": meta,
                "spec": {"nodeName": node, "containers": [{"name": "app", "image": "debian"}]},
            },
        )
        self.api.patch(
            self.path("v1", "pods", ns, name, "status"), {"status": {"phase": "Running", "podIP": ip}}, patch_type="merge"
        )

    def delete_pod(self, ns, name):
        """What `kubectl delete pod` and the pod's kubelet do: a graceful delete (the object gets its
        deletionTimestamp and stays while the containers stop), then the kubelet's delete with grace 0."""
        path = self.path("v1", "pods", ns, name)
        self.api.delete(path, {})
        self.api.delete(path, {"gracePeriodSeconds": 0})

    def comments(self):
        """Comments (ns/name) of the REDIRECT rules, with the source IP."""
        out = self.net.node.run("iptables", "-t", "nat", "-S", rules.REDIRECT_CHAIN, check=False).stdout
        got = set()
        for ln in out.splitlines():
            if "REDIRECT" in ln and "-s " in ln:
                got.add((ln.split("-s ")[1].split()[0], ln.split('--comment "')[1].split('"')[0]))
        return got

    def identity_pods(self):
        try:
            with open(self.identity) as f:
                return json.load(f)["pods"]
        except (OSError, ValueError):
            return None


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(str(tmp_path_factory.mktemp("podwatch")))
    c.start()
    yield c
    c.close()
    c.log.seek(0)
    sys.stderr.write(c.log.read()[-3000:])


def curl(c):
    out = c.net.pods["web"].run("curl", "-sS", "-m", "2", f"http://{INET4}/", check=False)
    return out.stdout.strip() if out.returncode == 0 else f"curl exit {out.returncode}"


@pytest.mark.root
def test_annotated_pods_on_this_node_get_rules_and_identity(cluster):
    web_ip = cluster.net.pod_ips["web"][0]
    cluster.add_pod("default", "web", web_ip)
    cluster.add_pod("default", "web-2", "10.4.0.6")
    cluster.add_pod("team-a", "web", "10.4.0.7")
    cluster.add_pod("team-b", "web", "10.4.0.8")
    cluster.add_pod("default", "not-annotated", "10.4.0.9", ann=None)
    cluster.add_pod("default", "other-node", "10.4.0.10", node="node-2")
    want = {
        (f"{web_ip}/32", "default/web"),
        ("10.4.0.6/32", "default/web-2"),
        ("10.4.0.7/32", "team-a/web"),
        ("10.4.0.8/32", "team-b/web"),
    }
    wait_for(lambda: cluster.comments() == want, what="redirect rules for the 4 annotated pods")
    assert curl(cluster) == f"proxy {HOST_PORT}"
    ident = wait_for(lambda: (p := cluster.identity_pods()) and len(p) == 4 and p, what="identity file")
    assert (
        ident[web_ip]
        == {
            "namespace": "default",
            "name": "web",
            "serviceAccount": "default",
            "labels": {"app": "web"},
            "uid": ident[web_ip]["uid"],
        }
        and ident[web_ip]["uid"]
    )


@pytest.mark.root
def test_deleting_a_pod_removes_exactly_its_rules(cluster):
    cluster.delete_pod("team-a", "web")
    wait_for(lambda: ("10.4.0.7/32", "team-a/web") not in cluster.comments(), what="team-a/web removed")
    assert {c for _, c in cluster.comments()} == {"default/web", "default/web-2", "team-b/web"}
    wait_for(lambda: "10.4.0.7" not in (cluster.identity_pods() or {"10.4.0.7": 1}), what="identity updated")


@pytest.mark.root
def test_drift_is_repaired_by_the_periodic_resync(cluster):
    cluster.net.node.run("iptables", "-t", "nat", "-F", rules.REDIRECT_CHAIN)
    wait_for(lambda: len(cluster.comments()) == 3, timeout=5, what="chain refilled")
    assert curl(cluster) == f"proxy {HOST_PORT}"


@pytest.mark.root
def test_metrics_are_served(cluster):
    out = cluster.net.node.run("curl", "-sS", "-m", "2", f"http://127.0.0.1:{METRICS_PORT}/metrics").stdout
    assert 'tproxy_podwatch_rules_programmed{family="ipv4"}' in out
    count = next(
        float(ln.split()[-1]) for ln in out.splitlines() if ln.startswith("tproxy_podwatch_programming_latency_seconds_count")
    )
    assert count >= 3
    assert "tproxy_podwatch_sync_duration_seconds_bucket" in out and "tproxy_podwatch_sync_failures_total" in out
    ready = cluster.net.node.run(
        "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", f"http://127.0.0.1:{METRICS_PORT}/readyz"
    ).stdout
    assert ready == "200"


@pytest.mark.root
def test_restart_leaves_no_stale_rule_and_no_gap(cluster):
    outcomes: list[str] = []
    stop = threading.Event()

    def traffic():
        while not stop.is_set():
            outcomes.append(curl(cluster))

    cluster.stop()  # shutdown leaves the rules in place
    assert {c for _, c in cluster.comments()} == {"default/web", "default/web-2", "team-b/web"}
    cluster.delete_pod("team-b", "web")  # deleted while podwatch is down
    t = threading.Thread(target=traffic)
    t.start()
    try:
        cluster.start()
        wait_for(
            lambda: {c for _, c in cluster.comments()} == {"default/web", "default/web-2"},
            timeout=15,
            what="stale team-b/web rule removed after restart",
        )
        time.sleep(0.3)
    finally:
        stop.set()
        t.join()
    assert len(outcomes) >= 3 and set(outcomes) == {f"proxy {HOST_PORT}"}, outcomes


@pytest.mark.root
def test_cleanup_removes_everything_it_owns(cluster):
    cluster.stop()
    proc = subprocess.run(
        cluster.net.node.exec_argv([sys.executable, "-m", "podwatch", "--cleanup", "--identity-file", cluster.identity]),
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": REPO},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    for tool in ("iptables", "ip6tables"):
        for table in ("filter", "nat"):
            assert "TPROXY" not in cluster.net.node.run(tool, "-t", table, "-S").stdout
    assert not os.path.exists(cluster.identity)
    assert curl(cluster) == "inet 80"
