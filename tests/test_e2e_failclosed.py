"""Fail closed, end to end: a locked app never talks to the internet before (or without) interception.

The chart is installed with podwatch delayed by 10 s (its container command wrapped in ``sleep 10``), and
the locked example app is created at once. The sidecar must hold the app back until the node redirect
for the pod exists, and no packet from the pod may reach the internet namespace directly — not while
podwatch is away, and not while the whole tproxy DaemonSet pod (podwatch + proxy) restarts.
"""

import re
import subprocess
import sys
import time

import pytest

from kubesim.demo import last_round, locked_ok
from kubesim.kubelet import e2e
from kubesim.polling import scaled
from kubesim.testing import wait_for

pytestmark = [pytest.mark.root, pytest.mark.slow]

PODWATCH_DELAY = 10
SERVICE_CIDR = "198.19.0.0/16"
SERVICE_IP = "198.19.0.10"  # a simulated cluster service, answering in the node namespace


@pytest.fixture(scope="module")
def delayed():
    from kubesim.kubelet.cluster import SimCluster

    c = SimCluster(kubelet_options={"backoff_initial": 1.0, "backoff_cap": 4.0})
    c.start()
    try:
        leaks = e2e.LeakCounter(c.topology.internet).install()
        c.topology.node.run("ip", "addr", "add", f"{SERVICE_IP}/32", "dev", "lo")
        service = c.topology.node.popen(
            [sys.executable, "-m", "http.server", "--bind", SERVICE_IP, "80"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        docs = e2e.chart_documents(extra=["--set", f"tproxy.blockSvcCIDR={SERVICE_CIDR}"])
        ds = e2e.find(docs, "DaemonSet")
        podwatch = e2e.container(ds, "podwatch")
        podwatch["command"] = ["sh", "-c", f'sleep {PODWATCH_DELAY}; exec python3 -m podwatch "$@"', "podwatch"]
        t_chart = time.monotonic()
        e2e.apply(c, docs)
        c.wait_pods("app=tproxy,component=initializer", "kube-system", timeout=60)
        e2e.kubectl_apply(c, "debian-app-locked.yaml")
        pod = wait_for(lambda: next(iter(c.pods("default", "app=debian-app,variant=locked")), None), 30, 0.1, "locked pod")
        ip = wait_for(
            lambda: (c.pods("default", "app=debian-app,variant=locked")[0].get("status") or {}).get("podIP"), 30, 0.1, "pod IP"
        )
        # watch until the app runs: when did the node redirect for the pod appear, when did the app start?
        rules_at = app_at = None
        deadline = time.monotonic() + PODWATCH_DELAY + scaled(60)
        while time.monotonic() < deadline and app_at is None:
            now = time.monotonic()
            if rules_at is None and ip in c.topology.node.run("iptables-save", "-t", "nat", check=False).stdout:
                rules_at = now
            rt = c.pod_runtime(pod)
            if rt is not None and rt.containers and rt.containers[0].proc is not None:
                app_at = now
            time.sleep(0.1)
        yield {"cluster": c, "leaks": leaks, "pod": pod, "ip": ip, "t_chart": t_chart, "rules_at": rules_at, "app_at": app_at}
    finally:
        if "service" in locals():
            service.kill()
            service.wait()
        c.stop()


def test_locked_app_starts_only_after_the_node_redirect_exists(delayed):
    assert delayed["app_at"] is not None, "the locked app never started"
    assert delayed["rules_at"] is not None, "podwatch never programmed the pod's redirect"
    assert delayed["app_at"] >= delayed["rules_at"]
    # and it was really held back: podwatch slept PODWATCH_DELAY seconds after the chart was applied
    assert delayed["app_at"] - delayed["t_chart"] >= PODWATCH_DELAY - 1


def test_init_container_waited_for_interception_and_succeeded(delayed):
    c = delayed["cluster"]
    pod = c.pods("default", "app=debian-app,variant=locked")[0]
    st = pod["status"]["initContainerStatuses"][0]
    assert st["state"]["terminated"]["exitCode"] == 0
    assert st["restartCount"] == 0  # it waited (TPROXY_VERIFY_TIMEOUT) instead of failing open or crashing


def test_locked_app_then_behaves_as_in_the_tutorial(delayed):
    r = e2e.wait_round(delayed["cluster"], delayed["pod"])
    assert locked_ok(r), r


def test_proxy_and_podwatch_restart_leaks_nothing_and_never_bypasses(delayed):
    c, pod = delayed["cluster"], delayed["pod"]
    ds_pod = c.pods("default", "app=tproxy,component=tproxy")[0]
    before = len(c.read_log(pod, "app"))
    c.client.delete(f"/api/v1/namespaces/default/pods/{ds_pod['metadata']['name']}")
    # while the DaemonSet pod is replaced (podwatch sleeps again), requests from the app keep going;
    # the old pod stays, terminating, until its kubelet has stopped it (graceful deletion)
    old = ds_pod["metadata"]["name"]
    wait_for(
        lambda: all(p["metadata"]["name"] != old for p in c.pods("default", "app=tproxy,component=tproxy")),
        scaled(60),
        0.2,
        "the old DaemonSet pod gone once its containers stopped",
    )
    c.wait_pods("app=tproxy,component=tproxy", "default", timeout=60)
    # the app went on making requests across the restart: at least one complete round since `before`
    wait_for(
        lambda: last_round(c.read_log(pod, "app")[before:]),
        40,
        0.2,
        "a complete round of the app's loop after the DaemonSet pod restart",
    )
    during = c.read_log(pod, "app")[before:]
    assert not re.search(r"https://www\.google\.com: 200", during), during
    # interception comes back for the same pod
    out = c.exec_in_pod(
        pod,
        ["curl", "-s", "-m", str(int(scaled(8))), "-o", "/dev/null", "-w", "%{http_code}", "https://www.google.com/"],
        timeout=scaled(30),
    )
    assert out.stdout == "418", out


def test_cluster_service_address_is_blocked_with_block_svc_cidr(delayed):
    c = delayed["cluster"]
    direct = c.topology.node.run(
        "curl", "-s", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}", f"http://{SERVICE_IP}/", check=False
    )
    assert direct.stdout == "200"  # the service works...
    out = c.exec_in_pod(
        delayed["pod"], ["curl", "-sS", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}", f"http://{SERVICE_IP}/"]
    )
    assert out.returncode != 0 and out.stdout != "200", out  # ...but the locked pod's lock refuses it


def test_no_packet_from_the_locked_pod_reached_the_internet(delayed):
    assert delayed["leaks"].packets() == 0
