"""The tutorial on a simulated 1.28 cluster in webhook mode, and its fail-closed guarantees.

The chart is installed with the real ``helm install ... --set tproxy.useWebhook=true,tproxy.useRBAC=true``:
the initializer runs ``python3 -m initializer webhook`` behind a Service, and kubesim's API server calls
it for every Deployment and Pod create (Pods created by the netns kubelet's ReplicaSets included) as
kube-apiserver does. The examples go in as ``apps/v1`` (1.16 serves no ``extensions/v1beta1``).

Fail closed (``failurePolicy: Fail``): with no webhook pod the create is refused with the API server's
message and nothing runs; a webhook that does not answer gives the timeout error after
``timeoutSeconds``, not a hang; webhook pods restarted during a burst of creates leave every
Deployment and Pod either injected (locked) or refused — never running unlocked.
"""

import concurrent.futures
import functools
import subprocess

import pytest
import yaml

from controllerkit import errors
from controllerkit.kube import resource_path
from kubesim.demo import example_argv, locked_ok, tutorial_values, unlocked_ok
from kubesim.kubelet import e2e
from kubesim.polling import scaled, wait_for

pytestmark = [pytest.mark.root, pytest.mark.slow]

VERSION = "1.28"
WEBHOOK_PORT = 8443
TIMEOUT_SECONDS = 2
INITIALIZER = "app=tproxy,component=initializer"
wait_for = functools.partial(wait_for, interval=0.1)


def kubectl(c, *args, check=True, stdin=None):
    import os

    proc = subprocess.run(
        [e2e.kubectl_binary(), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "KUBECONFIG": c.kubeconfig},
        cwd=e2e.REPO_ROOT,
        input=stdin,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
    return proc


def apply_example(c, name, namespace=None, check=True):
    argv, stdin = example_argv(name, VERSION)
    return kubectl(c, argv[0], *(["-n", namespace] if namespace else []), *argv[1:], stdin=stdin, check=check)


def locked_deployment(name: str) -> dict:
    _, text = example_argv("debian-app-locked.yaml", VERSION)
    dep = next(d for d in yaml.safe_load_all(text) if d and d["kind"] == "Deployment")
    dep["metadata"]["name"] = name
    return dep


def init_names(obj: dict) -> list[str]:
    spec = obj["spec"]["template"]["spec"] if "template" in obj["spec"] else obj["spec"]
    return [c["name"] for c in spec.get("initContainers") or []]


@pytest.fixture(scope="module")
def tutorial():
    from kubesim.kubelet.cluster import SimCluster

    c = SimCluster(k8s_version=VERSION, kubelet_options={"backoff_initial": 0.5, "backoff_cap": 2.0})
    c.start()
    try:
        e2e.helm_install(
            c,
            values=tutorial_values(VERSION) + f",tproxy.webhook.timeoutSeconds={TIMEOUT_SECONDS}",
            wait=180,
        )
        c.wait_pods("app=tproxy,component=tproxy", e2e.RELEASE_NAMESPACE, timeout=60)
        c.wait_pods(INITIALIZER, "kube-system", timeout=60)
        apply_example(c, "debian-app.yaml")
        apply_example(c, "debian-app-locked.yaml")
        unlocked = c.wait_pods("app=debian-app,variant=unlocked", timeout=60)[0]
        locked = c.wait_pods("app=debian-app,variant=locked", timeout=60)[0]
        yield {"cluster": c, "unlocked": unlocked, "locked": locked}
    finally:
        c.stop()


def test_the_tutorial_in_webhook_mode(tutorial):
    c = tutorial["cluster"]
    dep = c.client.get(resource_path("apps/v1", "deployments", "default", "debian-app-locked"))
    assert init_names(dep) == ["tproxy"]
    assert init_names(tutorial["locked"]) == ["tproxy"]  # the pod passed the webhook too, once
    assert not init_names(c.client.get(resource_path("apps/v1", "deployments", "default", "debian-app")))
    assert tutorial["locked"]["metadata"]["ownerReferences"][0]["kind"] == "ReplicaSet"
    assert unlocked_ok(e2e.wait_round(c, tutorial["unlocked"]))
    assert locked_ok(e2e.wait_round(c, tutorial["locked"]))


def _scale_webhook(c, replicas: int) -> None:
    kubectl(c, "scale", "-n", "kube-system", "deployment", "-l", INITIALIZER, f"--replicas={replicas}")
    if replicas:
        c.wait_pods(INITIALIZER, "kube-system", count=replicas, timeout=60)
    else:
        wait_for(lambda: not c.pods("kube-system", INITIALIZER), timeout=scaled(60), what="webhook pods gone")


def test_webhook_down_refuses_the_create_clearly_and_nothing_runs(tutorial):
    c = tutorial["cluster"]
    kubectl(c, "create", "namespace", "down")
    _scale_webhook(c, 0)
    try:
        proc = apply_example(c, "debian-app-locked.yaml", "down", check=False)
        assert proc.returncode != 0
        assert 'Internal error occurred: failed calling webhook "' in proc.stderr
        assert 'no endpoints available for service "' in proc.stderr
        with pytest.raises(errors.ApiError) as e:  # fail closed: unannotated objects too
            c.client.create(
                resource_path("v1", "pods", "down"),
                {
                    "metadata": {"name": "bare"},
                    "spec": {"containers": [{"name": "c", "image": "debian:12", "command": ["sleep", "100"]}]},
                },
            )
        assert e.value.code == 500 and "failed calling webhook" in e.value.message
        assert not c.client.list(resource_path("apps/v1", "deployments", "down"))["items"]
        assert not c.pods("down")
    finally:
        _scale_webhook(c, 2)
    apply_example(c, "debian-app-locked.yaml", "down")  # back: the same create passes, injected
    (pod,) = c.wait_pods("app=debian-app,variant=locked", "down", timeout=60)
    assert init_names(pod) == ["tproxy"]


def test_a_webhook_that_does_not_answer_gives_the_timeout_error_not_a_hang(tutorial):
    """The webhook pods' HTTPS port drops every packet (iptables in their namespaces; readiness, on the
    metrics port, stays green): the API server waits timeoutSeconds, then refuses with its error."""
    c = tutorial["cluster"]
    kubectl(c, "create", "namespace", "slow")
    pods = c.pods("kube-system", INITIALIZER)
    nets = [c.pod_runtime(p).net.name for p in pods]
    rule = ["INPUT", "-p", "tcp", "--dport", str(WEBHOOK_PORT), "-j", "DROP"]
    for n in nets:
        subprocess.run(["ip", "netns", "exec", n, "iptables", "-I", *rule], check=True)
    try:
        with pytest.raises(errors.ApiError) as e:
            c.client.create(resource_path("apps/v1", "deployments", "slow"), locked_deployment("late"))
        assert e.value.code == 500
        assert e.value.message.endswith(f'/mutate?timeout={TIMEOUT_SECONDS}s": context deadline exceeded')
        assert "failed calling webhook" in e.value.message
        assert not c.client.list(resource_path("apps/v1", "deployments", "slow"))["items"]
    finally:
        for n in nets:
            subprocess.run(["ip", "netns", "exec", n, "iptables", "-D", *rule], check=False)


def test_webhook_restarted_during_a_burst_every_pod_locked_or_refused(tutorial):
    c = tutorial["cluster"]
    kubectl(c, "create", "namespace", "burst")
    path = resource_path("apps/v1", "deployments", "burst")

    def create(i):
        try:
            return c.client.create(path, locked_deployment(f"app-{i}"))
        except errors.ApiError as e:
            assert "failed calling webhook" in e.message or "admission webhook" in e.message, e.message
            return None

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(create, i) for i in range(16)]
        kubectl(c, "delete", "pods", "-n", "kube-system", "-l", INITIALIZER, "--wait=false")
        futures += [pool.submit(create, i) for i in range(16, 24)]
        results = [f.result() for f in futures]
    created = [r for r in results if r is not None]
    assert all(init_names(d) == ["tproxy"] for d in created)  # admitted => injected
    c.wait_pods(INITIALIZER, "kube-system", count=2, timeout=60)
    stored = c.client.list(path)["items"]
    assert {d["metadata"]["name"] for d in stored} == {d["metadata"]["name"] for d in created}
    for d in stored:
        assert init_names(d) == ["tproxy"]
    # every pod the ReplicaSets got admitted carries the lock; the rest are retried until admitted
    wait_for(
        lambda: len([p for p in c.pods("burst") if (p.get("status") or {}).get("phase") == "Running"]) == len(created),
        timeout=scaled(120),
        what="every admitted app running",
    )
    assert all(init_names(p) == ["tproxy"] for p in c.pods("burst"))
