"""The tutorial's results on a real cluster (kind: scripts/kind-up.sh), through its API only.

Run with ``pytest --kubeconfig=PATH -m cluster`` (or ``TPROXY_E2E_KUBECONFIG=PATH``) after the README's
``helm install`` and ``kubectl apply`` of both examples; without a kubeconfig these tests are
deselected (conftest.py), never skipped. Not run on the project's machines: no kind, no node image.
"""

import time

import pytest

from controllerkit.kube import Client, resource_path
from kubesim.demo import last_round, locked_ok, unlocked_ok

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def api(request):
    return Client.from_config(request.config.getoption("--kubeconfig"))


@pytest.fixture(scope="module")
def core(request):
    from kubernetes import client, config

    return client.CoreV1Api(config.new_client_from_config(request.config.getoption("--kubeconfig")))


def app_round(api, core, variant, namespace="default", timeout=120):
    deadline = time.monotonic() + timeout
    r = None
    while time.monotonic() < deadline:
        pods = api.list(resource_path("v1", "pods", namespace), labelSelector=f"app=debian-app,variant={variant}")
        for p in pods["items"]:
            if (p.get("status") or {}).get("phase") != "Running":
                continue
            log = core.read_namespaced_pod_log(p["metadata"]["name"], namespace, container="app", tail_lines=20)
            r = last_round(log)
            if r:
                return r
        time.sleep(2)
    return r


def test_locked_deployment_was_injected(api):
    dep = api.get(resource_path("extensions/v1beta1", "deployments", "default", "debian-app-locked"))
    assert [c["name"] for c in dep["spec"]["template"]["spec"].get("initContainers") or []] == ["tproxy"]


def test_locked_app_gets_418_200_and_no_ping(api, core):
    r = app_round(api, core, "locked")
    assert locked_ok(r), r


def test_unlocked_app_reaches_everything(api, core):
    r = app_round(api, core, "unlocked")
    assert unlocked_ok(r), r
