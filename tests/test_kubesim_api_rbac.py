"""Conformance: authentication (bearer tokens, 1.7 service-account token Secrets) and RBAC authorization."""

import base64
import re

import kubernetes.client as k
import pytest

from kubesim.apiserver import APIServer
from kubesim.testing import RbacV1beta1, api_client_for, raw


@pytest.fixture(scope="module")
def srv(kubesim_server_module):
    return kubesim_server_module


@pytest.fixture(scope="module")
def c(kube_api_client_module):
    return kube_api_client_module


def bind(c, ns, name, rules, subjects, cluster_role=False, cluster_binding=False):
    rbac = RbacV1beta1(c)
    if cluster_role:
        rbac.create_cluster_role({"metadata": {"name": name}, "rules": rules})
    else:
        rbac.create_namespaced_role(ns, {"metadata": {"name": name}, "rules": rules})
    ref = {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole" if cluster_role else "Role", "name": name}
    if cluster_binding:
        rbac.create_cluster_role_binding({"metadata": {"name": name}, "roleRef": ref, "subjects": subjects})
    else:
        rbac.create_namespaced_role_binding(ns, {"metadata": {"name": name}, "roleRef": ref, "subjects": subjects})


def test_no_or_bad_token_is_401(srv):
    """Authentication: requests without a valid bearer token get 401 Unauthorized."""
    for token in ("", "not-a-token", "a.b.c"):
        cl = api_client_for(srv, token or "x")
        if not token:
            cl.configuration.api_key = {}
        s, body = raw(cl, "GET", "/api/v1/namespaces")
        assert s == 401 and body["reason"] == "Unauthorized"


def test_bootstrap_namespaces_service_accounts_and_token_secrets(c):
    """Bootstrap: default/kube-system/kube-public, each with a `default` SA whose token Secret is published the
    1.7 way (<sa>-token-<5 chars>, type kubernetes.io/service-account-token, data token/ca.crt/namespace)."""
    v1 = k.CoreV1Api(c)
    assert sorted(n.metadata.name for n in v1.list_namespace().items) == ["default", "kube-public", "kube-system"]
    for ns in ("default", "kube-system", "kube-public"):
        sa = v1.read_namespaced_service_account("default", ns)
        assert len(sa.secrets) == 1
        secret = v1.read_namespaced_secret(sa.secrets[0].name, ns)
        assert re.fullmatch(r"default-token-[bcdfghjklmnpqrstvwxz2456789]{5}", secret.metadata.name)
        assert secret.type == "kubernetes.io/service-account-token"
        assert set(secret.data) == {"token", "ca.crt", "namespace"}
        assert base64.b64decode(secret.data["namespace"]).decode() == ns
        assert b"BEGIN CERTIFICATE" in base64.b64decode(secret.data["ca.crt"])
        assert secret.metadata.annotations["kubernetes.io/service-account.name"] == "default"
        assert secret.metadata.annotations["kubernetes.io/service-account.uid"] == sa.metadata.uid


def test_new_namespace_and_service_account_get_tokens(srv, c):
    """The SA controller creates `default` in a new namespace; the token controller a Secret for every SA."""
    v1 = k.CoreV1Api(c)
    v1.create_namespace({"metadata": {"name": "team-a"}})
    assert v1.read_namespaced_service_account("default", "team-a").secrets
    v1.create_namespaced_service_account("team-a", {"metadata": {"name": "robot"}})
    sa = v1.read_namespaced_service_account("robot", "team-a")
    assert sa.secrets and sa.secrets[0].name.startswith("robot-token-")
    token = base64.b64decode(v1.read_namespaced_secret(sa.secrets[0].name, "team-a").data["token"]).decode()
    assert token == srv.service_account_token("team-a", "robot")
    assert token.count(".") == 2, "a JWT, like 1.7 service-account tokens"


def test_service_account_denied_with_the_1_7_message(srv):
    """RBAC deny in 1.7: 403 written by the authorization filter as text/plain (not a Status), wording of
    responsewriters.forbiddenMessage: `User "<user>" cannot <verb> <resource>.<group> in the namespace "<ns>".`"""
    sa = api_client_for(srv, srv.service_account_token("default", "nobody"))
    s, body = raw(sa, "GET", "/apis/extensions/v1beta1/namespaces/default/deployments/web")
    assert s == 403
    assert body == ('User "system:serviceaccount:default:nobody" cannot get deployments.extensions in the namespace "default".')
    s, body = raw(sa, "GET", "/api/v1/nodes")
    assert s == 403
    assert body == 'User "system:serviceaccount:default:nobody" cannot list nodes at the cluster scope.'
    s, body = raw(sa, "GET", "/api/v1/namespaces/default/pods/p/status")
    assert body.endswith('cannot get pods/status in the namespace "default".')
    # the official client turns it into an ApiException carrying the text
    with pytest.raises(k.ApiException) as e:
        k.CoreV1Api(sa).read_namespaced_pod("p", "default")
    assert e.value.status == 403 and e.value.headers["Content-Type"] == "text/plain"


def test_1_13_denial_is_a_status():
    """From 1.8 the authorization 403 is a Status: `<resource>.<group> "<name>" is forbidden: ...`."""
    srv = APIServer(k8s_version="1.13").start()
    try:
        sa = api_client_for(srv, srv.service_account_token("default", "nobody"))
        s, body = raw(sa, "GET", "/apis/extensions/v1beta1/namespaces/default/deployments/web")
        assert s == 403 and body["reason"] == "Forbidden"
        assert body["message"].startswith('deployments.extensions "web" is forbidden: User "system:serviceaccount:')
        assert body["details"] == {"name": "web", "group": "extensions", "kind": "deployments"}
        s, body = raw(sa, "GET", "/api/v1/namespaces/default/pods")
        assert body["message"].startswith("pods is forbidden: ")
    finally:
        srv.stop()


def test_role_binding_allows_exactly_its_rules(srv, c):
    """A Role + RoleBinding to a ServiceAccount allows its verbs/resources in its namespace only."""
    bind(
        c,
        "default",
        "reader",
        [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}],
        [{"kind": "ServiceAccount", "name": "reader", "namespace": "default"}],
    )
    sa = k.CoreV1Api(api_client_for(srv, srv.service_account_token("default", "reader")))
    sa.list_namespaced_config_map("default")
    with pytest.raises(k.ApiException) as e:
        sa.list_namespaced_config_map("kube-system")
    assert e.value.status == 403
    with pytest.raises(k.ApiException) as e:
        sa.create_namespaced_config_map("default", {"metadata": {"name": "nope"}})
    assert e.value.status == 403
    with pytest.raises(k.ApiException) as e:
        sa.list_namespaced_secret("default")
    assert e.value.status == 403


def test_resource_names_restrict_to_named_requests(srv, c):
    """resourceNames match only requests that carry a name: get of that name yes, list/other names no."""
    k.CoreV1Api(c).create_namespaced_config_map("default", {"metadata": {"name": "allowed"}})
    k.CoreV1Api(c).create_namespaced_config_map("default", {"metadata": {"name": "denied"}})
    bind(
        c,
        "default",
        "one-cm",
        [{"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["allowed"], "verbs": ["get", "list"]}],
        [{"kind": "ServiceAccount", "name": "one", "namespace": "default"}],
    )
    sa = k.CoreV1Api(api_client_for(srv, srv.service_account_token("default", "one")))
    assert sa.read_namespaced_config_map("allowed", "default").metadata.name == "allowed"
    for call in (
        lambda: sa.read_namespaced_config_map("denied", "default"),
        lambda: sa.list_namespaced_config_map("default", field_selector="metadata.name=allowed"),
    ):
        with pytest.raises(k.ApiException) as e:
            call()
        assert e.value.status == 403


def test_cluster_role_binding_to_group_and_wildcards(srv, c):
    """ClusterRoleBinding to group system:serviceaccounts; '*' verbs and resources; group matching."""
    bind(
        c,
        "",
        "all-sa-read",
        [{"apiGroups": ["extensions", "apps"], "resources": ["*"], "verbs": ["get", "list"]}],
        [{"kind": "Group", "name": "system:serviceaccounts", "apiGroup": "rbac.authorization.k8s.io"}],
        cluster_role=True,
        cluster_binding=True,
    )
    sa = api_client_for(srv, srv.service_account_token("kube-system", "anyone"))
    assert raw(sa, "GET", "/apis/extensions/v1beta1/deployments")[0] == 200
    assert raw(sa, "GET", "/apis/apps/v1beta1/namespaces/x/deployments")[0] == 200
    assert raw(sa, "GET", "/api/v1/pods")[0] == 403
    assert raw(sa, "DELETE", "/apis/apps/v1beta1/namespaces/default/deployments/x")[0] == 403


def test_role_binding_to_cluster_role_is_namespaced(srv, c):
    """A RoleBinding referencing a ClusterRole grants it only in the binding's namespace."""
    bind(
        c,
        "",
        "pod-editor",
        [{"apiGroups": [""], "resources": ["pods", "pods/status"], "verbs": ["*"]}],
        [],
        cluster_role=True,
        cluster_binding=True,
    )
    s, _ = raw(
        c,
        "POST",
        "/apis/rbac.authorization.k8s.io/v1beta1/namespaces/kube-system/rolebindings",
        body={
            "metadata": {"name": "pod-editor"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "pod-editor"},
            "subjects": [{"kind": "ServiceAccount", "name": "kubelet"}],
        },
    )  # namespace defaults to the binding's
    assert s == 201
    sa = api_client_for(srv, srv.service_account_token("kube-system", "kubelet"))
    assert raw(sa, "GET", "/api/v1/namespaces/kube-system/pods")[0] == 200
    assert raw(sa, "GET", "/api/v1/namespaces/default/pods")[0] == 403


def test_static_user_token_and_user_subject(srv, c):
    """Static tokens for plain users; a User subject matches the user name."""
    srv.add_token("alice-token", "alice", groups=["devs"])
    bind(
        c,
        "default",
        "alice",
        [{"apiGroups": [""], "resources": ["services"], "verbs": ["list"]}],
        [{"kind": "User", "name": "alice", "apiGroup": "rbac.authorization.k8s.io"}],
    )
    alice = api_client_for(srv, "alice-token")
    assert raw(alice, "GET", "/api/v1/namespaces/default/services")[0] == 200
    assert raw(alice, "GET", "/api/v1/namespaces/default/secrets")[0] == 403


def test_token_invalid_after_its_secret_is_deleted(srv, c):
    """1.7 token authenticator with lookup: the token dies with its Secret (or its ServiceAccount)."""
    token = srv.service_account_token("default", "ephemeral")
    cl = api_client_for(srv, token)
    assert raw(cl, "GET", "/api/v1/namespaces/default/pods")[0] == 403  # authenticated, not authorized
    secret = k.CoreV1Api(c).read_namespaced_service_account("ephemeral", "default").secrets[0].name
    k.CoreV1Api(c).delete_namespaced_secret(secret, "default")
    assert raw(cl, "GET", "/api/v1/namespaces/default/pods")[0] == 401


def test_rbac_v1beta1_and_v1_are_one_storage():
    """1.13 serves rbac v1beta1 and v1 over the same objects; 1.7 serves only v1beta1 (v1 is GA in 1.8)."""
    srv = APIServer(k8s_version="1.13").start()
    try:
        c = api_client_for(srv)
        s, role = raw(
            c,
            "POST",
            "/apis/rbac.authorization.k8s.io/v1beta1/namespaces/default/roles",
            body={"metadata": {"name": "shared"}, "rules": []},
        )
        assert s == 201
        r = k.RbacAuthorizationV1Api(c).read_namespaced_role("shared", "default")
        assert r.metadata.uid == role["metadata"]["uid"]
    finally:
        srv.stop()


def test_1_7_serves_no_rbac_v1(c):
    assert raw(c, "GET", "/apis/rbac.authorization.k8s.io/v1/clusterroles")[0] == 404
    groups = {g["name"]: g for g in raw(c, "GET", "/apis")[1]["groups"]}
    assert [v["version"] for v in groups["rbac.authorization.k8s.io"]["versions"]] == ["v1beta1"]


def test_1_13_forbidden_wording():
    """1.13 wording: `cannot get resource "configmaps" in API group "" in the namespace "default"`."""
    srv = APIServer(k8s_version="1.13").start()
    try:
        sa = api_client_for(srv, srv.service_account_token("default", "x"))
        s, body = raw(sa, "GET", "/api/v1/namespaces/default/configmaps/c")
        assert s == 403
        assert body["message"] == (
            'configmaps "c" is forbidden: User "system:serviceaccount:default:x" cannot get '
            'resource "configmaps" in API group "" in the namespace "default"'
        )
    finally:
        srv.stop()


def test_names_with_colons_round_trip(c):
    """RBAC names like system:kube-scheduler are path-escaped by clients (%3A) and must resolve."""
    rbac = RbacV1beta1(c)
    rbac.create_cluster_role({"metadata": {"name": "system:tproxy-reader"}, "rules": []})
    assert rbac.read_cluster_role("system:tproxy-reader")["metadata"]["name"] == "system:tproxy-reader"
    rbac.delete_cluster_role("system:tproxy-reader")
    with pytest.raises(k.ApiException) as e:
        rbac.read_cluster_role("system:tproxy-reader")
    assert e.value.status == 404


def test_1_13_field_selector_name_authorizes_with_resource_names():
    """1.11+ (kubernetes#63469): list/watch with fieldSelector=metadata.name=x is authorized as a request for x;
    in 1.7 (test_watch: legacy path test) the same request is denied."""
    srv = APIServer(k8s_version="1.13").start()
    try:
        c = api_client_for(srv)
        k.CoreV1Api(c).create_namespaced_config_map("default", {"metadata": {"name": "cfg"}})
        bind(
            c,
            "default",
            "cfg",
            [{"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["cfg"], "verbs": ["list", "watch"]}],
            [{"kind": "ServiceAccount", "name": "init", "namespace": "default"}],
        )
        sa = api_client_for(srv, srv.service_account_token("default", "init"))
        s, body = raw(sa, "GET", "/api/v1/namespaces/default/configmaps", query={"fieldSelector": "metadata.name=cfg"})
        assert s == 200 and [i["metadata"]["name"] for i in body["items"]] == ["cfg"]
        assert raw(sa, "GET", "/api/v1/namespaces/default/configmaps")[0] == 403
        assert raw(sa, "GET", "/api/v1/namespaces/default/configmaps", query={"fieldSelector": "metadata.name=x"})[0] == 403
    finally:
        srv.stop()
