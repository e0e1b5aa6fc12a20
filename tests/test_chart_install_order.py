"""Why the chart's install order matters, shown in the 1.7 API emulator: Helm's order lets the
initializer's own Deployment in before the InitializerConfiguration exists; the opposite order
(e.g. a configuration left behind by a failed uninstall) holds that Deployment forever."""
from __future__ import annotations

import pytest

from chart_helpers import one, render
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
    objs = render(ALL_ON, namespace="tproxy-system")
    deployment, config = one(objs, "Deployment"), one(objs, "InitializerConfiguration")
    assert objs.index(deployment) < objs.index(config)
    status, body = _post(cluster, deployment)
    assert status == 201 and body["metadata"].get("initializers") is None
    assert _post(cluster, config)[0] == 201


def test_the_opposite_order_would_hold_the_initializer_pending(cluster):
    """Negative control: with the configuration already there, the initializer's create blocks
    until the server gives up (504), and the Deployment stays uninitialized, so it never runs."""
    objs = render(ALL_ON, namespace="tproxy-system")
    assert _post(cluster, one(objs, "InitializerConfiguration"))[0] == 201
    status, body = _post(cluster, one(objs, "Deployment"), query={"timeout": "1s"})
    assert status == 504, body
    ns, name = one(objs, "Deployment")["metadata"]["namespace"], one(objs, "Deployment")["metadata"]["name"]
    status, stored = raw(cluster, "GET", f"/apis/extensions/v1beta1/namespaces/{ns}/deployments/{name}")
    assert status == 200
    assert [p["name"] for p in stored["metadata"]["initializers"]["pending"]] == ["tproxy.initializer.kubernetes.io"]
