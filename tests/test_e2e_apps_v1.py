"""The tutorial once on a simulated 1.13 cluster, as a user of the Initializers path would run it today
(kind v0.9, kindest/node:v1.13.12): the chart rendered for 1.13 (apps/v1, rbac v1) and the two example
apps created as ``apps/v1`` Deployments. The initializer still watches ``apps/v1beta1`` and the
netns kubelet ``apps/v1beta1``/``extensions/v1beta1``: one stored object, seen through every version,
is initialized, run and locked like an ``extensions/v1beta1`` one."""

import pytest

from controllerkit.kube import resource_path
from kubesim.demo import locked_ok, unlocked_ok
from kubesim.kubelet import e2e
from kubesim.polling import wait_for

pytestmark = [pytest.mark.root, pytest.mark.slow]


def as_apps_v1(docs):
    out = []
    for d in docs:
        if d.get("kind") == "Deployment":
            assert d["spec"].get("selector"), "apps/v1 needs a selector"
            d = dict(d, apiVersion="apps/v1")
        out.append(d)
    return out


@pytest.fixture(scope="module")
def tutorial13():
    from kubesim.kubelet.cluster import SimCluster

    c = SimCluster(k8s_version="1.13", kubelet_options={"backoff_initial": 1.0, "backoff_cap": 4.0})
    c.start()
    try:
        docs = e2e.chart_documents(extra=["--kube-version", "1.13.12"])
        assert {d["apiVersion"] for d in docs if d["kind"] in ("Deployment", "DaemonSet")} == {"apps/v1"}
        e2e.apply(c, docs)
        c.wait_pods("app=tproxy,component=tproxy", "default", timeout=60)
        c.wait_pods("app=tproxy,component=initializer", "kube-system", timeout=60)
        e2e.apply(c, as_apps_v1(e2e.example("debian-app.yaml")))
        unlocked = c.wait_pods("app=debian-app,variant=unlocked", timeout=30)[0]
        e2e.apply(c, as_apps_v1(e2e.example("debian-app-locked.yaml")))
        locked = c.wait_pods("app=debian-app,variant=locked", timeout=60)[0]
        yield {"cluster": c, "unlocked": unlocked, "locked": locked}
    finally:
        c.stop()


def test_apps_v1_deployments_are_initialized_and_run(tutorial13):
    c = tutorial13["cluster"]
    locked = c.client.get(resource_path("apps/v1", "deployments", "default", "debian-app-locked"))
    assert locked["apiVersion"] == "apps/v1"
    spec = locked["spec"]["template"]["spec"]
    assert [ic["name"] for ic in spec["initContainers"]] == ["tproxy"]
    assert not locked["metadata"].get("initializers")
    wait_for(
        lambda: (
            c.client.get(resource_path("apps/v1", "deployments", "default", "debian-app-locked"))["status"].get("readyReplicas")
            == 1
        ),
        timeout=30,
    )
    unlocked = c.client.get(resource_path("apps/v1", "deployments", "default", "debian-app"))
    assert not unlocked["spec"]["template"]["spec"].get("initContainers")
    ds = c.client.get(resource_path("apps/v1", "daemonsets", "default", "tproxy-tproxy"))
    assert ds["metadata"]["annotations"]["deprecated.daemonset.template.generation"] == "1"
    wait_for(
        lambda: (
            c.client.get(resource_path("apps/v1", "daemonsets", "default", "tproxy-tproxy"))["status"].get("numberReady") == 1
        ),
        timeout=30,
    )


def test_apps_v1_apps_behave_as_in_the_tutorial(tutorial13):
    assert unlocked_ok(e2e.wait_round(tutorial13["cluster"], tutorial13["unlocked"]))
    assert locked_ok(e2e.wait_round(tutorial13["cluster"], tutorial13["locked"]))
