"""The tutorial on the real images: the netns kubelet runs every container with podman.

The same checks as the tutorial test, on the images `make images` builds (built once per run by
``test_images.images`` when missing): the initializer in its image injects the locked deployment,
podwatch in its image programs the locked pod's redirect in the node's namespace, the sidecar image
locks the pod, the proxy image answers 418 / 200, ping is not permitted, and nothing from the locked
pod reaches the internet namespace directly.
"""

import pytest

from controllerkit.kube import resource_path
from kubesim.demo import last_round, locked_ok, unlocked_ok
from kubesim.polling import scaled, wait_for
from kubesim.kubelet import e2e

from test_images import images  # noqa: F401 - the session fixture that builds the images once

pytestmark = [pytest.mark.root, pytest.mark.slow]


@pytest.fixture(scope="module")
def tutorial(images):  # noqa: F811
    from kubesim.kubelet.cluster import SimCluster

    c = SimCluster(kubelet_options={"backoff_initial": 1.0, "backoff_cap": 4.0, "runtime": "podman"})
    c.start()
    try:
        e2e.create_namespace(c, e2e.RELEASE_NAMESPACE)
        e2e.apply(c, e2e.chart_documents(namespace=e2e.RELEASE_NAMESPACE))
        proxy = c.wait_pods("app=tproxy,component=tproxy", e2e.RELEASE_NAMESPACE, timeout=180)[0]
        c.wait_pods("app=tproxy,component=initializer", "kube-system", timeout=180)
        e2e.apply(c, e2e.example("debian-app.yaml"))
        unlocked = c.wait_pods("app=debian-app,variant=unlocked", timeout=120)[0]
        rt = c.pod_runtime(unlocked)
        leaks = e2e.LeakCounter(c.topology.internet, [rt.net.ip, rt.net.ip6]).install()
        e2e.apply(c, e2e.example("debian-app-locked.yaml"))
        locked = c.wait_pods("app=debian-app,variant=locked", timeout=180)[0]
        yield {"cluster": c, "proxy": proxy, "unlocked": unlocked, "locked": locked, "leaks": leaks}
    finally:
        c.stop()


def rounds(t, pod, timeout=90):
    import time

    deadline = time.monotonic() + timeout
    r = None
    while time.monotonic() < deadline:
        r = last_round(t["cluster"].read_log(pod, "app"))
        if r:
            return r
        time.sleep(0.5)
    return r


def test_containers_are_the_images_on_podman(tutorial):
    from kubesim.kubelet import engine

    names = engine.podman("ps", "--format", "{{.Image}}").stdout.split()
    for want in ("tproxy-proxy:0.1.0", "tproxy-podwatch:0.1.0", "tproxy-initializer:0.1.0", "example-app:debian"):
        assert f"localhost/{want}" in names, names


def test_the_initializer_image_injected_the_locked_deployment(tutorial):
    c = tutorial["cluster"]
    dep = c.client.get(resource_path("extensions/v1beta1", "deployments", "default", "debian-app-locked"))
    assert [i["name"] for i in dep["spec"]["template"]["spec"].get("initContainers") or []] == ["tproxy"]


def test_the_locked_app_gets_418_200_and_no_ping(tutorial):
    r = rounds(tutorial, tutorial["locked"])
    assert locked_ok(r), r


def test_the_unlocked_app_reaches_everything(tutorial):
    r = rounds(tutorial, tutorial["unlocked"])
    assert unlocked_ok(r), r


def test_podwatch_image_programmed_the_locked_pods_redirect_in_the_node(tutorial):
    c = tutorial["cluster"]
    ip = c.pod_runtime(tutorial["locked"]).net.ip
    out = (
        c.topology.node.run("iptables-save", "-t", "nat", check=False).stdout
        + c.topology.node.run("iptables-nft-save", "-t", "nat", check=False).stdout
    )
    assert any(ip in line and "REDIRECT" in line for line in out.splitlines()), out


def test_nothing_from_the_locked_pod_reached_the_internet_directly(tutorial):
    rounds(tutorial, tutorial["locked"])
    unlocked_ip = tutorial["cluster"].pod_runtime(tutorial["unlocked"]).net.ip
    # the counter does see direct pod traffic: the unlocked app's next round after it was installed
    wait_for(
        lambda: tutorial["leaks"].seen_from(unlocked_ip) > 0,
        scaled(60),
        0.5,
        "the unlocked app's direct packets counted (the control)",
    )
    assert tutorial["leaks"].packets() == 0
