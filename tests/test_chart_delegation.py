"""The chart's delegation values (tproxy.delegation): the policy the proxy gets, and the RBAC that
lets the proxy read exactly the namespaces' policy ConfigMaps, checked in a 1.13 API emulator."""

from __future__ import annotations

import pytest
import yaml

from chart_helpers import CHART, K17, api_path, find, helm, one, render, set_args
from kubesim.apiserver import APIServer
from kubesim.testing import api_client_for, raw, watch_events

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

RELEASE_NS = "tproxy-system"
FULL = "tproxy-tproxy"
ON = {
    "tproxy.useRBAC": True,
    "tproxy.delegation.configMap": "tproxy-egress",
    "tproxy.delegation.ceiling.hosts": ["*.corp.example"],
    "tproxy.delegation.ceiling.ranges": ["198.18.0.0/15"],
}


def policy_of(objs) -> str:
    return one(objs, "ConfigMap", f"{FULL}-policy")["data"]["policy.yaml"]


def test_the_delegation_values_become_the_policys_delegation_section():
    from proxy.scopes import ScopedPolicy

    text = policy_of(render(ON, namespace=RELEASE_NS))
    doc = yaml.safe_load(text)
    assert doc["delegation"] == {
        "configMap": "tproxy-egress",
        "ceiling": {"hosts": ["*.corp.example"], "ranges": ["198.18.0.0/15"], "modes": ["enforce", "report"]},
    }
    assert doc["rules"][0]["host"] == "storage.googleapis.com"  # the policy itself unchanged
    scoped = ScopedPolicy.from_yaml(text, source="policy.yaml")
    assert scoped.config_map == "tproxy-egress" and scoped.ceiling.modes == ("enforce", "report")


def test_a_policy_string_gets_the_section_too_and_off_leaves_it_verbatim():
    text = "# ours\nmode: report\nrules:\n  - host: '*.example.com'\n"
    on = yaml.safe_load(policy_of(render({**ON, "tproxy.policy": text}, namespace=RELEASE_NS)))
    assert on["mode"] == "report" and on["delegation"]["configMap"] == "tproxy-egress"
    assert policy_of(render({"tproxy.policy": text}, namespace=RELEASE_NS)) == text
    assert not find(render({"tproxy.useRBAC": True}), "ClusterRole", f"{FULL}-namespace-policies")


def test_older_servers_are_refused_with_the_reason():
    proc = helm("template", "tproxy", str(CHART), "--namespace", RELEASE_NS, *set_args(ON), *K17, check=False)
    assert proc.returncode != 0
    assert "needs Kubernetes 1.11+" in proc.stderr and "every ConfigMap" in proc.stderr


def test_a_bad_configmap_name_is_refused():
    proc = helm("template", "tproxy", str(CHART), "--set", "tproxy.delegation.configMap=Not_A_Name", check=False)
    assert proc.returncode != 0 and "configMap" in proc.stderr


@pytest.fixture(scope="module")
def proxy_client():
    """The DaemonSet's service account on a 1.13 API server holding the chart's RBAC objects."""
    srv = APIServer(k8s_version="1.13").start()
    admin = api_client_for(srv)
    objs = render(ON, namespace=RELEASE_NS)
    for ns in (RELEASE_NS, "team-a", "team-b"):
        assert raw(admin, "POST", "/api/v1/namespaces", body={"metadata": {"name": ns}})[0] == 201
    for obj in objs:
        if obj["kind"] in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"):
            status, body = raw(admin, "POST", api_path(obj), body=obj, timeout=10)
            assert status == 201, body
    for ns in ("team-a", "team-b"):
        for name in ("tproxy-egress", "other-config"):
            raw(
                admin,
                "POST",
                f"/api/v1/namespaces/{ns}/configmaps",
                body={"metadata": {"name": name}, "data": {"policy.yaml": "rules: []"}},
            )
    pod = one(objs, "DaemonSet")["spec"]["template"]["spec"]
    client = api_client_for(srv, srv.service_account_token(RELEASE_NS, pod["serviceAccountName"]))
    yield client
    client.close()
    admin.close()
    srv.stop()


def test_the_proxy_lists_and_watches_exactly_the_policy_configmaps(proxy_client):
    by_name = {"fieldSelector": "metadata.name=tproxy-egress"}
    status, lst = raw(proxy_client, "GET", "/api/v1/configmaps", query=by_name)
    assert status == 200, lst
    assert sorted((c["metadata"]["namespace"], c["metadata"]["name"]) for c in lst["items"]) == [
        ("team-a", "tproxy-egress"),
        ("team-b", "tproxy-egress"),
    ]
    events = list(
        watch_events(
            proxy_client,
            "/api/v1/configmaps",
            timeout=10,
            query={**by_name, "resourceVersion": lst["metadata"]["resourceVersion"], "timeoutSeconds": "1"},
        )
    )
    assert events == []  # allowed (a 403 raises), quiet
    assert raw(proxy_client, "GET", "/api/v1/namespaces/team-a/configmaps/tproxy-egress")[0] == 200
    # not another ConfigMap, not a list of all, not a write
    assert raw(proxy_client, "GET", "/api/v1/namespaces/team-a/configmaps/other-config")[0] == 403
    assert raw(proxy_client, "GET", "/api/v1/configmaps")[0] == 403
    assert raw(proxy_client, "GET", "/api/v1/configmaps", query={"fieldSelector": "metadata.name=other-config"})[0] == 403
    assert (
        raw(
            proxy_client,
            "PUT",
            "/api/v1/namespaces/team-a/configmaps/tproxy-egress",
            body={"metadata": {"name": "tproxy-egress", "namespace": "team-a"}, "data": {}},
        )[0]
        == 403
    )
    assert raw(proxy_client, "GET", "/api/v1/namespaces/team-a/secrets")[0] == 403


def test_the_proxy_can_post_events_and_nothing_else_new(proxy_client):
    ev = {
        "metadata": {"name": "tproxy-egress.1.node-1", "namespace": "team-a"},
        "involvedObject": {"kind": "ConfigMap", "namespace": "team-a", "name": "tproxy-egress"},
        "reason": "PolicyRejected",
        "message": "m",
        "type": "Warning",
    }
    assert raw(proxy_client, "POST", "/api/v1/namespaces/team-a/events", body=ev)[0] == 201
    assert raw(proxy_client, "DELETE", "/api/v1/namespaces/team-a/events/tproxy-egress.1.node-1")[0] == 403
    assert raw(proxy_client, "GET", "/api/v1/namespaces/team-a/events")[0] == 403


def test_the_delegation_objects_are_valid_1_13_objects():
    from chart_helpers import validate_strict

    objs = render(ON, namespace=RELEASE_NS)
    checked = [
        one(objs, "ClusterRole", f"{FULL}-namespace-policies"),
        one(objs, "ClusterRoleBinding", f"{FULL}-namespace-policies"),
        one(objs, "ConfigMap", f"{FULL}-policy"),
    ]
    for obj in checked:
        validate_strict(obj, "1.13.0")
