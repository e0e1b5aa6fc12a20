"""The chart's RBAC in the API emulator: each component's service account can do its job in a
namespace other than the release one, and cannot read what it does not need (Secrets, other
ConfigMaps). The whole rendered chart is loaded in Helm's install order, as `helm install` would."""

from __future__ import annotations

import copy

import pytest

from chart_helpers import K17, api_path, find, one, render
from kubesim.apiserver import APIServer
from kubesim.testing import api_client_for, raw, watch_events

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

RELEASE_NS = "tproxy-system"
FULL = "tproxy-tproxy"
APP_NS = "team-a"
INITIALIZER = "tproxy.initializer.kubernetes.io"

APP_DEPLOYMENT = {
    "apiVersion": "extensions/v1beta1",
    "kind": "Deployment",
    "metadata": {"name": "debian-app", "namespace": APP_NS, "annotations": {"initializer.kubernetes.io/tproxy": "true"}},
    "spec": {
        "replicas": 1,
        "selector": {"matchLabels": {"app": "debian-app"}},
        "template": {"metadata": {"labels": {"app": "debian-app"}}, "spec": {"containers": [{"name": "app", "image": "debian"}]}},
    },
}


@pytest.fixture(scope="module")
def cluster():
    """A 1.7 API server holding the installed chart (all options on) and an app namespace."""
    srv = APIServer(k8s_version="1.7").start()
    admin = api_client_for(srv)
    objs = render(
        {"tproxy.useInitializer": True, "tproxy.useRBAC": True, "tproxy.addStandardModeProxy": True}, *K17, namespace=RELEASE_NS
    )
    for ns in (RELEASE_NS, APP_NS):
        status, body = raw(admin, "POST", "/api/v1/namespaces", body={"metadata": {"name": ns}})
        assert status == 201, body
    created = []
    for obj in objs:  # Helm's install order
        status, body = raw(admin, "POST", api_path(obj), body=obj, timeout=10)
        # Nothing in the chart may wait for initialization: the InitializerConfiguration comes last,
        # so the initializer's own Deployment is created (201) before it exists.
        assert status == 201, f"{obj['kind']} {obj['metadata']['name']}: {status} {body}"
        assert not (body.get("metadata") or {}).get("initializers"), f"{obj['kind']} was held for initialization"
        created.append((obj["kind"], obj["metadata"]["name"]))
    assert created[-1][0] == "InitializerConfiguration"
    # Things the components must not be able to read.
    for ns in (RELEASE_NS, APP_NS, "kube-system"):
        raw(
            admin,
            "POST",
            f"/api/v1/namespaces/{ns}/secrets",
            body={"metadata": {"name": "db-password"}, "data": {"password": "aHVudGVyMg=="}},
        )
        raw(admin, "POST", f"/api/v1/namespaces/{ns}/configmaps", body={"metadata": {"name": "other-config"}, "data": {"k": "v"}})
    # An app pod on node-1 for podwatch to see.
    raw(
        admin,
        "POST",
        f"/api/v1/namespaces/{APP_NS}/pods",
        body={
            "metadata": {"name": "debian-app-1", "annotations": {"initializer.kubernetes.io/tproxy": "true"}},
            "spec": {"nodeName": "node-1", "containers": [{"name": "app", "image": "debian"}]},
        },
    )
    yield srv, admin, objs
    admin.close()
    srv.stop()


def _client(srv, objs, component: str):
    """An API client with the token of the service account the component's pods run as."""
    if component == "initializer":
        pod = one(objs, "Deployment")["spec"]["template"]["spec"]
        ns = one(objs, "Deployment")["metadata"]["namespace"]
    else:
        pod = one(objs, "DaemonSet")["spec"]["template"]["spec"]
        ns = one(objs, "DaemonSet")["metadata"]["namespace"]
    return api_client_for(srv, srv.service_account_token(ns, pod["serviceAccountName"]))


@pytest.fixture(scope="module")
def initializer(cluster):
    srv, _, objs = cluster
    c = _client(srv, objs, "initializer")
    yield c
    c.close()


@pytest.fixture(scope="module")
def podwatch(cluster):
    srv, _, objs = cluster
    c = _client(srv, objs, "podwatch")
    yield c
    c.close()


# ---- the initializer ------------------------------------------------------------------------


def test_initializer_can_initialize_a_deployment_in_another_namespace(cluster, initializer):
    _, admin, _ = cluster
    # A user's create, returned at once (202) and left pending for our initializer.
    status, dep = raw(
        admin,
        "POST",
        f"/apis/extensions/v1beta1/namespaces/{APP_NS}/deployments",
        query={"includeUninitialized": "1"},
        body=copy.deepcopy(APP_DEPLOYMENT),
    )
    assert status == 202, dep
    assert [p["name"] for p in dep["metadata"]["initializers"]["pending"]] == [INITIALIZER]

    # What the controller does: list+watch all namespaces including uninitialized objects...
    for group in ("apps/v1beta1", "extensions/v1beta1"):
        status, lst = raw(initializer, "GET", f"/apis/{group}/deployments", query={"includeUninitialized": "true"})
        assert status == 200, lst
        assert "debian-app" in [d["metadata"]["name"] for d in lst["items"]]
    events = list(
        watch_events(
            initializer,
            "/apis/apps/v1beta1/deployments",
            query={"includeUninitialized": "true", "resourceVersion": "0"},
            timeout=5,
            max_events=1,
        )
    )
    assert events and events[0]["type"] == "ADDED"
    # ...GET by name, then PUT the mutation removing itself from pending (needs `initialize`).
    path = f"/apis/apps/v1beta1/namespaces/{APP_NS}/deployments/debian-app"
    status, cur = raw(initializer, "GET", path)
    assert status == 200, cur
    cur["spec"]["template"]["metadata"].setdefault("annotations", {})["initializer.kubernetes.io/tproxy"] = "true"
    cur["metadata"]["initializers"] = None
    status, body = raw(initializer, "PUT", path, body=cur)
    assert status == 200, body
    assert not body["metadata"].get("initializers")
    # A strategic-merge patch is allowed too (the initializer's fallback on conflicts).
    status, body = raw(
        initializer,
        "PATCH",
        path,
        body={"metadata": {"labels": {"tproxy": "injected"}}},
        content_type="application/strategic-merge-patch+json",
    )
    assert status == 200, body


def test_initializer_reads_and_watches_only_its_own_configmap(cluster, initializer):
    _, _, objs = cluster
    cm = one(objs, "ConfigMap", f"{FULL}-initializer")
    ns, name = cm["metadata"]["namespace"], cm["metadata"]["name"]
    status, body = raw(initializer, "GET", f"/api/v1/namespaces/{ns}/configmaps/{name}")
    assert status == 200 and body["data"]["config"] == cm["data"]["config"]
    # The 1.7 legacy watch-by-name path: authorized as verb "watch" on that one name.
    events = list(watch_events(initializer, f"/api/v1/watch/namespaces/{ns}/configmaps/{name}", timeout=5, max_events=1))
    assert events[0]["type"] == "ADDED" and events[0]["object"]["metadata"]["name"] == name
    # Nothing else: not other ConfigMaps, not a list, not a write, not its own in another namespace.
    assert raw(initializer, "GET", f"/api/v1/namespaces/{ns}/configmaps/other-config")[0] == 403
    assert raw(initializer, "GET", f"/api/v1/namespaces/{ns}/configmaps")[0] == 403
    assert raw(initializer, "GET", f"/api/v1/namespaces/{APP_NS}/configmaps/{name}")[0] == 403
    assert raw(initializer, "PUT", f"/api/v1/namespaces/{ns}/configmaps/{name}", body=cm)[0] == 403
    status, _ = raw(initializer, "GET", f"/api/v1/watch/namespaces/{ns}/configmaps/other-config", timeout=5)
    assert status == 403


def test_initializer_reads_and_watches_the_ca_bundle_source_by_name(cluster, initializer):
    _, _, objs = cluster
    src = one(objs, "ConfigMap", f"{FULL}-root-certs", RELEASE_NS)
    status, body = raw(initializer, "GET", f"/api/v1/namespaces/{RELEASE_NS}/configmaps/{FULL}-root-certs")
    assert status == 200 and body["data"] == src["data"]
    events = list(
        watch_events(initializer, f"/api/v1/watch/namespaces/{RELEASE_NS}/configmaps/{FULL}-root-certs", timeout=5, max_events=1)
    )
    assert events[0]["type"] == "ADDED" and events[0]["object"]["data"] == src["data"]
    # Not the proxy's Secret next to it (the private key), not the policy, not a list.
    assert raw(initializer, "GET", f"/api/v1/namespaces/{RELEASE_NS}/secrets/{FULL}-certs")[0] == 403
    assert raw(initializer, "GET", f"/api/v1/namespaces/{RELEASE_NS}/configmaps/{FULL}-policy")[0] == 403
    assert raw(initializer, "GET", f"/api/v1/namespaces/{RELEASE_NS}/configmaps")[0] == 403


@pytest.mark.parametrize("ns", [APP_NS, "created-after-install"])
def test_initializer_can_create_and_update_the_ca_copy_in_any_namespace_and_nothing_more(cluster, initializer, ns):
    """What the copy needs, in a namespace the chart knows nothing about (one created after install
    too): get, create and update of the copy by name. What stays denied: reading, listing, watching,
    updating or deleting any other ConfigMap, and deleting or patching the copy."""
    _, admin, objs = cluster
    if ns != APP_NS:
        assert raw(admin, "POST", "/api/v1/namespaces", body={"metadata": {"name": ns}})[0] == 201
        assert (
            raw(
                admin,
                "POST",
                f"/api/v1/namespaces/{ns}/configmaps",
                body={"metadata": {"name": "other-config"}, "data": {"k": "v"}},
            )[0]
            == 201
        )
    copy_name = f"{FULL}-root-certs"
    path = f"/api/v1/namespaces/{ns}/configmaps/{copy_name}"
    data = one(objs, "ConfigMap", copy_name, RELEASE_NS)["data"]
    assert raw(initializer, "GET", path)[0] == 404  # allowed: the answer is "not there yet"
    status, created = raw(
        initializer, "POST", f"/api/v1/namespaces/{ns}/configmaps", body={"metadata": {"name": copy_name}, "data": data}
    )
    assert status == 201, created
    created["data"] = {"root-certs.crt": "rotated"}
    assert raw(initializer, "PUT", path, body=created)[0] == 200
    # Denied: everything else about ConfigMaps there.
    assert raw(initializer, "GET", f"/api/v1/namespaces/{ns}/configmaps")[0] == 403
    assert raw(initializer, "GET", f"/api/v1/namespaces/{ns}/configmaps/other-config")[0] == 403
    assert (
        raw(
            initializer,
            "PUT",
            f"/api/v1/namespaces/{ns}/configmaps/other-config",
            body={"metadata": {"name": "other-config"}, "data": {"k": "overwritten"}},
        )[0]
        == 403
    )
    assert raw(initializer, "DELETE", f"/api/v1/namespaces/{ns}/configmaps/other-config")[0] == 403
    assert raw(initializer, "DELETE", path)[0] == 403
    assert (
        raw(
            initializer,
            "PATCH",
            path,
            body={"data": {"root-certs.crt": "x"}},
            content_type="application/strategic-merge-patch+json",
        )[0]
        == 403
    )
    assert raw(initializer, "GET", f"/api/v1/watch/namespaces/{ns}/configmaps/other-config", timeout=5)[0] == 403
    assert raw(initializer, "GET", "/api/v1/configmaps")[0] == 403
    from kubernetes.client.exceptions import ApiException

    with pytest.raises(ApiException) as denied:
        list(watch_events(initializer, "/api/v1/configmaps", query={"timeoutSeconds": "1"}, timeout=10))
    assert denied.value.status == 403
    # create cannot be restricted by name in RBAC: that one grant is on every name (documented).
    assert (
        raw(initializer, "POST", f"/api/v1/namespaces/{ns}/configmaps", body={"metadata": {"name": "any-name"}, "data": {}})[0]
        == 201
    )
    assert raw(admin, "DELETE", f"/api/v1/namespaces/{ns}/configmaps/any-name")[0] == 200
    # No namespaces either: the copies are found through the deployments it already watches.
    assert raw(initializer, "GET", "/api/v1/namespaces")[0] == 403


def test_initializer_cannot_read_secrets_or_touch_other_things(cluster, initializer):
    for ns in (RELEASE_NS, APP_NS, "kube-system"):
        assert raw(initializer, "GET", f"/api/v1/namespaces/{ns}/secrets/db-password")[0] == 403
        assert raw(initializer, "GET", f"/api/v1/namespaces/{ns}/secrets")[0] == 403
    assert raw(initializer, "GET", f"/api/v1/namespaces/{RELEASE_NS}/secrets/{FULL}-certs")[0] == 403
    assert raw(initializer, "GET", f"/api/v1/namespaces/{APP_NS}/pods")[0] == 403
    assert raw(initializer, "DELETE", f"/apis/apps/v1beta1/namespaces/{APP_NS}/deployments/debian-app")[0] == 403
    assert (
        raw(initializer, "POST", f"/apis/apps/v1beta1/namespaces/{APP_NS}/deployments", body=copy.deepcopy(APP_DEPLOYMENT))[0]
        == 403
    )


# ---- podwatch (and the proxies, which share the DaemonSet's service account) ---------------


def test_podwatch_lists_and_watches_pods_of_its_node_in_all_namespaces(podwatch):
    query = {"fieldSelector": "spec.nodeName=node-1"}
    status, lst = raw(podwatch, "GET", "/api/v1/pods", query=query)
    assert status == 200, lst
    assert [(p["metadata"]["namespace"], p["metadata"]["name"]) for p in lst["items"]] == [(APP_NS, "debian-app-1")]
    events = list(
        watch_events(
            podwatch,
            "/api/v1/pods",
            query={**query, "resourceVersion": lst["metadata"]["resourceVersion"], "timeoutSeconds": "1"},
            timeout=10,
        )
    )
    assert events == []  # the watch is allowed (a 403 would raise), quiet, and ends after 1 s
    assert raw(podwatch, "GET", f"/api/v1/namespaces/{APP_NS}/pods/debian-app-1")[0] == 200


def test_podwatch_cannot_read_secrets_configmaps_or_write_pods(cluster, podwatch):
    for ns in (RELEASE_NS, APP_NS, "kube-system"):
        assert raw(podwatch, "GET", f"/api/v1/namespaces/{ns}/secrets/db-password")[0] == 403
        assert raw(podwatch, "GET", f"/api/v1/namespaces/{ns}/configmaps/other-config")[0] == 403
    # Not even the proxy's own CA Secret or policy: they arrive as volumes.
    assert raw(podwatch, "GET", f"/api/v1/namespaces/{RELEASE_NS}/secrets/{FULL}-certs")[0] == 403
    assert raw(podwatch, "GET", f"/api/v1/namespaces/{RELEASE_NS}/configmaps/{FULL}-policy")[0] == 403
    assert raw(podwatch, "DELETE", f"/api/v1/namespaces/{APP_NS}/pods/debian-app-1")[0] == 403
    assert raw(podwatch, "GET", f"/apis/apps/v1beta1/namespaces/{APP_NS}/deployments")[0] == 403
    from kubernetes.client.exceptions import ApiException

    with pytest.raises(ApiException) as denied:
        list(watch_events(podwatch, "/api/v1/secrets", query={"timeoutSeconds": "1"}, timeout=10))
    assert denied.value.status == 403


def test_every_rendered_binding_is_used_by_a_pod(cluster):
    """No dangling grants: each binding's subject is the account of a pod the chart runs."""
    _, _, objs = cluster
    used = {
        (
            one(objs, "Deployment")["metadata"]["namespace"],
            one(objs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"],
        ),
        (
            one(objs, "DaemonSet")["metadata"]["namespace"],
            one(objs, "DaemonSet")["spec"]["template"]["spec"]["serviceAccountName"],
        ),
    }
    for b in find(objs, "ClusterRoleBinding") + find(objs, "RoleBinding"):
        assert {(s["namespace"], s["name"]) for s in b["subjects"]} <= used
