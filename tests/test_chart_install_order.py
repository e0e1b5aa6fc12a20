"""Why the chart's install order matters, shown in the 1.7 API emulator: Helm's order lets the
initializer's own Deployment in before the InitializerConfiguration exists; the opposite order
(e.g. a configuration left behind by a failed uninstall) holds that Deployment forever."""

from __future__ import annotations

import time

import pytest

from chart_helpers import K17, api_path, one, render
from kubesim.apiserver import APIServer
from kubesim.testing import api_client_for, raw

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

ALL_ON = {"tproxy.useInitializer": True, "tproxy.useRBAC": True}


@pytest.fixture
def cluster():
    srv = APIServer(k8s_version="1.7").start()
    admin = api_client_for(srv)
    assert raw(admin, "POST", "/api/v1/namespaces", body={"metadata": {"name": "tproxy-system"}})[0] == 201
    yield admin
    admin.close()
    srv.stop()


def _post(admin, obj, query=None):
    if obj["kind"] == "InitializerConfiguration":
        path = "/apis/admissionregistration.k8s.io/v1alpha1/initializerconfigurations"
    else:
        path = f"/apis/extensions/v1beta1/namespaces/{obj['metadata']['namespace']}/deployments"
    return raw(admin, "POST", path, query=query, body=obj, timeout=15)


def test_helm_order_creates_the_initializer_before_its_configuration(cluster):
    objs = render(ALL_ON, *K17, namespace="tproxy-system")
    deployment, config = one(objs, "Deployment"), one(objs, "InitializerConfiguration")
    assert objs.index(deployment) < objs.index(config)
    status, body = _post(cluster, deployment)
    assert status == 201 and body["metadata"].get("initializers") is None
    assert _post(cluster, config)[0] == 201


def test_the_opposite_order_would_hold_the_initializer_pending(cluster):
    """Negative control: with the configuration already there, the initializer's create blocks
    until the server gives up (504), and the Deployment stays uninitialized, so it never runs."""
    objs = render(ALL_ON, *K17, namespace="tproxy-system")
    assert _post(cluster, one(objs, "InitializerConfiguration"))[0] == 201
    status, body = _post(cluster, one(objs, "Deployment"), query={"timeout": "1s"})
    assert status == 504, body
    ns, name = one(objs, "Deployment")["metadata"]["namespace"], one(objs, "Deployment")["metadata"]["name"]
    status, stored = raw(cluster, "GET", f"/apis/extensions/v1beta1/namespaces/{ns}/deployments/{name}")
    assert status == 200
    assert [p["name"] for p in stored["metadata"]["initializers"]["pending"]] == ["tproxy.initializer.kubernetes.io"]


# Helm's releaseutil.UninstallOrder for the kinds this chart has; kinds Helm does not know
# (InitializerConfiguration) come last, as on install.
UNINSTALL_ORDER = [
    "Deployment",
    "DaemonSet",
    "RoleBinding",
    "Role",
    "ClusterRoleBinding",
    "ClusterRole",
    "ConfigMap",
    "Secret",
    "ServiceAccount",
]
APP = {
    "apiVersion": "extensions/v1beta1",
    "kind": "Deployment",
    "metadata": {"name": "app", "namespace": "tproxy-system", "annotations": {"initializer.kubernetes.io/tproxy": "true"}},
    "spec": {
        "replicas": 1,
        "selector": {"matchLabels": {"app": "app"}},
        "template": {"metadata": {"labels": {"app": "app"}}, "spec": {"containers": [{"name": "app", "image": "debian"}]}},
    },
}


def _install(admin, objs):
    for obj in objs:  # Helm's install order
        status, body = raw(admin, "POST", api_path(obj), body=obj, timeout=10)
        assert status == 201, f"{obj['kind']} {obj['metadata']['name']}: {status} {body}"
        assert not body["metadata"].get("initializers"), f"{obj['kind']} was held for initialization"


def _wait_until_configuration_is_in_force(admin):
    """The plugin re-reads configurations every second: poll with a throwaway app Deployment
    (includeUninitialized returns at once) until it is held for our initializer."""
    deadline = time.monotonic() + 5
    while True:
        status, body = raw(admin, "POST", api_path(APP), query={"includeUninitialized": "1"}, body=APP)  # 1.7: only "1"
        assert status in (201, 202), body
        raw(admin, "DELETE", api_path(APP, "app"))
        if status == 202:
            assert [p["name"] for p in body["metadata"]["initializers"]["pending"]] == ["tproxy.initializer.kubernetes.io"]
            return
        assert time.monotonic() < deadline, "the InitializerConfiguration never took effect"
        time.sleep(0.2)


def test_install_upgrade_uninstall_reinstall_never_hold_the_initializer():
    """§9 of docs/initializers-1.7.md: the initializer's own Deployment must not wait for itself, on
    install, on upgrade (Helm PATCHes existing objects; the plugin only marks creates) and on a
    reinstall after `helm uninstall`. The emulator polls configurations every second like 1.7."""
    srv = APIServer(k8s_version="1.7", initializer_config_refresh=1.0).start()
    admin = api_client_for(srv)
    try:
        assert raw(admin, "POST", "/api/v1/namespaces", body={"metadata": {"name": "tproxy-system"}})[0] == 201
        objs = render(ALL_ON, *K17, namespace="tproxy-system")
        dep = one(objs, "Deployment")
        _install(admin, objs)
        _wait_until_configuration_is_in_force(admin)

        # Upgrade: a changed value reaches the Deployment as a strategic-merge PATCH (Helm 3's
        # three-way merge, Helm 2's two-way) and as a PUT (helm upgrade --force): both 200, not held.
        upgraded = one(render({**ALL_ON, "tproxy.initializer.replicas": 3}, *K17, namespace="tproxy-system"), "Deployment")
        status, body = raw(
            admin,
            "PATCH",
            api_path(dep, dep["metadata"]["name"]),
            body={"spec": {"replicas": 3}},
            content_type="application/strategic-merge-patch+json",
            timeout=5,
        )
        assert status == 200 and body["spec"]["replicas"] == 3, body
        assert not body["metadata"].get("initializers")
        upgraded["metadata"]["resourceVersion"] = body["metadata"]["resourceVersion"]
        status, body = raw(admin, "PUT", api_path(dep, dep["metadata"]["name"]), body=upgraded, timeout=5)
        assert status == 200 and not body["metadata"].get("initializers"), body

        # Uninstall in Helm's order (the InitializerConfiguration last), then reinstall once the
        # plugin has re-read its configuration (README: the uninstall window).
        rank = {kind: i for i, kind in enumerate(UNINSTALL_ORDER)}
        for obj in sorted(objs, key=lambda o: rank.get(o["kind"], len(rank))):
            status, body = raw(admin, "DELETE", api_path(obj, obj["metadata"]["name"]), timeout=5)
            assert status == 200, f"{obj['kind']} {obj['metadata']['name']}: {status} {body}"
        time.sleep(1.1)  # without it the reinstalled Deployment is held (measured: read timeout)
        _install(admin, objs)
        _wait_until_configuration_is_in_force(admin)
    finally:
        admin.close()
        srv.stop()
