"""A burst of locked deployments while the initializer, podwatch and the proxy restart and a bad policy
is loaded: nothing hangs, everything is injected exactly once, every pod is intercepted, nothing leaks.
"""
import threading
import time

import pytest

from controllerkit.errors import ApiError
from kubesim.kubelet import e2e

pytestmark = [pytest.mark.root, pytest.mark.slow]

BURST = 6
DEPLOY = "/apis/extensions/v1beta1/namespaces/default/deployments"


BLOCKED = "https://www.google.com/"
ALLOWED = "https://storage.googleapis.com/solutions-public-assets/hello.txt"


def curl_code(c, pod, url):
    return c.exec_in_pod(pod, ["curl", "-s", "-m", "8", "-o", "/dev/null", "-w", "%{http_code}", url]).stdout


def locked_deployment(i):
    return {"apiVersion": "extensions/v1beta1", "kind": "Deployment",
            "metadata": {"name": f"burst-{i}", "annotations": {"initializer.kubernetes.io/tproxy": "true"}},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "burst", "i": str(i)}},
                     "template": {"metadata": {"labels": {"app": "burst", "i": str(i)}},
                                  "spec": {"containers": [{"name": "app", "image": "debian:12",
                                                           "command": ["sleep", "100000"]}]}}}}


@pytest.fixture(scope="module")
def burst():
    from kubesim.kubelet.cluster import SimCluster
    c = SimCluster(kubelet_options={"backoff_initial": 1.0, "backoff_cap": 4.0})
    c.start()
    try:
        e2e.helm_install(c, namespace="default")
        c.wait_pods("app=tproxy,component=tproxy", "default", timeout=60)
        c.wait_pods("app=tproxy,component=initializer", "kube-system", count=2, timeout=60)
        leaks = e2e.LeakCounter(c.topology.internet).install()
        c.client.create(DEPLOY, locked_deployment("canary"))
        canary = c.wait_pods("app=burst,i=canary", timeout=60)[0]
        results, durations, during_bad_policy = {}, {}, {}
        policy_path = "/api/v1/namespaces/default/configmaps/tproxy-tproxy-policy"
        good_policy = c.client.get(policy_path)["data"]["policy.yaml"]

        def set_policy(text):
            cm = c.client.get(policy_path)
            cm["data"]["policy.yaml"] = text
            c.client.replace(policy_path, cm)

        def create(i):
            t = time.monotonic()
            try:
                c.client.create(DEPLOY, locked_deployment(i))
                results[i] = "created"
            except ApiError as e:
                results[i] = str(e)
            durations[i] = time.monotonic() - t

        threads = [threading.Thread(target=create, args=(i,)) for i in range(BURST)]
        for i, t in enumerate(threads):
            t.start()
            if i == 1:  # restart one initializer replica mid-burst
                ini = c.pods("kube-system", "app=tproxy,component=initializer")[0]
                c.client.delete(f"/api/v1/namespaces/kube-system/pods/{ini['metadata']['name']}")
            if i == 2:  # a bad policy reload: the running proxy must keep the last good policy
                set_policy("mode: [this is not a policy\n")
                time.sleep(2.5)  # > volume refresh (1 s) + the proxy's reload poll (1 s)
                during_bad_policy = {u: curl_code(c, canary, u) for u in (BLOCKED, ALLOWED)}
                set_policy(good_policy)
            if i == 3:  # the whole DaemonSet pod (podwatch + proxy) restarts
                ds_pod = c.pods("default", "app=tproxy,component=tproxy")[0]
                c.client.delete(f"/api/v1/namespaces/default/pods/{ds_pod['metadata']['name']}")
        for t in threads:
            t.join(60)
        yield {"cluster": c, "results": results, "durations": durations, "leaks": leaks,
               "during_bad_policy": during_bad_policy}
    finally:
        c.stop()


def test_every_create_completed_without_hanging(burst):
    assert burst["results"] == {i: "created" for i in range(BURST)}, burst["results"]
    assert max(burst["durations"].values()) < 30


def test_every_deployment_was_injected_exactly_once(burst):
    c = burst["cluster"]
    for i in range(BURST):
        d = c.client.get(f"{DEPLOY}/burst-{i}")
        assert [ic["name"] for ic in d["spec"]["template"]["spec"].get("initContainers") or []] == ["tproxy"]
        assert [v["name"] for v in d["spec"]["template"]["spec"]["volumes"]].count("ca-certs-debian") == 1


def test_a_bad_policy_reload_keeps_the_last_good_policy(burst):
    assert burst["during_bad_policy"] == {BLOCKED: "418", ALLOWED: "200"}


def test_every_pod_is_intercepted_after_the_restarts(burst):
    c = burst["cluster"]
    pods = c.wait_pods("app=burst", count=BURST + 1, timeout=90)
    for p in pods:
        got = (curl_code(c, p, BLOCKED), curl_code(c, p, ALLOWED))
        assert got == ("418", "200"), p["metadata"]["name"]


def test_proxy_restarted_with_a_bad_policy_fails_closed_then_recovers(burst):
    """mitmdump refuses to start with a malformed policy (no last good one yet): locked pods' web requests
    then fail — they never bypass — and work again once the policy is fixed."""
    c = burst["cluster"]
    path = "/api/v1/namespaces/default/configmaps/tproxy-tproxy-policy"
    cm = c.client.get(path)
    good = cm["data"]["policy.yaml"]
    cm["data"]["policy.yaml"] = "mode: [broken\n"
    c.client.replace(path, cm)
    ds_pod = c.pods("default", "app=tproxy,component=tproxy")[0]
    old = c.pod_runtime(ds_pod)
    c.client.delete(f"/api/v1/namespaces/default/pods/{ds_pod['metadata']['name']}")
    pod = c.pods("default", "app=burst,i=canary")[0]
    old.join(30)  # the old proxy and podwatch processes are gone (podwatch leaves its rules in place)
    assert not old.is_alive()
    time.sleep(1)  # the new proxy container starts, rejects the policy and exits (and is restarted)
    codes = {curl_code(c, pod, u) for u in (BLOCKED, ALLOWED) for _ in range(2)}
    assert "200" not in codes and "418" not in codes, codes  # nothing answers: no bypass, no stale proxy
    cm = c.client.get(path)
    cm["data"]["policy.yaml"] = good
    c.client.replace(path, cm)
    c.wait_pods("app=tproxy,component=tproxy", "default", timeout=60)
    deadline = time.monotonic() + 30
    got = None
    while time.monotonic() < deadline:
        got = (curl_code(c, pod, BLOCKED), curl_code(c, pod, ALLOWED))
        if got == ("418", "200"):
            break
        time.sleep(1)
    assert got == ("418", "200")


def test_nothing_leaked_during_the_restarts(burst):
    assert burst["leaks"].packets() == 0
