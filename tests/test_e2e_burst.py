"""A burst of locked deployments while the initializer, podwatch and the proxy restart and a bad policy
is loaded: nothing hangs, everything is injected exactly once, every pod is intercepted, nothing leaks.
"""

import threading
import time

import pytest

from controllerkit.errors import ApiError
from kubesim.demo import proxy_container
from kubesim.kubelet import e2e
from kubesim.polling import scaled
from kubesim.testing import wait_for

pytestmark = [pytest.mark.root, pytest.mark.slow]

BURST = 6
DEPLOY = "/apis/extensions/v1beta1/namespaces/default/deployments"


BLOCKED = "https://www.google.com/"
ALLOWED = "https://storage.googleapis.com/solutions-public-assets/hello.txt"


def curl_code(c, pod, url):
    return c.exec_in_pod(
        pod, ["curl", "-s", "-m", str(int(scaled(8))), "-o", "/dev/null", "-w", "%{http_code}", url], timeout=scaled(30)
    ).stdout


def proxy_log(c):
    """The running DaemonSet pod's transparent proxy log (appended across container restarts)."""
    pod = c.pods("default", "app=tproxy,component=tproxy")[0]
    return c.read_log(pod, proxy_container(pod))


def rejections(log: str) -> int:
    """How many times the proxy said it rejected a policy and kept the last good one."""
    return sum(1 for line in log.splitlines() if '"policy_rejected"' in line)


def locked_deployment(i):
    return {
        "apiVersion": "extensions/v1beta1",
        "kind": "Deployment",
        "metadata": {"name": f"burst-{i}", "annotations": {"initializer.kubernetes.io/tproxy": "true"}},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "burst", "i": str(i)}},
            "template": {
                "metadata": {"labels": {"app": "burst", "i": str(i)}},
                "spec": {"containers": [{"name": "app", "image": "debian:12", "command": ["sleep", "100000"]}]},
            },
        },
    }


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
                rejected_before = rejections(proxy_log(c))
                set_policy("mode: [this is not a policy\n")
                # the proxy read the bad file and said so (volume refresh, then its reload poll)
                rejected_line = wait_for(
                    lambda: [l for l in proxy_log(c).splitlines() if '"policy_rejected"' in l][rejected_before:],
                    30,
                    0.1,
                    "the proxy's policy_rejected log line for the bad policy",
                )[0]
                during_bad_policy = {u: curl_code(c, canary, u) for u in (BLOCKED, ALLOWED)}
                during_bad_policy["rejected"] = rejected_line
                set_policy(good_policy)
            if i == 3:  # the whole DaemonSet pod (podwatch + proxy) restarts
                ds_pod = c.pods("default", "app=tproxy,component=tproxy")[0]
                c.client.delete(f"/api/v1/namespaces/default/pods/{ds_pod['metadata']['name']}")
        for t in threads:
            t.join(scaled(60))
        yield {"cluster": c, "results": results, "durations": durations, "leaks": leaks, "during_bad_policy": during_bad_policy}
    finally:
        c.stop()


def test_every_create_completed_without_hanging(burst):
    # "created" means 201 before the server's 30 s create timeout: a hang would be a 504 here
    assert burst["results"] == {i: "created" for i in range(BURST)}, burst["results"]


def test_every_deployment_was_injected_exactly_once(burst):
    c = burst["cluster"]
    for i in range(BURST):
        d = c.client.get(f"{DEPLOY}/burst-{i}")
        assert [ic["name"] for ic in d["spec"]["template"]["spec"].get("initContainers") or []] == ["tproxy"]
        assert [v["name"] for v in d["spec"]["template"]["spec"]["volumes"]].count("ca-certs-debian") == 1


def test_a_bad_policy_reload_keeps_the_last_good_policy(burst):
    got = dict(burst["during_bad_policy"])
    rejected = got.pop("rejected", "")
    # the proxy did read the bad file (so the requests below ran under "last good kept", not before
    # the reload) and named what it kept
    assert '"kept"' in rejected and "policy" in rejected, rejected
    assert got == {BLOCKED: "418", ALLOWED: "200"}


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
    old.join(scaled(30))  # the old proxy and podwatch processes are gone (podwatch leaves its rules in place)
    assert not old.is_alive()

    def new_proxy_exited():
        """The replacement pod's proxy container has started, rejected the policy and exited."""
        for p in c.pods("default", "app=tproxy,component=tproxy"):
            if p["metadata"]["uid"] == ds_pod["metadata"]["uid"]:
                continue
            name = proxy_container(p)
            for st in (p.get("status") or {}).get("containerStatuses") or []:
                if st["name"] == name and (st.get("lastState") or {}).get("terminated"):
                    return st
        return None

    exited = wait_for(new_proxy_exited, 60, 0.1, "the new proxy container to exit on the malformed policy")
    assert exited["lastState"]["terminated"].get("exitCode") != 0, exited
    codes = {curl_code(c, pod, u) for u in (BLOCKED, ALLOWED) for _ in range(2)}
    assert "200" not in codes and "418" not in codes, codes  # nothing answers: no bypass, no stale proxy
    cm = c.client.get(path)
    cm["data"]["policy.yaml"] = good
    c.client.replace(path, cm)
    c.wait_pods("app=tproxy,component=tproxy", "default", timeout=60)
    wait_for(
        lambda: (curl_code(c, pod, BLOCKED), curl_code(c, pod, ALLOWED)) == ("418", "200"),
        30,
        0.5,
        "blocked 418 and allowed 200 through the recovered proxy",
    )


def test_nothing_leaked_during_the_restarts(burst):
    assert burst["leaks"].packets() == 0
