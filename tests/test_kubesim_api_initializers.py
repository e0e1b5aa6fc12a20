"""Conformance: the Initializers admission plugin, blocking create, updates and completion.

Driven through the official kubernetes client over HTTPS against kubesim's API server. Section
numbers refer to docs/initializers-1.7.md.
"""

import threading
import time

import pytest

from kubesim.apiserver import APIServer
from kubesim.testing import RbacV1beta1, api_client_for, raw

EXT = "/apis/extensions/v1beta1/namespaces/default/deployments"
APPS = "/apis/apps/v1beta1/namespaces/default/deployments"
CFG = "/apis/admissionregistration.k8s.io/v1alpha1/initializerconfigurations"
INIT = "tproxy.initializer.kubernetes.io"


def deployment(name, **meta):
    return {
        "apiVersion": "extensions/v1beta1",
        "kind": "Deployment",
        "metadata": dict(name=name, **meta),
        "spec": {
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "app", "image": "debian:9"}]}}
        },
    }


def pod(name, **meta):
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": dict(name=name, **meta),
        "spec": {"containers": [{"name": "app", "image": "debian:9"}]},
    }


def add_config(c, name, inits):
    s, body = raw(
        c,
        "POST",
        CFG,
        body={
            "apiVersion": "admissionregistration.k8s.io/v1alpha1",
            "kind": "InitializerConfiguration",
            "metadata": {"name": name},
            "initializers": inits,
        },
    )
    assert s == 201, body


def rule(groups=("*",), versions=("*",), resources=("deployments",)):
    return {"apiGroups": list(groups), "apiVersions": list(versions), "resources": list(resources)}


@pytest.fixture
def srv(kubesim_server):
    return kubesim_server


@pytest.fixture
def srv113(kubesim_server_factory):
    return kubesim_server_factory(k8s_version="1.13")


@pytest.fixture
def c(kube_api_client):
    return kube_api_client


def create_async(c, path, body, query=None):
    """Start a blocking POST in a thread; return (thread, result dict)."""
    res = {}

    def go():
        res["r"] = raw(c, "POST", path, query=query, body=body, timeout=40)

    t = threading.Thread(target=go, daemon=True)
    t.start()
    return t, res


def wait_stored(c, path, name, timeout=5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s, obj = raw(c, "GET", f"{path}/{name}")
        if s == 200:
            return obj
        time.sleep(0.01)
    raise AssertionError(f"{name} never stored")


def grant(srv, c, ns, sa, rules, cluster=False):
    """Give ServiceAccount ns/sa a Role (or ClusterRole) with ``rules``; return its ApiClient."""
    rbac = RbacV1beta1(c)
    name = f"{sa}-role"
    if cluster:
        rbac.create_cluster_role({"metadata": {"name": name}, "rules": rules})
        rbac.create_cluster_role_binding(
            {
                "metadata": {"name": name},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
                "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": ns}],
            }
        )
    else:
        rbac.create_namespaced_role(ns, {"metadata": {"name": name}, "rules": rules})
        rbac.create_namespaced_role_binding(
            ns,
            {
                "metadata": {"name": name},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
                "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": ns}],
            },
        )
    return api_client_for(srv, srv.service_account_token(ns, sa))


# ---- §1a filling pending ----------------------------------------------------------------------


def test_pending_merged_in_config_name_order_with_duplicates(c):
    """§1a: configurations sorted by metadata.name, each one's initializers in order, duplicates kept."""
    add_config(c, "b-config", [{"name": "b.example.com", "rules": [rule()]}, {"name": "dup.example.com", "rules": [rule()]}])
    add_config(
        c,
        "a-config",
        [
            {"name": "a2.example.com", "rules": [rule()]},
            {"name": "dup.example.com", "rules": [rule()]},
            {"name": "a1.example.com", "rules": [rule()]},
        ],
    )
    s, obj = raw(c, "POST", EXT, query={"includeUninitialized": "1"}, body=deployment("order"))
    assert s == 202
    assert obj["metadata"]["initializers"] == {
        "pending": [
            {"name": "a2.example.com"},
            {"name": "dup.example.com"},
            {"name": "a1.example.com"},
            {"name": "b.example.com"},
            {"name": "dup.example.com"},
        ]
    }
    assert "result" not in obj["metadata"]["initializers"]


def test_matching_uses_the_request_group(c):
    """§1a/§7: a rule for apiGroups [apps] matches a Deployment POSTed to apps/v1beta1 only."""
    add_config(c, "apps-only", [{"name": INIT, "rules": [rule(groups=["apps"])]}])
    s, obj = raw(c, "POST", EXT, body=deployment("via-ext"))
    assert s == 201 and "initializers" not in obj["metadata"]
    body = deployment("via-apps")
    body["apiVersion"] = "apps/v1beta1"
    s, obj = raw(c, "POST", APPS, query={"includeUninitialized": "1"}, body=body)
    assert s == 202 and obj["metadata"]["initializers"]["pending"] == [{"name": INIT}]


def test_rules_are_anded_and_empty_rules_match_nothing(c):
    """§6: every rule must match (AND, despite the docs' "any"); no rules matches nothing."""
    add_config(
        c,
        "and",
        [
            {"name": "and.example.com", "rules": [rule(resources=["deployments"]), rule(resources=["pods"])]},
            {"name": "none.example.com", "rules": []},
            {"name": "both.example.com", "rules": [rule(resources=["deployments"]), rule(resources=["*"])]},
        ],
    )
    s, obj = raw(c, "POST", EXT, query={"includeUninitialized": "1"}, body=deployment("anded"))
    assert s == 202
    assert obj["metadata"]["initializers"]["pending"] == [{"name": "both.example.com"}]


def test_subresource_entries_ignored_and_star_matches_all(c):
    """§6: 'a/b' resource entries are skipped by matching; '*' matches every resource."""
    add_config(
        c,
        "wild",
        [
            {"name": "subres.example.com", "rules": [rule(resources=["deployments/status"])]},
            {"name": "star.example.com", "rules": [rule(resources=["*"])]},
        ],
    )
    s, obj = raw(c, "POST", EXT, query={"includeUninitialized": "1"}, body=deployment("wild"))
    assert obj["metadata"]["initializers"]["pending"] == [{"name": "star.example.com"}]


def test_configuration_validation(c):
    """§6: '*' may not be mixed with other values; 1.7 names need at least two dots."""
    s, body = raw(
        c,
        "POST",
        CFG,
        body={"metadata": {"name": "mixed"}, "initializers": [{"name": "a.example.com", "rules": [rule(groups=["apps", "*"])]}]},
    )
    assert s == 422 and "if '*' is present, must not specify other values" in body["message"]
    s, body = raw(
        c, "POST", CFG, body={"metadata": {"name": "short"}, "initializers": [{"name": "example.com", "rules": [rule()]}]}
    )
    assert s == 422 and "should be a domain with at least two dots" in body["message"]
    s, body = raw(
        c,
        "POST",
        CFG,
        body={
            "metadata": {"name": "fp"},
            "initializers": [{"name": "a.example.com", "failurePolicy": "Fail", "rules": [rule()]}],
        },
    )
    assert s == 422 and 'supported values: "Ignore"' in body["message"]
    s, _ = raw(
        c,
        "POST",
        CFG,
        body={
            "metadata": {"name": "fp-ok"},
            "initializers": [{"name": "a.example.com", "failurePolicy": "Ignore", "rules": [rule(resources=["x/y"])]}],
        },
    )
    assert s == 201, "1.7 accepts Ignore and does not reject subresources"


def test_configuration_validation_1_13(srv113):
    """§6: 1.8+ names need three segments and resources may not name subresources."""
    c = api_client_for(srv113)
    s, body = raw(
        c,
        "POST",
        CFG,
        body={
            "metadata": {"name": "sub"},
            "initializers": [{"name": "a.example.com", "rules": [rule(resources=["deployments/status"])]}],
        },
    )
    assert s == 422 and "must not specify subresources" in body["message"]


def test_creator_supplied_initializers_kept_for_admin(c):
    """§1a + e2e 1.7: an admin may create with Pending [{Name: "Test"}]; the list is kept as given."""
    body = pod("with-test", initializers={"pending": [{"name": "Test"}]})
    s, obj = raw(c, "POST", "/api/v1/namespaces/default/pods", query={"includeUninitialized": "1"}, body=body)
    assert s == 202 and obj["metadata"]["initializers"] == {"pending": [{"name": "Test"}]}


def test_empty_initializers_bypass_configuration(c):
    """§1a + e2e 1.7: creating with Initializers{} (or pending: []) stores initializers = nil."""
    add_config(c, "pods", [{"name": INIT, "rules": [rule(resources=["pods"])]}])
    for i, inits in enumerate(({}, {"pending": []})):
        s, obj = raw(c, "POST", "/api/v1/namespaces/default/pods", body=pod(f"bypass-{i}", initializers=inits))
        assert s == 201 and "initializers" not in obj["metadata"]


def test_creator_supplied_initializers_need_initialize_verb(srv, c):
    """§1a: a creator sending metadata.initializers needs `initialize`, else 403 "create with initializers denied"."""
    sa = grant(
        srv, c, "default", "creator", [{"apiGroups": ["extensions"], "resources": ["deployments"], "verbs": ["create", "get"]}]
    )
    s, body = raw(sa, "POST", EXT, body=deployment("bypass", initializers={"pending": []}))
    assert s == 403, body
    assert body["reason"] == "Forbidden"
    # NewForbidden(gr, name, fmt.Errorf("%s: %s", message, reason)) with RBAC's empty denial reason
    assert body["message"] == 'deployments.extensions "bypass" is forbidden: create with initializers denied: '
    assert body["details"] == {"name": "bypass", "group": "extensions", "kind": "deployments"}
    s, _ = raw(sa, "POST", EXT, body=deployment("plain"))
    assert s == 201


def test_mirror_pods_are_exempt(c):
    """§1a: pods with the kubernetes.io/config.mirror annotation are never initialized."""
    add_config(c, "pods", [{"name": INIT, "rules": [rule(resources=["pods"])]}])
    s, obj = raw(
        c, "POST", "/api/v1/namespaces/default/pods", body=pod("mirror", annotations={"kubernetes.io/config.mirror": "x"})
    )
    assert s == 201 and "initializers" not in obj["metadata"]


def test_config_refresh_interval_delays_new_configuration():
    """§1a: the plugin polled configurations every 1 s; with refresh=1.0 a new config takes effect later."""
    srv = APIServer(initializer_config_refresh=1.0).start()
    try:
        c = api_client_for(srv)
        assert raw(c, "POST", EXT, body=deployment("first"))[0] == 201  # loads the (empty) config
        add_config(c, "late", [{"name": INIT, "rules": [rule()]}])
        assert raw(c, "POST", EXT, body=deployment("second"))[0] == 201  # still the cached config
        time.sleep(1.1)
        s, obj = raw(c, "POST", EXT, query={"includeUninitialized": "1"}, body=deployment("third"))
        assert s == 202 and obj["metadata"]["initializers"]["pending"] == [{"name": INIT}]
    finally:
        srv.stop()


# ---- §1b blocking create ----------------------------------------------------------------------


def test_e2e_invisible_to_controllers_by_default(c):
    """§2 + e2e "should be invisible to controllers by default": an uninitialized Deployment is not in a plain
    list (what an informer's relist sees) but is in a list with includeUninitialized=true."""
    add_config(c, "tp", [{"name": INIT, "rules": [rule()]}])
    raw(c, "POST", EXT, query={"includeUninitialized": "1"}, body=deployment("invisible"))
    assert raw(c, "GET", "/apis/extensions/v1beta1/deployments")[1]["items"] == []
    assert raw(c, "GET", "/apis/apps/v1beta1/deployments")[1]["items"] == []
    got = raw(c, "GET", "/apis/extensions/v1beta1/deployments", query={"includeUninitialized": "true"})[1]["items"]
    assert [d["metadata"]["name"] for d in got] == ["invisible"]


def test_blocking_create_returns_201_with_initialized_object(c):
    """§1b/§5: the POST blocks until initializers is null, then answers 201 with the latest object."""
    add_config(c, "tp", [{"name": INIT, "rules": [rule()]}])
    t, res = create_async(c, EXT, deployment("blocked"))
    obj = wait_stored(c, EXT, "blocked")
    assert obj["metadata"]["initializers"]["pending"] == [{"name": INIT}]
    time.sleep(0.1)
    assert t.is_alive(), "create must still be blocked"
    obj["metadata"]["initializers"] = None
    obj["spec"]["template"]["metadata"].setdefault("annotations", {})["injected"] = "yes"
    s, upd = raw(c, "PUT", f"{EXT}/blocked", body=obj)
    assert s == 200
    t.join(5)
    s, created = res["r"]
    assert s == 201
    assert "initializers" not in created["metadata"]
    assert created["spec"]["template"]["metadata"]["annotations"]["injected"] == "yes"
    assert created["metadata"]["resourceVersion"] == upd["metadata"]["resourceVersion"]


def test_blocking_create_fails_with_the_result_status_and_object_is_deleted(c):
    """§1b/§4: result (status Failure) -> POST fails with that Status; object deleted; PUT gets 200 + object."""
    add_config(c, "tp", [{"name": INIT, "rules": [rule()]}])
    t, res = create_async(c, EXT, deployment("fails"))
    obj = wait_stored(c, EXT, "fails")
    obj["metadata"]["initializers"]["result"] = {
        "status": "Failure",
        "code": 403,
        "reason": "Forbidden",
        "message": "volume name conflict: ca-certs",
    }
    s, upd = raw(c, "PUT", f"{EXT}/fails", body=obj)
    assert s == 200 and upd["metadata"]["initializers"]["result"]["code"] == 403
    t.join(5)
    s, status = res["r"]
    assert s == 403
    assert status["message"] == "volume name conflict: ca-certs" and status["reason"] == "Forbidden"
    assert raw(c, "GET", f"{EXT}/fails")[0] == 404


def test_result_without_code_becomes_500(c):
    """§4: a result with code 0 is turned into 500 by ErrorToAPIStatus."""
    add_config(c, "tp", [{"name": INIT, "rules": [rule()]}])
    t, res = create_async(c, EXT, deployment("nocode"))
    obj = wait_stored(c, EXT, "nocode")
    obj["metadata"]["initializers"]["result"] = {"status": "Failure", "message": "broken"}
    assert raw(c, "PUT", f"{EXT}/nocode", body=obj)[0] == 200
    t.join(5)
    assert res["r"][0] == 500 and res["r"][1]["message"] == "broken"


def test_blocking_create_times_out_with_504_and_object_stays(c):
    """§1b + e2e "will be set to nil": ?timeout=1s -> 504 Timeout with the 1.7 message; object stays uninitialized."""
    add_config(c, "tp", [{"name": INIT, "rules": [rule()]}])
    t0 = time.monotonic()
    s, status = raw(c, "POST", EXT, query={"timeout": "1s"}, body=deployment("hangs"))
    assert time.monotonic() - t0 >= 0.9  # it blocked for the timeout it was given
    assert s == 504 and status["reason"] == "Timeout"
    assert status["message"] == "Timeout: request did not complete within allowed duration"
    s, obj = raw(c, "GET", f"{EXT}/hangs")
    assert s == 200 and obj["metadata"]["initializers"]["pending"] == [{"name": INIT}]


def test_1_13_timeout_message(srv113):
    """§1b: 1.13 says "request did not complete within requested timeout 1s"."""
    c = api_client_for(srv113)
    add_config(c, "tp", [{"name": "tproxy.initializer.kubernetes.io", "rules": [rule()]}])
    s, status = raw(c, "POST", EXT, query={"timeout": "1s"}, body=deployment("hangs"))
    assert s == 504
    assert status["message"] == "Timeout: request did not complete within requested timeout 1s"


def test_include_uninitialized_on_post_only_literal_1_in_1_7(c):
    """§1b: in 1.7 only ?includeUninitialized=1 returns 202 at once; =true still blocks."""
    add_config(c, "tp", [{"name": INIT, "rules": [rule()]}])
    s, obj = raw(c, "POST", EXT, query={"includeUninitialized": "1"}, body=deployment("one"))
    assert s == 202 and obj["metadata"]["initializers"]
    s, _ = raw(c, "POST", EXT, query={"includeUninitialized": "true", "timeout": "1s"}, body=deployment("tru"))
    assert s == 504


def test_include_uninitialized_on_post_true_works_in_1_13(srv113):
    """§1b: 1.12-1.13 parse the parameter as a bool: true and 1 both return 202."""
    c = api_client_for(srv113)
    add_config(c, "tp", [{"name": INIT, "rules": [rule()]}])
    for i, v in enumerate(("true", "1")):
        s, obj = raw(c, "POST", EXT, query={"includeUninitialized": v}, body=deployment(f"d{i}"))
        assert s == 202


def test_delete_while_waiting_is_500(c):
    """§1b: DELETED without a result while the create waits -> 500 "object deleted while waiting for creation"."""
    add_config(c, "tp", [{"name": INIT, "rules": [rule()]}])
    t, res = create_async(c, EXT, deployment("deleted"))
    wait_stored(c, EXT, "deleted")
    assert raw(c, "DELETE", f"{EXT}/deleted")[0] == 200
    t.join(5)
    s, status = res["r"]
    assert s == 500 and "object deleted while waiting for creation" in status["message"]


# ---- §3 updates to uninitialized objects ------------------------------------------------------


def test_update_of_uninitialized_object_needs_initialize(srv, c):
    """§3: update+patch without `initialize` -> 403 "update to uninitialized resource denied"; with it -> OK."""
    add_config(c, "tp", [{"name": INIT, "rules": [rule()]}])
    raw(c, "POST", EXT, query={"includeUninitialized": "1"}, body=deployment("guarded"))
    weak = grant(
        srv,
        c,
        "default",
        "weak",
        [{"apiGroups": ["extensions"], "resources": ["deployments"], "verbs": ["get", "update", "patch"]}],
    )
    s, obj = raw(weak, "GET", f"{EXT}/guarded")
    assert s == 200
    obj["metadata"]["labels"] = {"touched": "1"}
    s, body = raw(weak, "PUT", f"{EXT}/guarded", body=obj)
    assert s == 403 and body["reason"] == "Forbidden"
    assert body["message"] == 'deployments.extensions "guarded" is forbidden: update to uninitialized resource denied: '
    s, body = raw(
        weak, "PATCH", f"{EXT}/guarded", body={"metadata": {"initializers": None}}, content_type="application/merge-patch+json"
    )
    assert s == 403
    strong = grant(
        srv,
        c,
        "default",
        "strong",
        [{"apiGroups": ["extensions"], "resources": ["deployments"], "verbs": ["get", "update", "patch", "initialize"]}],
    )
    s, body = raw(
        strong, "PATCH", f"{EXT}/guarded", body={"metadata": {"initializers": None}}, content_type="application/merge-patch+json"
    )
    assert s == 200 and "initializers" not in body["metadata"]
    # initialized now: `initialize` is no longer needed
    obj = raw(weak, "GET", f"{EXT}/guarded")[1]
    obj["metadata"]["labels"] = {"touched": "2"}
    assert raw(weak, "PUT", f"{EXT}/guarded", body=obj)[0] == 200


def test_server_does_not_enforce_removing_only_the_first_entry(c):
    """§3: with `initialize`, removing a non-first entry, reordering or adding entries all succeed."""
    add_config(c, "tp", [{"name": "a.example.com", "rules": [rule()]}, {"name": "b.example.com", "rules": [rule()]}])
    s, obj = raw(c, "POST", EXT, query={"includeUninitialized": "1"}, body=deployment("free"))
    obj["metadata"]["initializers"]["pending"] = [{"name": "a.example.com"}, {"name": "c.example.com"}]
    s, obj = raw(c, "PUT", f"{EXT}/free", body=obj)
    assert s == 200 and obj["metadata"]["initializers"]["pending"] == [{"name": "a.example.com"}, {"name": "c.example.com"}]
    obj["metadata"]["initializers"]["pending"].reverse()
    s, obj = raw(c, "PUT", f"{EXT}/free", body=obj)
    assert s == 200 and obj["metadata"]["initializers"]["pending"][0] == {"name": "c.example.com"}


def test_readding_initializers_is_immutable(c):
    """§3 + e2e 1.7: re-adding initializers to an initialized object -> 422 ... "immutable"."""
    s, obj = raw(c, "POST", EXT, body=deployment("done"))
    obj["metadata"]["initializers"] = {"pending": [{"name": INIT}]}
    s, body = raw(c, "PUT", f"{EXT}/done", body=obj)
    assert s == 422 and body["reason"] == "Invalid"
    assert body["message"] == (
        'Deployment.extensions "done" is invalid: metadata.initializers: Invalid value: '
        '"null": field is immutable once initialization has completed'
    )


def test_result_status_must_be_failure(c):
    """§3/§4: result.status other than Failure -> 422 "must be 'Failure'"."""
    add_config(c, "tp", [{"name": INIT, "rules": [rule()]}])
    s, obj = raw(c, "POST", EXT, query={"includeUninitialized": "1"}, body=deployment("res"))
    obj["metadata"]["initializers"]["result"] = {"status": "Success"}
    s, body = raw(c, "PUT", f"{EXT}/res", body=obj)
    assert s == 422 and "metadata.initializers.result.status" in body["message"]
    assert "must be 'Failure'" in body["message"]
    assert raw(c, "GET", f"{EXT}/res")[0] == 200


def test_empty_pending_on_update_is_422_in_1_7(c):
    """§3/§5: in 1.7 `pending: []` without result on update -> 422 "must be non-empty when result is not set"."""
    add_config(c, "tp", [{"name": INIT, "rules": [rule()]}])
    s, obj = raw(c, "POST", EXT, query={"includeUninitialized": "1"}, body=deployment("empty"))
    obj["metadata"]["initializers"]["pending"] = []
    s, body = raw(c, "PUT", f"{EXT}/empty", body=obj)
    assert s == 422
    assert body["message"] == (
        'Deployment.extensions "empty" is invalid: metadata.initializers.pending: '
        'Invalid value: "null": must be non-empty when result is not set'
    )


def test_empty_pending_on_update_completes_in_1_13(srv113):
    """§5: 1.9+ (#52558) sets initializers to nil when an update leaves pending and result empty."""
    c = api_client_for(srv113)
    add_config(c, "tp", [{"name": INIT, "rules": [rule()]}])
    s, obj = raw(c, "POST", EXT, query={"includeUninitialized": "1"}, body=deployment("empty"))
    obj["metadata"]["initializers"]["pending"] = []
    s, body = raw(c, "PUT", f"{EXT}/empty", body=obj)
    assert s == 200 and "initializers" not in body["metadata"]


def test_uninitialized_pod_spec_is_immutable_in_1_7(c):
    """§3 "Pods in 1.7": spec changes of an uninitialized pod are refused (only images may change)."""
    add_config(c, "pods", [{"name": INIT, "rules": [rule(resources=["pods"])]}])
    s, obj = raw(c, "POST", "/api/v1/namespaces/default/pods", query={"includeUninitialized": "1"}, body=pod("p"))
    obj["spec"]["containers"].append({"name": "sidecar", "image": "x"})
    s, body = raw(c, "PUT", "/api/v1/namespaces/default/pods/p", body=obj)
    assert s == 422 and "pod updates may not change fields" in body["message"]
    obj["spec"]["containers"].pop()
    obj["spec"]["containers"][0]["image"] = "debian:10"
    obj["metadata"]["initializers"] = None
    assert raw(c, "PUT", "/api/v1/namespaces/default/pods/p", body=obj)[0] == 200


def test_status_subresource_skips_the_plugin(srv, c):
    """§3: subresource requests (/status) skip the initialize check."""
    add_config(c, "pods", [{"name": INIT, "rules": [rule(resources=["pods"])]}])
    s, obj = raw(c, "POST", "/api/v1/namespaces/default/pods", query={"includeUninitialized": "1"}, body=pod("st"))
    kubelet = grant(srv, c, "default", "kubelet", [{"apiGroups": [""], "resources": ["pods/status"], "verbs": ["update"]}])
    obj["status"] = {"phase": "Running"}
    s, body = raw(kubelet, "PUT", "/api/v1/namespaces/default/pods/st/status", body=obj)
    assert s == 200 and body["status"]["phase"] == "Running"
    assert body["metadata"]["initializers"]["pending"] == [{"name": INIT}]


# ---- §5 completion and patch semantics --------------------------------------------------------


def test_strategic_patch_of_pending_replaces_the_list_in_1_7(c):
    """§5: 1.7 `pending` has no merge key: a strategic patch's list replaces the whole list."""
    add_config(c, "tp", [{"name": "a.example.com", "rules": [rule()]}, {"name": "b.example.com", "rules": [rule()]}])
    raw(c, "POST", EXT, query={"includeUninitialized": "1"}, body=deployment("smp"))
    s, obj = raw(
        c,
        "PATCH",
        f"{EXT}/smp",
        body={"metadata": {"initializers": {"pending": [{"name": "b.example.com"}]}}},
        content_type="application/strategic-merge-patch+json",
    )
    assert s == 200 and obj["metadata"]["initializers"]["pending"] == [{"name": "b.example.com"}]


def test_strategic_patch_of_pending_merges_by_name_in_1_13(srv113):
    """§5: 1.8+ merge `pending` by name; `$patch: delete` removes one; removing the last -> null."""
    c = api_client_for(srv113)
    add_config(c, "tp", [{"name": "a.example.com", "rules": [rule()]}, {"name": "b.example.com", "rules": [rule()]}])
    raw(c, "POST", EXT, query={"includeUninitialized": "1"}, body=deployment("smp"))
    s, obj = raw(
        c,
        "PATCH",
        f"{EXT}/smp",
        body={"metadata": {"initializers": {"pending": [{"name": "b.example.com"}]}}},
        content_type="application/strategic-merge-patch+json",
    )
    assert s == 200 and obj["metadata"]["initializers"]["pending"] == [{"name": "a.example.com"}, {"name": "b.example.com"}]
    for n in ("a.example.com", "b.example.com"):
        s, obj = raw(
            c,
            "PATCH",
            f"{EXT}/smp",
            body={"metadata": {"initializers": {"pending": [{"$patch": "delete", "name": n}]}}},
            content_type="application/strategic-merge-patch+json",
        )
        assert s == 200
    assert "initializers" not in obj["metadata"]


def test_one_strategic_patch_injects_and_completes(c):
    """§5: like both tutorials, one strategic merge PATCH appends containers/volumes and clears initializers."""
    add_config(c, "tp", [{"name": INIT, "rules": [rule()]}])
    t, res = create_async(c, EXT, deployment("inject"))
    wait_stored(c, EXT, "inject")
    p = {
        "metadata": {"initializers": None},
        "spec": {
            "template": {
                "spec": {
                    "initContainers": [{"name": "tproxy", "image": "tproxy-sidecar"}],
                    "containers": [{"name": "app", "volumeMounts": [{"name": "ca", "mountPath": "/etc/ssl/certs"}]}],
                    "volumes": [{"name": "ca", "configMap": {"name": "ca"}}],
                }
            }
        },
    }
    s, obj = raw(c, "PATCH", f"{EXT}/inject", body=p, content_type="application/strategic-merge-patch+json")
    assert s == 200
    t.join(5)
    s, created = res["r"]
    assert s == 201
    spec = created["spec"]["template"]["spec"]
    assert [x["name"] for x in spec["containers"]] == ["app"] and spec["containers"][0]["image"] == "debian:9"
    assert spec["containers"][0]["volumeMounts"] == [{"name": "ca", "mountPath": "/etc/ssl/certs"}]
    assert spec["initContainers"][0]["name"] == "tproxy"
    assert spec["volumes"][0]["configMap"] == {"name": "ca", "defaultMode": 420}


# ---- §5/§7 init-container annotation mirroring (1.7 only) -------------------------------------


def test_init_containers_mirrored_into_annotations_in_1_7(c):
    """§5 last bullet/§7: 1.7 mirrors spec.template.spec.initContainers into the beta and alpha annotations."""
    d = deployment("mirror")
    d["spec"]["template"]["spec"]["initContainers"] = [{"name": "first", "image": "busybox"}]
    s, obj = raw(c, "POST", EXT, body=d)
    ann = obj["spec"]["template"]["metadata"]["annotations"]
    assert '"name":"first"' in ann["pod.beta.kubernetes.io/init-containers"]
    assert ann["pod.alpha.kubernetes.io/init-containers"] == ann["pod.beta.kubernetes.io/init-containers"]


def test_annotation_overrides_appended_init_container_in_1_7(c):
    """§5 [I] trap: PUT that appends to initContainers but keeps the old annotation loses the new container."""
    d = deployment("trap")
    d["spec"]["template"]["spec"]["initContainers"] = [{"name": "first", "image": "busybox"}]
    s, obj = raw(c, "POST", EXT, body=d)
    obj["spec"]["template"]["spec"]["initContainers"].append({"name": "tproxy", "image": "sidecar"})
    s, obj = raw(c, "PUT", f"{EXT}/trap", body=obj)
    assert s == 200
    assert [x["name"] for x in obj["spec"]["template"]["spec"]["initContainers"]] == ["first"]
    # Dropping the annotations makes the field authoritative again.
    obj["spec"]["template"]["spec"]["initContainers"].append({"name": "tproxy", "image": "sidecar"})
    del obj["spec"]["template"]["metadata"]["annotations"]
    s, obj = raw(c, "PUT", f"{EXT}/trap", body=obj)
    assert [x["name"] for x in obj["spec"]["template"]["spec"]["initContainers"]] == ["first", "tproxy"]


def test_no_annotation_mirroring_in_1_13(srv113):
    """§8: 1.8+ dropped the init-container annotations."""
    c = api_client_for(srv113)
    d = deployment("nomirror")
    d["spec"]["template"]["spec"]["initContainers"] = [{"name": "first", "image": "busybox"}]
    s, obj = raw(c, "POST", EXT, body=d)
    assert "annotations" not in obj["spec"]["template"]["metadata"]


# ---- §7 one storage, two views ---------------------------------------------------------------


def test_deployment_defaults_per_group(c):
    """§7: apps/v1beta1 defaults 25%/25%, revisionHistoryLimit 2, progressDeadline 600; extensions 1/1, none."""
    body = deployment("apps-d")
    body["apiVersion"] = "apps/v1beta1"
    s, a = raw(c, "POST", APPS, body=body)
    assert s == 201
    assert a["spec"]["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}}
    assert a["spec"]["revisionHistoryLimit"] == 2 and a["spec"]["progressDeadlineSeconds"] == 600
    assert a["spec"]["selector"] == {"matchLabels": {"app": "apps-d"}} and a["spec"]["replicas"] == 1
    s, e = raw(c, "POST", EXT, body=deployment("ext-d"))
    assert e["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": 1, "maxSurge": 1}
    assert "revisionHistoryLimit" not in e["spec"] and "progressDeadlineSeconds" not in e["spec"]
    # one storage: the extensions Deployment is readable through apps/v1beta1
    s, via_apps = raw(c, "GET", f"{APPS}/ext-d")
    assert s == 200 and via_apps["apiVersion"] == "apps/v1beta1" and via_apps["kind"] == "Deployment"
    assert via_apps["metadata"]["uid"] == e["metadata"]["uid"]


def test_generation_bumps_on_spec_change_only(c):
    """metadata.generation starts at 1 and increases only when the spec changes."""
    s, d = raw(c, "POST", EXT, body=deployment("gen"))
    assert d["metadata"]["generation"] == 1
    d["metadata"]["labels"] = {"x": "y"}
    s, d = raw(c, "PUT", f"{EXT}/gen", body=d)
    assert d["metadata"]["generation"] == 1
    d["spec"]["replicas"] = 3
    s, d = raw(c, "PUT", f"{EXT}/gen", body=d)
    assert d["metadata"]["generation"] == 2


def test_many_concurrent_blocking_creates_all_complete(c, srv):
    """§1b at scale: 200 creates block at once (each on its own waiter); an initializer completing them in
    arbitrary order releases each with 201 and its own object (no cross-talk, nothing lost)."""
    import concurrent.futures

    add_config(c, "tp", [{"name": INIT, "rules": [rule()]}])
    n = 200
    stop = threading.Event()

    def initializer():
        ic = api_client_for(srv)
        done = set()
        while not stop.is_set() and len(done) < n:
            items = raw(ic, "GET", EXT, query={"includeUninitialized": "true"})[1]["items"]
            for d in reversed(items):  # reverse order on purpose
                name = d["metadata"]["name"]
                if d["metadata"].get("initializers") and name not in done:
                    s, _ = raw(
                        ic,
                        "PATCH",
                        f"{EXT}/{name}",
                        content_type="application/merge-patch+json",
                        body={"metadata": {"initializers": None, "annotations": {"for": name}}},
                    )
                    if s == 200:
                        done.add(name)
            time.sleep(0.02)

    t = threading.Thread(target=initializer, daemon=True)
    t.start()
    clients = [api_client_for(srv) for _ in range(50)]
    with concurrent.futures.ThreadPoolExecutor(n) as ex:
        results = list(ex.map(lambda i: raw(clients[i % 50], "POST", EXT, body=deployment(f"burst-{i}"), timeout=60), range(n)))
    stop.set()
    assert [s for s, _ in results] == [201] * n
    assert all(body["metadata"]["annotations"]["for"] == f"burst-{i}" for i, (_, body) in enumerate(results))
