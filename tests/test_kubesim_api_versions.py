"""What each Kubernetes version serves (issue 24): discovery derived from and checked against the
OpenAPI schemas bundled by kubernetes-validate, one storage per kind seen through every
group/version with each version's defaults and conversions, the scale/status subresources, the
access reviews, and error bodies exactly as metav1.Status is written by a 1.13 server."""

import glob
import json
import os
import subprocess
import warnings

import pytest

from kubesim.apiserver import APIServer
from kubesim.testing import api_client_for, raw, watch_events

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import kubernetes_validate

SCHEMAS = os.path.join(os.path.dirname(kubernetes_validate.__file__), "kubernetes-json-schema")
KUBECTL = os.path.join(os.path.dirname(__file__), "..", ".tools", "bin", "kubectl")


def schema_gvks(version: str) -> set:
    """(group, version, kind) of every top-level kind in the OpenAPI definitions of ``version``."""
    path = glob.glob(os.path.join(SCHEMAS, f"v{version}-local-strict", "_definitions.json"))[0]
    out = set()
    for d in json.load(open(path))["definitions"].values():
        for g in d.get("x-kubernetes-group-version-kind") or []:
            out.add((g["group"], g["version"], g["kind"]))
    return out


@pytest.fixture(scope="module")
def srv13():
    s = APIServer(k8s_version="1.13").start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def c13(srv13):
    return api_client_for(srv13)


def discovered(c) -> dict:
    """(group, version) -> {resource name: APIResource} for everything discovery offers."""
    out = {("", "v1"): {r["name"]: r for r in raw(c, "GET", "/api/v1")[1]["resources"]}}
    for g in raw(c, "GET", "/apis")[1]["groups"]:
        for v in g["versions"]:
            doc = raw(c, "GET", f"/apis/{v['groupVersion']}")[1]
            assert doc["groupVersion"] == v["groupVersion"]
            out[(g["name"], v["version"])] = {r["name"]: r for r in doc["resources"]}
    return out


# ---- discovery --------------------------------------------------------------------------------


def test_1_13_groups_versions_and_preferred_versions(c13):
    groups = raw(c13, "GET", "/apis")[1]["groups"]
    got = [(g["name"], [v["version"] for v in g["versions"]], g["preferredVersion"]["version"]) for g in groups]
    assert got == [  # the aggregator's group priorities, versions by version priority
        ("extensions", ["v1beta1"], "v1beta1"),
        ("apps", ["v1", "v1beta2", "v1beta1"], "v1"),
        ("authorization.k8s.io", ["v1", "v1beta1"], "v1"),
        ("batch", ["v1"], "v1"),
        ("policy", ["v1beta1"], "v1beta1"),
        ("rbac.authorization.k8s.io", ["v1", "v1beta1"], "v1"),
        ("admissionregistration.k8s.io", ["v1beta1", "v1alpha1"], "v1beta1"),
        ("coordination.k8s.io", ["v1beta1"], "v1beta1"),  # leases (1.13: v1beta1)
    ]


def test_1_13_every_served_kind_is_in_the_1_13_schemas_and_every_version_of_it_is_served(c13):
    """Derived from the OpenAPI schemas: each kind discovery offers (and each subresource's kind) exists
    in that group/version of 1.13, and each kind kubesim implements is served in every group/version
    of 1.13 that has it (alpha versions other than the Initializers' v1alpha1 are off by default)."""
    gvks = schema_gvks("1.13.0")
    disc = discovered(c13)
    kinds = set()
    for (g, v), res in disc.items():
        for name, r in res.items():
            gvk = (r.get("group", g), r.get("version", v), r["kind"])
            assert gvk in gvks, f"{g}/{v} {name}: {gvk} is not a 1.13 kind"
            if "/" not in name:
                kinds.add(r["kind"])
                assert (g, v, r["kind"] + "List") in gvks or "create" == "".join(r["verbs"])
    for g, v, kind in gvks:
        if kind in kinds and (v.find("alpha") < 0 or g == "admissionregistration.k8s.io") and not (g == "events.k8s.io"):
            assert any(r["kind"] == kind and "/" not in n for n, r in disc.get((g, v), {}).items()), (
                f"1.13 serves {kind} in {g or 'core'}/{v}; kubesim does not"
            )
    assert {
        "Pod",
        "Service",
        "ConfigMap",
        "Secret",
        "ServiceAccount",
        "Namespace",
        "Node",
        "Event",
        "ReplicationController",
        "Deployment",
        "DaemonSet",
        "StatefulSet",
        "ReplicaSet",
        "Job",
        "InitializerConfiguration",
        "MutatingWebhookConfiguration",
        "ValidatingWebhookConfiguration",
        "PodDisruptionBudget",
        "PodSecurityPolicy",
        "SelfSubjectAccessReview",
        "Role",
        "ClusterRoleBinding",
    } <= kinds


def test_the_schema_catalog_is_generated_from_the_bundled_schemas():
    """kubesim/apiserver/schema_catalog.py (which group/versions serve each kind in 1.13) is what
    scripts/gen_api_catalog.py derives from kubernetes-validate's 1.13.0 definitions today."""
    script = os.path.join(os.path.dirname(__file__), "..", "scripts", "gen_api_catalog.py")
    import sys

    assert subprocess.run([sys.executable, script, "--check"]).returncode == 0, (
        "schema_catalog.py is stale: run python scripts/gen_api_catalog.py"
    )


def test_1_13_resource_entries_are_the_real_ones(c13):
    disc = discovered(c13)
    apps = disc[("apps", "v1")]
    assert list(apps["deployments"].items()) == [
        ("name", "deployments"),
        ("singularName", ""),
        ("namespaced", True),
        ("kind", "Deployment"),
        ("verbs", ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]),
        ("shortNames", ["deploy"]),
        ("categories", ["all"]),
    ]
    assert apps["deployments/scale"] == {
        "name": "deployments/scale",
        "singularName": "",
        "namespaced": True,
        "group": "autoscaling",
        "version": "v1",
        "kind": "Scale",
        "verbs": ["get", "patch", "update"],
    }
    assert apps["deployments/status"]["verbs"] == ["get", "patch", "update"]
    names = [r for r in raw(c13, "GET", "/apis/apps/v1")[1]["resources"]]
    assert [r["name"] for r in names] == sorted(r["name"] for r in names)
    ext = disc[("extensions", "v1beta1")]
    # `kubectl get all` lists each workload once: only apps/v1 carries the category
    assert "categories" not in ext["deployments"] and "categories" not in disc[("apps", "v1beta2")]["deployments"]
    assert ext["deployments/scale"]["kind"] == "Scale" and "group" not in ext["deployments/scale"]
    assert ext["deployments/rollback"]["kind"] == "DeploymentRollback"
    assert disc[("apps", "v1beta1")]["deployments/scale"].get("group") is None
    core = disc[("", "v1")]
    assert core["pods"]["categories"] == ["all"] and core["pods"]["shortNames"] == ["po"]
    assert "deletecollection" not in core["services"]["verbs"] and "deletecollection" not in core["namespaces"]["verbs"]
    assert core["replicationcontrollers/scale"]["group"] == "autoscaling"
    assert core["pods/binding"]["kind"] == "Binding" and core["pods/binding"]["verbs"] == ["create"]
    az = disc[("authorization.k8s.io", "v1")]
    assert az["selfsubjectaccessreviews"]["verbs"] == ["create"]
    assert az["localsubjectaccessreviews"]["namespaced"] is True
    assert disc[("policy", "v1beta1")]["poddisruptionbudgets"]["shortNames"] == ["pdb"]
    assert disc[("admissionregistration.k8s.io", "v1beta1")]["mutatingwebhookconfigurations"]["namespaced"] is False


def test_1_7_serves_the_1_7_groups(kube_api_client_module):
    c = kube_api_client_module
    groups = {g["name"]: [v["version"] for v in g["versions"]] for g in raw(c, "GET", "/apis")[1]["groups"]}
    assert groups == {
        "extensions": ["v1beta1"],
        "apps": ["v1beta1"],
        "authorization.k8s.io": ["v1", "v1beta1"],
        "batch": ["v1"],
        "policy": ["v1beta1"],
        "rbac.authorization.k8s.io": ["v1beta1"],
        "admissionregistration.k8s.io": ["v1alpha1"],
    }
    disc = discovered(c)
    assert set(disc[("apps", "v1beta1")]) == {
        "deployments",
        "deployments/rollback",
        "deployments/scale",
        "deployments/status",
        "statefulsets",
        "statefulsets/scale",
        "statefulsets/status",
    }
    assert "selfsubjectrulesreviews" not in disc[("authorization.k8s.io", "v1")]  # 1.8+
    # 1.7's kinds are a subset of 1.8's (the oldest schemas bundled)
    gvks = schema_gvks("1.8.0")
    for (g, v), res in disc.items():
        for name, r in res.items():
            assert (r.get("group", g), r.get("version", v), r["kind"]) in gvks, (g, v, name)
    assert raw(c, "GET", "/apis/apps/v1/namespaces/default/deployments")[0] == 404


# ---- one storage, per-version defaults and conversions ------------------------------------------

TEMPLATE = {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "nginx:1.15"}]}}


def test_apps_v1_requires_a_selector_with_the_real_message(c13):
    s, body = raw(
        c13,
        "POST",
        "/apis/apps/v1/namespaces/default/deployments",
        body={"metadata": {"name": "nosel"}, "spec": {"template": TEMPLATE}},
    )
    assert s == 422
    assert body == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": 'Deployment.apps "nosel" is invalid: [spec.selector: Required value, '
        'spec.template.metadata.labels: Invalid value: map[string]string{"app":"web"}: '
        "`selector` does not match template `labels`]",
        "reason": "Invalid",
        "details": {
            "name": "nosel",
            "group": "apps",
            "kind": "Deployment",
            "causes": [
                {"reason": "FieldValueRequired", "message": "Required value", "field": "spec.selector"},
                {
                    "reason": "FieldValueInvalid",
                    "message": 'Invalid value: map[string]string{"app":"web"}: `selector` does not match template `labels`',
                    "field": "spec.template.metadata.labels",
                },
            ],
        },
        "code": 422,
    }
    assert list(body) == ["kind", "apiVersion", "metadata", "status", "message", "reason", "details", "code"]
    # the same manifest through extensions/v1beta1 gets its selector (and labels) from the template
    s, ext = raw(
        c13,
        "POST",
        "/apis/extensions/v1beta1/namespaces/default/deployments",
        body={"metadata": {"name": "nosel"}, "spec": {"template": TEMPLATE}},
    )
    assert s == 201 and ext["spec"]["selector"] == {"matchLabels": {"app": "web"}}
    assert ext["metadata"]["labels"] == {"app": "web"}


def test_one_deployment_seen_through_every_version_with_its_defaults(c13):
    body = {"metadata": {"name": "web"}, "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": TEMPLATE}}
    s, v1 = raw(c13, "POST", "/apis/apps/v1/namespaces/default/deployments", body=body)
    assert s == 201 and v1["apiVersion"] == "apps/v1"
    assert "labels" not in v1["metadata"]  # apps/v1 does not default labels from the template
    assert (v1["spec"]["revisionHistoryLimit"], v1["spec"]["progressDeadlineSeconds"]) == (10, 600)
    assert v1["spec"]["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}}
    assert v1["status"] == {}
    for gv in ("apps/v1beta2", "apps/v1beta1", "extensions/v1beta1"):
        s, o = raw(c13, "GET", f"/apis/{gv}/namespaces/default/deployments/web")
        assert s == 200 and o["apiVersion"] == gv and o["metadata"]["uid"] == v1["metadata"]["uid"]
        assert o["metadata"]["selfLink"] == f"/apis/{gv}/namespaces/default/deployments/web"
    # extensions/v1beta1 in 1.9+ defaults history and deadline to MaxInt32 (= unset)
    s, ext = raw(
        c13,
        "POST",
        "/apis/extensions/v1beta1/namespaces/default/deployments",
        body={"metadata": {"name": "ext"}, "spec": {"template": TEMPLATE}},
    )
    assert (ext["spec"]["revisionHistoryLimit"], ext["spec"]["progressDeadlineSeconds"]) == (2147483647, 2147483647)
    assert ext["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": 1, "maxSurge": 1}
    s, seen = raw(c13, "GET", "/apis/apps/v1/namespaces/default/deployments/ext")
    assert seen["spec"]["revisionHistoryLimit"] == 2147483647
    names = {i["metadata"]["name"] for i in raw(c13, "GET", "/apis/apps/v1/namespaces/default/deployments")[1]["items"]}
    assert {"web", "ext"} <= names


def test_selector_is_immutable_through_apps_v1_only(c13):
    body = {"metadata": {"name": "imm"}, "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": TEMPLATE}}
    raw(c13, "POST", "/apis/apps/v1/namespaces/default/deployments", body=body)
    tmpl = {"metadata": {"labels": {"app": "web", "x": "y"}}, "spec": TEMPLATE["spec"]}
    patch = {"spec": {"selector": {"matchLabels": {"app": "web", "x": "y"}}, "template": tmpl}}
    s, body = raw(
        c13, "PATCH", "/apis/apps/v1/namespaces/default/deployments/imm", body=patch, content_type="application/merge-patch+json"
    )
    assert s == 422
    assert body["message"] == (
        'Deployment.apps "imm" is invalid: spec.selector: Invalid value: '
        'v1.LabelSelector{MatchLabels:map[string]string{"app":"web", "x":"y"}, '
        "MatchExpressions:[]v1.LabelSelectorRequirement(nil)}: field is immutable"
    )
    s, _ = raw(
        c13,
        "PATCH",
        "/apis/extensions/v1beta1/namespaces/default/deployments/imm",
        body=patch,
        content_type="application/merge-patch+json",
    )
    assert s == 200


def test_daemonset_template_generation_is_an_annotation_in_apps_v1(c13):
    body = {"metadata": {"name": "agent"}, "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": TEMPLATE}}
    s, v1 = raw(c13, "POST", "/apis/apps/v1/namespaces/default/daemonsets", body=body)
    assert s == 201
    assert v1["metadata"]["annotations"] == {"deprecated.daemonset.template.generation": "1"}
    assert "templateGeneration" not in v1["spec"]
    assert v1["spec"]["updateStrategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}}
    assert v1["status"] == {"currentNumberScheduled": 0, "numberMisscheduled": 0, "desiredNumberScheduled": 0, "numberReady": 0}
    s, ext = raw(c13, "GET", "/apis/extensions/v1beta1/namespaces/default/daemonsets/agent")
    assert ext["spec"]["templateGeneration"] == 1 and "annotations" not in ext["metadata"]
    # a template change through apps/v1 bumps the generation kept in the annotation
    v1["spec"]["template"]["metadata"]["labels"]["v"] = "2"
    s, upd = raw(c13, "PUT", "/apis/apps/v1/namespaces/default/daemonsets/agent", body=v1)
    assert s == 200 and upd["metadata"]["annotations"]["deprecated.daemonset.template.generation"] == "2"
    # extensions/v1beta1 still defaults OnDelete
    s, e2 = raw(
        c13,
        "POST",
        "/apis/extensions/v1beta1/namespaces/default/daemonsets",
        body={"metadata": {"name": "agent2"}, "spec": {"template": TEMPLATE}},
    )
    assert e2["spec"]["updateStrategy"] == {"type": "OnDelete"}


def test_replicasets_statefulsets_jobs_are_stored_with_their_status(c13):
    sel = {"matchLabels": {"app": "web"}}
    s, rs = raw(
        c13,
        "POST",
        "/apis/apps/v1/namespaces/default/replicasets",
        body={"metadata": {"name": "rs"}, "spec": {"selector": sel, "template": TEMPLATE}},
    )
    assert s == 201 and rs["status"] == {"replicas": 0} and rs["spec"]["replicas"] == 1
    s, sts = raw(
        c13,
        "POST",
        "/apis/apps/v1/namespaces/default/statefulsets",
        body={"metadata": {"name": "db"}, "spec": {"serviceName": "db", "selector": sel, "template": TEMPLATE}},
    )
    assert s == 201 and sts["spec"]["updateStrategy"] == {"type": "RollingUpdate", "rollingUpdate": {"partition": 0}}
    assert sts["spec"]["podManagementPolicy"] == "OrderedReady" and sts["status"] == {"replicas": 0}
    job_tmpl = {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]}}
    s, job = raw(
        c13, "POST", "/apis/batch/v1/namespaces/default/jobs", body={"metadata": {"name": "once"}, "spec": {"template": job_tmpl}}
    )
    assert s == 201, job
    uid = job["metadata"]["uid"]
    assert job["spec"]["selector"] == {"matchLabels": {"controller-uid": uid}}
    assert job["spec"]["template"]["metadata"]["labels"] == {"controller-uid": uid, "job-name": "once"}
    assert job["metadata"]["labels"] == {"controller-uid": uid, "job-name": "once"}
    assert (job["spec"]["completions"], job["spec"]["parallelism"], job["spec"]["backoffLimit"]) == (1, 1, 6)
    assert job["status"] == {}
    s, svc = raw(
        c13, "POST", "/api/v1/namespaces/default/services", body={"metadata": {"name": "web"}, "spec": {"ports": [{"port": 80}]}}
    )
    assert s == 201 and svc["status"] == {"loadBalancer": {}}


def test_an_apps_v1_deployment_is_initialized_through_the_version_the_initializer_watches(srv13, c13):
    """The plugin matches the request's resource (rules `*`); the initializer watches apps/v1beta1
    and sees the same object; removing itself there completes the apps/v1 create."""
    import threading

    raw(
        c13,
        "POST",
        "/apis/admissionregistration.k8s.io/v1alpha1/initializerconfigurations",
        body={
            "metadata": {"name": "tp"},
            "initializers": [
                {
                    "name": "tproxy.initializer.kubernetes.io",
                    "rules": [{"apiGroups": ["*"], "apiVersions": ["*"], "resources": ["deployments"]}],
                }
            ],
        },
    )
    try:
        result = {}
        body = {
            "metadata": {"name": "held", "namespace": "default"},
            "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": TEMPLATE},
        }
        t = threading.Thread(
            target=lambda: result.update(
                r=raw(api_client_for(srv13), "POST", "/apis/apps/v1/namespaces/default/deployments", body=body, timeout=20)
            )
        )
        t.start()
        events = list(
            watch_events(
                c13,
                "/apis/apps/v1beta1/deployments",
                {"includeUninitialized": "true", "fieldSelector": "metadata.name=held"},
                timeout=10,
                max_events=1,
            )
        )
        assert events[0]["object"]["metadata"]["initializers"]["pending"] == [{"name": "tproxy.initializer.kubernetes.io"}]
        assert events[0]["object"]["apiVersion"] == "apps/v1beta1"
        s, _ = raw(
            c13,
            "PATCH",
            "/apis/apps/v1beta1/namespaces/default/deployments/held",
            body={"metadata": {"initializers": {"pending": [{"$patch": "delete", "name": "tproxy.initializer.kubernetes.io"}]}}},
            content_type="application/strategic-merge-patch+json",
        )
        assert s == 200
        t.join(20)
        s, created = result["r"]
        assert s == 201 and created["apiVersion"] == "apps/v1" and "initializers" not in created["metadata"]
    finally:
        raw(c13, "DELETE", "/apis/admissionregistration.k8s.io/v1alpha1/initializerconfigurations/tp")


# ---- subresources -------------------------------------------------------------------------------


def test_scale_subresource_in_each_version(c13):
    body = {
        "metadata": {"name": "sc"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}}, "template": TEMPLATE},
    }
    s, d = raw(c13, "POST", "/apis/apps/v1/namespaces/default/deployments", body=body)
    s, sc = raw(c13, "GET", "/apis/apps/v1/namespaces/default/deployments/sc/scale")
    assert s == 200
    assert sc == {
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": "sc",
            "namespace": "default",
            "selfLink": "/apis/apps/v1/namespaces/default/deployments/sc/scale",
            "uid": d["metadata"]["uid"],
            "resourceVersion": d["metadata"]["resourceVersion"],
            "creationTimestamp": d["metadata"]["creationTimestamp"],
        },
        "spec": {"replicas": 2},
        "status": {"replicas": 0, "selector": "app=web"},
    }
    s, ext = raw(c13, "GET", "/apis/extensions/v1beta1/namespaces/default/deployments/sc/scale")
    assert ext["apiVersion"] == "extensions/v1beta1"
    assert ext["status"] == {"replicas": 0, "selector": {"app": "web"}, "targetSelector": "app=web"}
    s, out = raw(
        c13,
        "PATCH",
        "/apis/apps/v1/namespaces/default/deployments/sc/scale",
        body={"spec": {"replicas": 5}},
        content_type="application/merge-patch+json",
    )
    assert s == 200 and out["spec"] == {"replicas": 5}
    s, d2 = raw(c13, "GET", "/apis/apps/v1/namespaces/default/deployments/sc")
    assert d2["spec"]["replicas"] == 5 and d2["metadata"]["generation"] == 2
    stale = dict(sc, spec={"replicas": 1})
    s, body = raw(c13, "PUT", "/apis/apps/v1/namespaces/default/deployments/sc/scale", body=stale)
    assert (s, body) == (
        409,
        {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": 'Operation cannot be fulfilled on deployments.apps "sc": the object has been modified; '
            "please apply your changes to the latest version and try again",
            "reason": "Conflict",
            "details": {"name": "sc", "group": "apps", "kind": "deployments"},
            "code": 409,
        },
    )
    s, body = raw(c13, "GET", "/apis/apps/v1/namespaces/default/deployments/missing/scale")
    assert s == 404 and body["message"] == 'deployments.apps "missing" not found'


@pytest.mark.parametrize("name,sub", [("sp-object", ""), ("sp-scale", "/scale")])
def test_a_patch_of_an_unknown_media_type_is_415_naming_the_accepted_ones(c13, name, sub):
    """The object and its scale subresource take the same three PATCH media types, and say which."""
    path = f"/apis/apps/v1/namespaces/default/deployments/{name}{sub}"
    body = {
        "metadata": {"name": name},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}}, "template": TEMPLATE},
    }
    raw(c13, "POST", "/apis/apps/v1/namespaces/default/deployments", body=body)
    s, out = raw(c13, "PATCH", path, body={"spec": {"replicas": 4}}, content_type="application/apply-patch+yaml")
    assert s == 415 and out["reason"] == "UnsupportedMediaType"
    assert out["message"] == (
        "the server does not support the media type 'application/apply-patch+yaml' for PATCH; "
        "use application/json-patch+json, application/merge-patch+json or "
        "application/strategic-merge-patch+json"
    )
    s, d = raw(c13, "GET", f"/apis/apps/v1/namespaces/default/deployments/{name}")
    assert s == 200 and d["spec"]["replicas"] == 2  # nothing applied
    s, out = raw(
        c13,
        "PATCH",
        path,
        body=[{"op": "replace", "path": "/spec/replicas", "value": 3}],
        content_type="application/json-patch+json",
    )
    assert s == 200 and out["spec"]["replicas"] == 3


def test_status_subresources_and_events_describe_reads(c13):
    body = {"metadata": {"name": "st"}, "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": TEMPLATE}}
    s, d = raw(c13, "POST", "/apis/apps/v1/namespaces/default/deployments", body=body)
    d["status"] = {"replicas": 1, "readyReplicas": 1, "observedGeneration": 1}
    s, out = raw(c13, "PUT", "/apis/apps/v1/namespaces/default/deployments/st/status", body=d)
    assert s == 200 and out["status"]["readyReplicas"] == 1
    s, ds = raw(c13, "GET", "/apis/apps/v1/namespaces/default/daemonsets/agent/status")
    assert s in (200, 404)
    sel = (
        "involvedObject.name=st,involvedObject.namespace=default,involvedObject.kind=Deployment,"
        f"involvedObject.uid={d['metadata']['uid']}"
    )
    s, ev = raw(c13, "GET", "/api/v1/namespaces/default/events", query={"fieldSelector": sel, "limit": "500"})
    assert s == 200 and ev["items"] == []
    s, rs = raw(c13, "GET", "/apis/apps/v1/namespaces/default/replicasets", query={"labelSelector": "app=web"})
    assert s == 200


# ---- access reviews ---------------------------------------------------------------------------


def test_self_subject_access_review(srv13, c13):
    review = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectAccessReview",
        "spec": {"resourceAttributes": {"namespace": "default", "verb": "create", "group": "apps", "resource": "deployments"}},
    }
    s, out = raw(c13, "POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", body=review)
    assert s == 201 and out["status"] == {"allowed": True}
    assert out["metadata"] == {"creationTimestamp": None} and out["spec"] == review["spec"]
    sa = api_client_for(srv13, srv13.service_account_token("default", "helm"))
    s, out = raw(sa, "POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", body=review)
    assert s == 201 and out["status"] == {"allowed": False}
    raw(
        c13,
        "POST",
        "/apis/rbac.authorization.k8s.io/v1/namespaces/default/roles",
        body={
            "metadata": {"name": "deployer"},
            "rules": [{"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["create"]}],
        },
    )
    raw(
        c13,
        "POST",
        "/apis/rbac.authorization.k8s.io/v1/namespaces/default/rolebindings",
        body={
            "metadata": {"name": "deployer"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "deployer"},
            "subjects": [{"kind": "ServiceAccount", "name": "helm", "namespace": "default"}],
        },
    )
    s, out = raw(sa, "POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", body=review)
    assert out["status"] == {
        "allowed": True,
        "reason": 'RBAC: allowed by RoleBinding "deployer/default" of Role "deployer" to ServiceAccount "helm/default"',
    }
    assert raw(c13, "GET", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews")[0] == 405


# ---- Status bodies, field by field (k8s.io/apimachinery/pkg/api/errors) -----------------------


def status(message, reason, code, details=None):
    body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message, "reason": reason}
    if details is not None:
        body["details"] = details
    body["code"] = code
    return body


def ordered(body):
    return json.dumps(body)  # compares key order too


def test_status_bodies_are_exactly_the_real_ones(srv13, c13):
    s, body = raw(c13, "GET", "/apis/apps/v1/namespaces/default/deployments/nope")
    assert s == 404 and ordered(body) == ordered(
        status('deployments.apps "nope" not found', "NotFound", 404, {"name": "nope", "group": "apps", "kind": "deployments"})
    )
    s, body = raw(c13, "GET", "/api/v1/namespaces/default/pods/nope")
    assert ordered(body) == ordered(status('pods "nope" not found', "NotFound", 404, {"name": "nope", "kind": "pods"}))
    cm = {"metadata": {"name": "dup"}}
    raw(c13, "POST", "/api/v1/namespaces/default/configmaps", body=cm)
    s, body = raw(c13, "POST", "/api/v1/namespaces/default/configmaps", body=cm)
    assert s == 409 and ordered(body) == ordered(
        status('configmaps "dup" already exists', "AlreadyExists", 409, {"name": "dup", "kind": "configmaps"})
    )
    s, cur = raw(c13, "GET", "/api/v1/namespaces/default/configmaps/dup")
    raw(c13, "PUT", "/api/v1/namespaces/default/configmaps/dup", body=dict(cur, data={"a": "1"}))
    s, body = raw(c13, "PUT", "/api/v1/namespaces/default/configmaps/dup", body=dict(cur, data={"a": "2"}))
    assert s == 409 and ordered(body) == ordered(
        status(
            'Operation cannot be fulfilled on configmaps "dup": the object has been modified; please apply your '
            "changes to the latest version and try again",
            "Conflict",
            409,
            {"name": "dup", "kind": "configmaps"},
        )
    )
    s, body = raw(c13, "POST", "/api/v1/namespaces/default/configmaps", body={"metadata": {"name": "Bad_Name"}})
    assert s == 422
    assert list(body) == ["kind", "apiVersion", "metadata", "status", "message", "reason", "details", "code"]
    assert list(body["details"]) == ["name", "kind", "causes"]
    assert body["details"]["causes"][0]["field"] == "metadata.name"
    sa = api_client_for(srv13, srv13.service_account_token("default", "nobody"))
    s, body = raw(sa, "GET", "/apis/apps/v1/namespaces/default/deployments/x")
    assert s == 403 and ordered(body) == ordered(
        status(
            'deployments.apps "x" is forbidden: User "system:serviceaccount:default:nobody" cannot get resource '
            '"deployments" in API group "apps" in the namespace "default"',
            "Forbidden",
            403,
            {"name": "x", "group": "apps", "kind": "deployments"},
        )
    )
    s, body = raw(sa, "GET", "/api/v1/namespaces/default/pods")
    assert ordered(body) == ordered(
        status(
            'pods is forbidden: User "system:serviceaccount:default:nobody" cannot list resource "pods" in API group '
            '"" in the namespace "default"',
            "Forbidden",
            403,
            {"kind": "pods"},
        )
    )


def test_410_in_a_watch_is_an_expired_status(kubesim_server_factory):
    srv = kubesim_server_factory(k8s_version="1.13", history=2)
    c = api_client_for(srv)
    for i in range(5):
        raw(c, "POST", "/api/v1/namespaces/default/configmaps", body={"metadata": {"name": f"m{i}"}})
    events = list(watch_events(c, "/api/v1/namespaces/default/configmaps", {"resourceVersion": "1"}, timeout=5))
    assert events[0]["type"] == "ERROR"
    body = events[0]["object"]
    assert list(body) == ["kind", "apiVersion", "metadata", "status", "message", "reason", "code"]
    assert (body["reason"], body["code"]) == ("Expired", 410)
    assert body["message"].startswith("too old resource version: 1 (")


# ---- the real kubectl ---------------------------------------------------------------------------


def kubectl(kubeconfig, *args):
    proc = subprocess.run([KUBECTL, "--kubeconfig", kubeconfig, *args], capture_output=True, text=True, timeout=60)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.mark.skipif(not os.path.exists(KUBECTL), reason="kubectl not installed (make setup)")
def test_kubectl_scale_describe_and_can_i(srv13, c13, tmp_path):
    kc = str(tmp_path / "kubeconfig")
    srv13.write_kubeconfig(kc)
    raw(
        c13,
        "POST",
        "/apis/apps/v1/namespaces/default/deployments",
        body={
            "metadata": {"name": "kweb"},
            "spec": {
                "selector": {"matchLabels": {"app": "kweb"}},
                "template": {**TEMPLATE, "metadata": {"labels": {"app": "kweb"}}},
            },
        },
    )
    rc, out, err = kubectl(kc, "scale", "deployment.apps/kweb", "--replicas=3")
    assert rc == 0 and "deployment.apps/kweb scaled" in out, err
    rc, out, err = kubectl(kc, "get", "deployments.v1.apps", "kweb", "-o", "jsonpath={.spec.replicas}")
    assert (rc, out) == (0, "3"), err
    rc, out, err = kubectl(kc, "describe", "deployment.apps", "kweb")
    assert rc == 0, err
    assert "Replicas:               3 desired | 0 updated | 0 total | 0 available | 0 unavailable" in out
    assert "Selector:               app=kweb" in out and "Events:" in out
    rc, out, err = kubectl(kc, "describe", "daemonset.apps", "agent")
    assert rc == 0 and "deprecated.daemonset.template.generation: " in out, err
    raw(c13, "POST", "/api/v1/namespaces/default/pods", body={"metadata": {"name": "kp"}, "spec": TEMPLATE["spec"]})
    rc, out, err = kubectl(kc, "describe", "pod", "kp")
    assert rc == 0 and "Status:       Pending" in out, err
    rc, out, err = kubectl(kc, "auth", "can-i", "create", "deployments.apps")
    assert (rc, out.strip()) == (0, "yes"), err
    rc, out, err = kubectl(kc, "get", "deployment.apps", "nope")
    assert rc == 1 and 'Error from server (NotFound): deployments.apps "nope" not found' in err


@pytest.mark.skipif(not os.path.exists(KUBECTL), reason="kubectl not installed (make setup)")
def test_kubectl_scale_describe_and_can_i_on_1_7(kubesim_server, tmp_path):
    kc = kubesim_server.write_kubeconfig(str(tmp_path / "kubeconfig"))
    c = api_client_for(kubesim_server)
    raw(
        c,
        "POST",
        "/apis/extensions/v1beta1/namespaces/default/deployments",
        body={"metadata": {"name": "web"}, "spec": {"template": TEMPLATE}},
    )
    rc, out, err = kubectl(kc, "scale", "deploy/web", "--replicas=2")
    assert rc == 0 and "deployment.extensions/web scaled" in out, err
    s, d = raw(c, "GET", "/apis/apps/v1beta1/namespaces/default/deployments/web")
    assert d["spec"]["replicas"] == 2
    rc, out, err = kubectl(kc, "describe", "deploy", "web")
    assert rc == 0 and "Name:         web" in out, err
    rc, out, err = kubectl(kc, "auth", "can-i", "create", "deployments")
    assert (rc, out.strip()) == (0, "yes"), err


def test_impersonation_needs_the_impersonate_verb_and_runs_as_the_user(srv13):
    """kubectl --as / --as-group: the impersonated user's groups (a service account's own without
    --as-group, plus system:authenticated) decide; impersonating needs `impersonate` on users/groups/
    serviceaccounts."""
    admin = api_client_for(srv13)
    admin.set_default_header("Impersonate-User", "system:serviceaccount:default:x")
    review = {"spec": {"resourceAttributes": {"namespace": "default", "verb": "list", "resource": "secrets"}}}
    s, out = raw(admin, "POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", body=review)
    assert s == 201 and out["status"] == {"allowed": False}
    s, body = raw(admin, "GET", "/api/v1/namespaces/default/secrets")
    assert s == 403 and body["message"].startswith('secrets is forbidden: User "system:serviceaccount:default:x"')
    sa = api_client_for(srv13, srv13.service_account_token("default", "y"))
    sa.set_default_header("Impersonate-User", "bob")
    s, body = raw(sa, "GET", "/api/v1/namespaces/default/pods")
    assert s == 403 and body["message"] == (
        'users "bob" is forbidden: User "system:serviceaccount:default:y" cannot '
        'impersonate resource "users" in API group "" at the cluster scope'
    )
    assert body["details"] == {"name": "bob", "kind": "users"}


def test_self_subject_rules_review_includes_the_bootstrap_policy(srv13):
    sa = api_client_for(srv13, srv13.service_account_token("default", "rules"))
    s, out = raw(sa, "POST", "/apis/authorization.k8s.io/v1/selfsubjectrulesreviews", body={"spec": {"namespace": "default"}})
    assert s == 201 and out["status"]["incomplete"] is False
    assert {
        "verbs": ["create"],
        "apiGroups": ["authorization.k8s.io"],
        "resources": ["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
    } in out["status"]["resourceRules"]
    assert any("/version" in r["nonResourceURLs"] for r in out["status"]["nonResourceRules"])
    s, out = raw(
        sa,
        "POST",
        "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
        body={
            "spec": {
                "resourceAttributes": {"verb": "create", "group": "authorization.k8s.io", "resource": "selfsubjectaccessreviews"}
            }
        },
    )
    assert out["status"]["allowed"] is True and "system:basic-user" in out["status"]["reason"]


def test_delete_answers_a_success_status_in_go_field_order(c13):
    raw(
        c13,
        "POST",
        "/apis/apps/v1/namespaces/default/deployments",
        body={"metadata": {"name": "gone"}, "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": TEMPLATE}},
    )
    uid = raw(c13, "GET", "/apis/apps/v1/namespaces/default/deployments/gone")[1]["metadata"]["uid"]
    s, body = raw(c13, "DELETE", "/apis/apps/v1/namespaces/default/deployments/gone")
    assert s == 200 and ordered(body) == ordered(
        {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "details": {"name": "gone", "group": "apps", "kind": "deployments", "uid": uid},
        }
    )


def test_every_1_13_kind_read_back_validates_strictly_against_1_13(kubesim_server_factory):
    """What 1.13 mode returns has the 1.13 shape: no field a 1.13 type lacks, whatever version created it."""
    srv = kubesim_server_factory(k8s_version="1.13")
    c = api_client_for(srv)
    sel = {"matchLabels": {"app": "web"}}
    posts = [
        (
            "/apis/apps/v1/namespaces/default/deployments",
            {"metadata": {"name": "d"}, "spec": {"selector": sel, "template": TEMPLATE}},
        ),
        ("/apis/extensions/v1beta1/namespaces/default/daemonsets", {"metadata": {"name": "ds"}, "spec": {"template": TEMPLATE}}),
        (
            "/apis/apps/v1/namespaces/default/replicasets",
            {"metadata": {"name": "rs"}, "spec": {"selector": sel, "template": TEMPLATE}},
        ),
        (
            "/apis/apps/v1beta1/namespaces/default/statefulsets",
            {"metadata": {"name": "ss"}, "spec": {"serviceName": "s", "template": TEMPLATE}},
        ),
        (
            "/apis/batch/v1/namespaces/default/jobs",
            {
                "metadata": {"name": "j"},
                "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]}}},
            },
        ),
        ("/api/v1/namespaces/default/replicationcontrollers", {"metadata": {"name": "rc"}, "spec": {"template": TEMPLATE}}),
        (
            "/apis/policy/v1beta1/namespaces/default/poddisruptionbudgets",
            {"metadata": {"name": "pdb"}, "spec": {"selector": sel, "minAvailable": 1}},
        ),
        (
            "/apis/admissionregistration.k8s.io/v1beta1/mutatingwebhookconfigurations",
            {
                "metadata": {"name": "w"},
                "webhooks": [{"name": "w.example.com", "clientConfig": {"service": {"namespace": "default", "name": "w"}}}],
            },
        ),
    ]
    reads = []
    for path, body in posts:
        s, obj = raw(c, "POST", path, body=body)
        assert s == 201, obj
        name = obj["metadata"]["name"]
        for gv in {
            "deployments": ["apps/v1", "apps/v1beta2", "apps/v1beta1", "extensions/v1beta1"],
            "daemonsets": ["apps/v1", "apps/v1beta2", "extensions/v1beta1"],
            "replicasets": ["apps/v1", "extensions/v1beta1"],
            "statefulsets": ["apps/v1", "apps/v1beta1"],
        }.get(path.rsplit("/", 1)[1]) or [None]:
            p = path if gv is None else "/apis/" + gv + "/" + path.split("/", 4)[4]
            reads.append(raw(c, "GET", f"{p}/{name}")[1])
    reads.append(raw(c, "GET", "/apis/apps/v1/namespaces/default/deployments/d/scale")[1])
    reads.append(raw(c, "GET", "/apis/extensions/v1beta1/namespaces/default/deployments/d/scale")[1])
    review = raw(
        c,
        "POST",
        "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
        body={
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": {"verb": "get", "resource": "pods"}},
        },
    )[1]
    assert review["metadata"] == {"creationTimestamp": None}  # a zero metav1.Time, as the real server writes
    reads.append(dict(review, metadata={}))  # (the schema types it as a string)
    for obj in reads:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            kubernetes_validate.validate(obj, "1.13.0", strict=True)
    assert {o["apiVersion"] for o in reads} >= {
        "apps/v1",
        "apps/v1beta2",
        "apps/v1beta1",
        "extensions/v1beta1",
        "batch/v1",
        "policy/v1beta1",
        "autoscaling/v1",
        "v1",
    }


def test_1_7_kinds_read_back_validate_strictly_against_1_8(kubesim_server):
    c = api_client_for(kubesim_server)
    posts = [
        ("/apis/extensions/v1beta1/namespaces/default/replicasets", {"metadata": {"name": "rs"}, "spec": {"template": TEMPLATE}}),
        (
            "/apis/apps/v1beta1/namespaces/default/statefulsets",
            {"metadata": {"name": "ss"}, "spec": {"serviceName": "s", "template": TEMPLATE}},
        ),
        (
            "/apis/batch/v1/namespaces/default/jobs",
            {
                "metadata": {"name": "j"},
                "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]}}},
            },
        ),
        ("/api/v1/namespaces/default/replicationcontrollers", {"metadata": {"name": "rc"}, "spec": {"template": TEMPLATE}}),
        (
            "/apis/policy/v1beta1/namespaces/default/poddisruptionbudgets",
            {"metadata": {"name": "pdb"}, "spec": {"selector": {"matchLabels": {"app": "web"}}, "minAvailable": 1}},
        ),
        ("/apis/extensions/v1beta1/namespaces/default/deployments", {"metadata": {"name": "d"}, "spec": {"template": TEMPLATE}}),
    ]
    reads = []
    for path, body in posts:
        s, obj = raw(c, "POST", path, body=body)
        assert s == 201, obj
        reads.append(raw(c, "GET", f"{path}/{obj['metadata']['name']}")[1])
    reads.append(raw(c, "GET", "/apis/extensions/v1beta1/namespaces/default/deployments/d/scale")[1])
    reads.append(raw(c, "GET", "/apis/apps/v1beta1/namespaces/default/deployments/d/scale")[1])
    pdb = next(o for o in reads if o["kind"] == "PodDisruptionBudget")
    assert pdb["status"]["disruptedPods"] is None  # written as null (no omitempty in 1.7/1.8) ...
    pdb["status"]["disruptedPods"] = {}  # ... which the schema types as an object
    for obj in reads:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            kubernetes_validate.validate(obj, "1.8.0", strict=True)
