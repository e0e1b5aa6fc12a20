"""Deployment -> ReplicaSet -> Pod on a simulated 1.13 cluster, read by the real clients that depend on it:
``helm install --wait`` (Helm 3 waits for the Deployment's newest ReplicaSet to be ready) and
``kubectl rollout status`` (the Deployment's status and conditions), with the chart itself and with a
minimal chart of one Deployment. 1.7's ownership (extensions/v1beta1) is in test_kubelet_pods.py."""

import functools
import json

import pytest
import yaml

from controllerkit.kube import resource_path
from kubesim.kubelet import e2e
from kubesim.kubelet.replicasets import REVISION, template_hash
from kubesim.testing import wait_for

pytestmark = [pytest.mark.root]

wait_for = functools.partial(wait_for, timeout=30.0, interval=0.1)
RS = "apps/v1"


@pytest.fixture(scope="module")
def cluster13():
    from kubesim.kubelet.cluster import SimCluster

    c = SimCluster(k8s_version="1.13", internet=False, kubelet_options={"backoff_initial": 0.3, "backoff_cap": 1.0})
    c.start()
    yield c
    c.stop()


def kubectl(c, *args, check=True):
    return e2e.run_client(c, ["kubectl", *args], check=check)


def sleeper(name: str, image_tag: str = "12") -> dict:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "c", "image": f"debian:{image_tag}", "command": ["sleep", "1000"]}]},
            },
        },
    }


def owned_chain(c, ns: str, name: str):
    """(deployment, its ReplicaSets, pods of each ReplicaSet by name)."""
    dep = c.client.get(resource_path("apps/v1", "deployments", ns, name))
    rss = [
        rs
        for rs in c.client.list(resource_path(RS, "replicasets", ns))["items"]
        if any(r["uid"] == dep["metadata"]["uid"] and r.get("controller") for r in rs["metadata"].get("ownerReferences") or [])
    ]
    pods = {
        rs["metadata"]["name"]: [
            p
            for p in c.pods(ns)
            if any(r["uid"] == rs["metadata"]["uid"] and r.get("controller") for r in p["metadata"].get("ownerReferences") or [])
        ]
        for rs in rss
    }
    return dep, rss, pods


def test_helm_install_wait_returns_when_the_minimal_charts_replicaset_is_ready(cluster13, tmp_path):
    chart = tmp_path / "mini"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: mini\nversion: 0.1.0\n")
    (chart / "templates" / "deploy.yaml").write_text(yaml.safe_dump(sleeper("mini")))
    proc = e2e.run_client(cluster13, ["helm", "install", "mini", str(chart), *e2e.helm_wait_flags(120)], timeout=180)
    assert "STATUS: deployed" in proc.stdout
    # --wait returned: the newest ReplicaSet reports both replicas ready, and they are
    dep, (rs,), pods = owned_chain(cluster13, "default", "mini")
    assert rs["status"]["readyReplicas"] == 2 and len(pods[rs["metadata"]["name"]]) == 2
    h = rs["metadata"]["labels"]["pod-template-hash"]
    assert rs["metadata"]["name"] == f"mini-{h}" and not h.isdigit()  # 1.8+: safe-encoded
    (ref,) = rs["metadata"]["ownerReferences"]
    assert (ref["apiVersion"], ref["kind"], ref["name"]) == ("apps/v1", "Deployment", "mini")
    for p in pods[rs["metadata"]["name"]]:
        (pref,) = p["metadata"]["ownerReferences"]
        assert (pref["apiVersion"], pref["kind"], pref["name"]) == ("apps/v1", "ReplicaSet", rs["metadata"]["name"])
        assert p["metadata"]["labels"]["pod-template-hash"] == h
    conds = {x["type"]: x for x in dep["status"]["conditions"]}
    assert conds["Available"]["status"] == "True"
    e2e.run_client(cluster13, ["helm", "uninstall", "mini", "--wait"])
    wait_for(lambda: not owned_chain_exists(cluster13, "mini"), what="replicasets and pods collected")


def owned_chain_exists(c, prefix: str) -> bool:
    rss = c.client.list(resource_path(RS, "replicasets", "default"))["items"]
    return any(x["metadata"]["name"].startswith(prefix + "-") for x in rss + c.pods("default"))


def test_rollout_status_a_template_change_and_rollout_history(cluster13, tmp_path):
    path = tmp_path / "roll.yaml"
    path.write_text(yaml.safe_dump(sleeper("roll")))
    kubectl(cluster13, "apply", "-f", str(path))
    out = kubectl(cluster13, "rollout", "status", "deployment/roll", "--timeout=120s").stdout
    assert 'deployment "roll" successfully rolled out' in out
    first = owned_chain(cluster13, "default", "roll")[1][0]["metadata"]["name"]
    path.write_text(yaml.safe_dump(sleeper("roll", image_tag="bookworm")))
    kubectl(cluster13, "apply", "-f", str(path))
    out = kubectl(cluster13, "rollout", "status", "deployment/roll", "--timeout=120s").stdout
    assert 'deployment "roll" successfully rolled out' in out
    dep, rss, pods = owned_chain(cluster13, "default", "roll")
    by_name = {rs["metadata"]["name"]: rs for rs in rss}
    new = next(n for n in by_name if n != first)
    assert by_name[first]["spec"]["replicas"] == 0 and by_name[first]["metadata"]["annotations"][REVISION] == "1"
    assert by_name[new]["spec"]["replicas"] == 2 and by_name[new]["metadata"]["annotations"][REVISION] == "2"
    wait_for(lambda: not owned_chain(cluster13, "default", "roll")[2][first], what="the old pods gone")
    assert {p["spec"]["containers"][0]["image"] for p in owned_chain(cluster13, "default", "roll")[2][new]} == {"debian:bookworm"}
    history = kubectl(cluster13, "rollout", "history", "deployment/roll").stdout
    assert "1 " in history and "2 " in history
    st = dep["status"]
    assert (st["replicas"], st["updatedReplicas"], st["readyReplicas"], st["observedGeneration"]) == (
        2,
        2,
        2,
        dep["metadata"]["generation"],
    )


def test_scale_to_zero_and_rollout_status_of_an_unready_deployment_does_not_report_success(cluster13, tmp_path):
    dep = sleeper("never")
    dep["spec"]["template"]["spec"]["containers"][0]["readinessProbe"] = {
        "tcpSocket": {"port": 9},  # nothing listens
        "periodSeconds": 1,
    }
    path = tmp_path / "never.yaml"
    path.write_text(json.dumps(dep))
    kubectl(cluster13, "apply", "-f", str(path))
    wait_for(lambda: len(cluster13.pods("default", "app=never")) == 2, what="pods created")
    proc = kubectl(cluster13, "rollout", "status", "deployment/never", "--timeout=3s", check=False)
    assert proc.returncode != 0 and "Waiting for deployment" in proc.stdout + proc.stderr
    kubectl(cluster13, "scale", "deployment/never", "--replicas=0")
    wait_for(lambda: not cluster13.pods("default", "app=never"), what="scaled to zero")
    out = kubectl(cluster13, "rollout", "status", "deployment/never", "--timeout=60s").stdout
    assert "successfully rolled out" in out


def test_the_hash_is_decimal_for_1_7_and_safe_encoded_after():
    t = {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": []}}
    dec, enc = template_hash(t), template_hash(t, encoded=True)
    assert dec.isdigit() and len(enc) == len(dec) and set(enc) <= set("bcdfghjklmnpqrstvwxz2456789")
    assert template_hash(t, encoded=True) == enc


def test_the_charts_helm_install_wait_returns_when_its_workloads_are_ready(cluster13):
    """Issue 14's last gap: the README's install with --wait on 1.13 returns once the initializer's
    ReplicaSet reports ready and the DaemonSet's pod is scheduled; the DaemonSet then reports ready."""
    e2e.helm_install(cluster13, wait=180)
    try:
        ns = e2e.RELEASE_NAMESPACE
        deps = cluster13.client.list(resource_path("apps/v1", "deployments"))["items"]
        for d in deps:
            if (d["metadata"].get("labels") or {}).get("app") != "tproxy":
                continue
            _, rss, _ = owned_chain(cluster13, d["metadata"]["namespace"], d["metadata"]["name"])
            assert [rs["status"].get("readyReplicas") for rs in rss] == [d["spec"]["replicas"]], d["metadata"]["name"]

        def daemonsets():
            items = cluster13.client.list(resource_path("apps/v1", "daemonsets"))["items"]
            return [x for x in items if x["metadata"]["namespace"] == ns]

        # helm's --wait holds a RollingUpdate DaemonSet ready once every updated pod is scheduled and
        # numberReady >= desired - maxUnavailable: with the chart's maxUnavailable 1 on this one-node
        # cluster that is 0, so the pod may still be starting when --wait returns (it was, on a loaded
        # machine). The DaemonSet must then report its pod ready.
        ds = daemonsets()
        assert ds and all(x["status"]["updatedNumberScheduled"] == x["status"]["desiredNumberScheduled"] == 1 for x in ds)
        wait_for(lambda: all(x["status"]["numberReady"] == 1 for x in daemonsets()), what="the DaemonSet's pod ready")
    finally:
        e2e.helm_uninstall(cluster13)
