"""Policy per workload, end to end on a simulated 1.13 cluster (delegation needs 1.11+ RBAC).

The chart is installed with a scoped policy (team-b: its own rules, report mode) and delegation on
(ConfigMap ``tproxy-egress``, ceiling ``*.corp.example``); the locked example app runs in team-a and
team-b. team-a's owner keeps their allow list in their ConfigMap and edits it at run time; a ceiling
violation is rejected (Event, last good kept). Then the IP-reuse race: a team-a pod is deleted and its
address given at once to a new team-b pod, whose requests must never be judged as team-a's.
"""

import copy
import json

import pytest

from controllerkit.kube import resource_path
from kubesim.demo import proxy_container
from kubesim.kubelet import e2e
from kubesim.polling import wait_for

pytestmark = [pytest.mark.root, pytest.mark.slow]

POLICY = {
    "mode": "enforce",
    "rules": [{"host": "storage.googleapis.com", "paths": ["/solutions-public-assets/"], "schemes": ["https"]}],
    "scopes": [
        {
            "name": "team-b-report",
            "match": {"namespaces": ["team-b"]},
            "mode": "report",
            "rules": [{"host": "storage.googleapis.com"}],
        }
    ],
}
BUCKET = "https://storage.googleapis.com/solutions-public-assets/"
GOOGLE = "https://www.google.com/"


def as_apps_v1(docs, namespace):
    out = []
    for d in docs:
        d = copy.deepcopy(d)
        if d.get("kind") == "Deployment":
            d["apiVersion"] = "apps/v1"
        d["metadata"]["namespace"] = namespace
        out.append(d)
    return out


def put_configmap(c, ns: str, text: str) -> None:
    body = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "tproxy-egress", "namespace": ns},
        "data": {"policy.yaml": text},
    }
    e2e.apply(c, [body], namespace=ns)


def status(c, pod, url: str) -> str:
    return c.exec_in_pod(pod, ["curl", "-s", "-m", "8", "-o", "/dev/null", "-w", "%{http_code}", url]).stdout


def audit(c) -> list[dict]:
    ds_pod = c.pods("default", "app=tproxy,component=tproxy")[0]
    out = []
    for line in c.read_log(ds_pod, proxy_container(ds_pod)).splitlines():
        try:
            a = json.loads(line)
        except ValueError:
            continue
        if isinstance(a, dict):
            out.append(a)
    return out


@pytest.fixture(scope="module")
def cluster():
    from kubesim.kubelet.cluster import SimCluster

    c = SimCluster(k8s_version="1.13", kubelet_options={"backoff_initial": 1.0, "backoff_cap": 4.0})
    c.start()
    try:
        c.topology.reuse_addresses = True
        docs = e2e.chart_documents(
            e2e.TUTORIAL_VALUES + ",tproxy.delegation.configMap=tproxy-egress",
            extra=[
                "--kube-version",
                "1.13.12",
                "--set-json",
                f"tproxy.policy={json.dumps(POLICY)}",
                "--set-json",
                'tproxy.delegation.ceiling.hosts=["*.corp.example"]',
            ],
        )
        e2e.apply(c, docs)
        c.wait_pods("app=tproxy,component=tproxy", "default", timeout=60)
        c.wait_pods("app=tproxy,component=initializer", "kube-system", timeout=60)
        for ns in ("team-a", "team-b"):
            e2e.create_namespace(c, ns)
        put_configmap(c, "team-a", "mode: enforce\nrules: [{host: www.google.com}]\n")
        for ns in ("team-a", "team-b"):
            e2e.apply(c, as_apps_v1(e2e.example("debian-app-locked.yaml"), ns), namespace=ns)
        pods = {ns: c.wait_pods("app=debian-app,variant=locked", ns, timeout=90)[0] for ns in ("team-a", "team-b")}
        yield {"cluster": c, "pods": pods}
    finally:
        c.stop()


def test_two_namespaces_with_their_own_lists_and_modes(cluster):
    c, pods = cluster["cluster"], cluster["pods"]
    # team-a: its ConfigMap's list only (enforce): Google yes, the tutorial's bucket no
    wait_for(lambda: status(c, pods["team-a"], GOOGLE) == "200", timeout=30, what="team-a's own policy in force")
    assert status(c, pods["team-a"], BUCKET) == "418"
    # team-b: the file's scope, report mode: the bucket allowed, Google reported (and let through)
    assert status(c, pods["team-b"], BUCKET) == "200"
    assert status(c, pods["team-b"], GOOGLE) == "200"
    lines = wait_for(
        lambda: [a for a in audit(c) if a.get("host") == "www.google.com" and a.get("pod_namespace") in ("team-a", "team-b")],
        timeout=20,
    )
    by_ns = {a["pod_namespace"]: a for a in lines}
    assert (by_ns["team-a"]["scope"], by_ns["team-a"]["decision"], by_ns["team-a"]["rule"]) == (
        "namespace:team-a",
        "allow",
        "rules[0] www.google.com",
    )
    assert (by_ns["team-b"]["scope"], by_ns["team-b"]["decision"], by_ns["team-b"]["policy_mode"]) == (
        "team-b-report",
        "report",
        "report",
    )


def test_a_namespace_configmap_edited_at_run_time(cluster):
    c, pods = cluster["cluster"], cluster["pods"]
    put_configmap(c, "team-a", "mode: enforce\nrules: [{host: storage.googleapis.com}]\n")
    wait_for(lambda: status(c, pods["team-a"], GOOGLE) == "418", timeout=30, what="the edit in force")
    assert status(c, pods["team-a"], BUCKET) == "200"


def test_a_ceiling_violation_is_rejected_and_the_last_good_kept(cluster):
    c, pods = cluster["cluster"], cluster["pods"]
    put_configmap(c, "team-a", "mode: enforce\nrules: [{host: storage.googleapis.com}]\n")
    wait_for(lambda: status(c, pods["team-a"], BUCKET) == "200", timeout=30)
    put_configmap(c, "team-a", "mode: enforce\nrules: [{host: db.corp.example}, {host: www.google.com}]\n")

    def rejected():
        evs = c.client.list(resource_path("v1", "events", "team-a")).get("items", [])
        return [e for e in evs if e.get("reason") == "PolicyRejected"]

    ev = wait_for(rejected, timeout=30, what="a PolicyRejected event on the ConfigMap")[0]
    assert ev["involvedObject"]["name"] == "tproxy-egress" and "ceiling forbids it (*.corp.example)" in ev["message"]
    ds_pod = c.pods("default", "app=tproxy,component=tproxy")[0]
    assert "namespace_policy_rejected" in c.read_log(ds_pod, proxy_container(ds_pod))
    # the last good policy stays: the bucket allowed, Google (in the rejected version) not
    assert status(c, pods["team-a"], BUCKET) == "200"
    assert status(c, pods["team-a"], GOOGLE) == "418"


def test_a_reused_address_never_carries_the_old_pods_policy(cluster):
    c, pods = cluster["cluster"], cluster["pods"]
    put_configmap(c, "team-a", "mode: enforce\nrules: [{host: www.google.com}]\n")
    template = c.client.get(resource_path("v1", "pods", "team-a", pods["team-a"]["metadata"]["name"]))

    def bare(ns: str, name: str) -> dict:
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": ns,
                "labels": {"app": "race"},
                "annotations": dict(template["metadata"].get("annotations") or {}),
            },
            "spec": copy.deepcopy(template["spec"]),
        }

    e2e.apply(c, [bare("team-a", "old")], namespace="team-a")
    old = c.wait_pods("app=race", "team-a", timeout=90)[0]
    ip = old["status"]["podIP"]
    wait_for(lambda: status(c, old, GOOGLE) == "200", timeout=30, what="team-a's policy for the old pod")
    c.client.delete(resource_path("v1", "pods", "team-a", "old"), body={"gracePeriodSeconds": 0})
    wait_for(
        lambda: not c.pods("team-a", "app=race") and c.topology.address_free(ip),
        timeout=60,
        what="the old pod gone and its address free",
    )
    before = len(audit(c))  # every line after this one is from after the old pod's processes died
    e2e.apply(c, [bare("team-b", "new")], namespace="team-b")
    new = wait_for(
        lambda: next((p for p in c.pods("team-b", "app=race") if (p.get("status") or {}).get("podIP")), None),
        timeout=60,
        what="the new pod's IP",
    )
    assert new["status"]["podIP"] == ip, "the emulator did not reuse the address"

    def request():  # connect at once: as soon as the pod's network exists, before its init container is done
        if c.pod_runtime(new) is None:
            return None
        code = status(c, new, GOOGLE)
        return code if code != "000" else None

    got = wait_for(request, timeout=60, interval=0.02, retry_on=(KeyError, FileNotFoundError), what="a request from the new pod")
    # team-b's scope reports Google (200); with no identity yet it gets the default (418); team-a's
    # policy would allow it (200): the audit tells which scope decided
    assert got in ("200", "418")
    c.wait_pods("app=race", "team-b", timeout=90)
    assert status(c, new, GOOGLE) == "200"  # now known: team-b's report scope
    after = wait_for(
        lambda: [a for a in audit(c)[before:] if a.get("client_ip") == ip], timeout=20, what="audit lines from the reused address"
    )
    assert all(a.get("pod_namespace") != "team-a" and a.get("scope") != "namespace:team-a" for a in after), after
    assert {a["scope"] for a in after} <= {"team-b-report", "default"}
    assert any(a["scope"] == "team-b-report" and a.get("pod_name") == "new" for a in after), after
