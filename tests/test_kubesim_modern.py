"""kubesim's 1.28 mode (``--k8s-version 1.28``): what a 1.28 API server serves for the kinds kubesim
implements (discovery and /openapi/v2 from the 1.28.0 definitions), no Initializers, the namespace
name label, admissionregistration.k8s.io/v1 webhook configurations with their v1 defaults, validation
and AdmissionReview v1 calls; and the real kubectl and Helm against it as a user types them."""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request
from pathlib import Path

import pytest
import trustme
import yaml

from controllerkit import errors
from controllerkit.kube import Client, resource_path
from kubesim.apiserver import webhooks
from kubesim.apiserver.schema_catalog import GVKS_1_28
from test_kubesim_webhooks import ScriptedWebhook, cm

REPO = Path(__file__).resolve().parent.parent
HELM = os.environ.get("TPROXY_HELM", str(REPO / ".tools" / "bin" / "helm"))
KUBECTL = os.environ.get("TPROXY_KUBECTL", str(REPO / ".tools" / "bin" / "kubectl"))
MWC = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"
CM = resource_path("v1", "configmaps", "default")


@pytest.fixture
def srv(kubesim_server_factory):
    return kubesim_server_factory(k8s_version="1.28")


@pytest.fixture
def api(srv):
    c = Client.from_url(srv.url, token=srv.admin_token, ca_file=srv.ca_file)
    c.api_client.set_default_header("X-Kubesim-No-Faults", "1")
    return c


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


@pytest.fixture(scope="module")
def hook(ca):
    h = ScriptedWebhook(ca)
    yield h
    h.stop()


def v1_webhook(ca, url, name="h.example.com", **extra):
    import base64

    w = {
        "name": name,
        "sideEffects": "None",
        "admissionReviewVersions": ["v1"],
        "clientConfig": {"url": url, "caBundle": base64.b64encode(ca.cert_pem.bytes()).decode()},
        "rules": [{"operations": ["CREATE", "UPDATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["configmaps"]}],
    }
    w.update(extra)
    return w


def mwc(name, *hooks):
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": list(hooks),
    }


def get(srv, path):
    import ssl

    ctx = ssl.create_default_context(cafile=srv.ca_file)
    req = urllib.request.Request(srv.url + path, headers={"Authorization": f"Bearer {srv.admin_token}"})
    with urllib.request.urlopen(req, context=ctx) as r:
        return json.loads(r.read())


def test_discovery_serves_the_1_28_group_versions_only(srv):
    assert get(srv, "/version")["gitVersion"] == "v1.28.15"
    groups = {g["name"]: [v["version"] for v in g["versions"]] for g in get(srv, "/apis")["groups"]}
    assert groups == {
        "apps": ["v1"],
        "authorization.k8s.io": ["v1"],
        "batch": ["v1"],
        "policy": ["v1"],
        "rbac.authorization.k8s.io": ["v1"],
        "admissionregistration.k8s.io": ["v1"],
        "coordination.k8s.io": ["v1"],
    }
    served = {
        (g, v, r["kind"])
        for g, vs in groups.items()
        for v in vs
        for r in get(srv, f"/apis/{g}/{v}")["resources"]
        if "/" not in r["name"]
    }
    served |= {("", "v1", r["kind"]) for r in get(srv, "/api/v1")["resources"] if "/" not in r["name"]}
    assert served == set(GVKS_1_28)
    assert ("admissionregistration.k8s.io", "v1alpha1", "InitializerConfiguration") not in served
    defs = get(srv, "/openapi/v2")["definitions"]
    assert "io.k8s.api.admissionregistration.v1.MutatingWebhookConfiguration" in defs
    assert "io.k8s.api.extensions.v1beta1.Deployment" not in defs
    assert "initializers" not in defs["io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"]["properties"]


def test_namespaces_carry_their_name_label_and_initializers_do_not_exist(api):
    ns = api.create(resource_path("v1", "namespaces"), {"metadata": {"name": "team", "labels": {"a": "b"}}})
    assert ns["metadata"]["labels"] == {"a": "b", "kubernetes.io/metadata.name": "team"}
    assert api.get("/api/v1/namespaces/default")["metadata"]["labels"] == {"kubernetes.io/metadata.name": "default"}
    out = api.create(CM, {"metadata": {"name": "c", "initializers": {"pending": [{"name": "x.example.com"}]}}})
    assert "initializers" not in out["metadata"]  # no such field: dropped, the object is created
    with pytest.raises(errors.NotFound):
        api.get("/apis/admissionregistration.k8s.io/v1alpha1/initializerconfigurations")


def test_v1_configurations_default_and_validate_as_1_28_does(api, ca):
    out = api.create(MWC, mwc("d", v1_webhook(ca, "https://localhost:1/x")))
    w = out["webhooks"][0]
    assert (
        w["failurePolicy"],
        w["matchPolicy"],
        w["timeoutSeconds"],
        w["reinvocationPolicy"],
        w["namespaceSelector"],
        w["objectSelector"],
    ) == ("Fail", "Equivalent", 10, "Never", {}, {})
    bad = v1_webhook(ca, "https://localhost:1/x", sideEffects="Unknown")
    del bad["admissionReviewVersions"]
    with pytest.raises(errors.ApiError) as e:
        api.create(MWC, mwc("bad", bad))
    assert e.value.code == 422
    assert 'webhooks[0].sideEffects: Unsupported value: "Unknown": supported values: "None", "NoneOnDryRun"' in e.value.message
    assert "webhooks[0].admissionReviewVersions: Required value: must specify one of v1, v1beta1" in e.value.message
    with pytest.raises(errors.NotFound):
        api.get(f"{MWC}/bad")


def test_v1_reviews_the_uid_check_and_the_timeout(api, hook, ca):
    api.create(MWC, mwc("p", v1_webhook(ca, hook.url("patch"))))
    out = api.create(CM, cm("a"))
    assert out["metadata"]["labels"] == {"patched-yes": "0"}
    review = hook.reviews[-1]
    assert review["review"]["apiVersion"] == "admission.k8s.io/v1" and review["path"] == "/patch?timeout=10s"
    req = review["review"]["request"]
    assert req["requestKind"] == {"group": "", "version": "v1", "kind": "ConfigMap"}
    assert req["options"] == {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"}
    api.delete(f"{MWC}/p")
    api.create(MWC, mwc("u", v1_webhook(ca, hook.url("baduid"), "uid.example.com")))
    with pytest.raises(errors.ApiError) as e:
        api.create(CM, cm("b"))
    assert e.value.message.startswith(
        'Internal error occurred: failed calling webhook "uid.example.com": '
        "received invalid webhook response: expected response.uid="
    )
    api.delete(f"{MWC}/u")
    hook.delay = 3.0
    try:
        api.create(MWC, mwc("s", v1_webhook(ca, hook.url("slow"), "slow.example.com", timeoutSeconds=1)))
        with pytest.raises(errors.ApiError) as e:
            api.create(CM, cm("c"))
    finally:
        hook.delay = 0.0
    assert e.value.message == (
        'Internal error occurred: failed calling webhook "slow.example.com": failed to call '
        f'webhook: Post "{hook.url("slow")}?timeout=1s": context deadline exceeded'
    )
    with pytest.raises(errors.NotFound):
        api.get(f"{CM}/c")


def test_the_namespace_label_lets_a_selector_exclude_a_namespace(api, hook, ca):
    sel = {"matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["kube-system"]}]}
    api.create(MWC, mwc("n", v1_webhook(ca, hook.url("patch"), namespaceSelector=sel)))
    assert api.create(CM, cm("x"))["metadata"]["labels"] == {"patched-yes": "0"}
    assert not api.create(resource_path("v1", "configmaps", "kube-system"), cm("x"))["metadata"].get("labels")


def test_review_versions_follow_the_server():
    class Fake:
        k8s_version = "1.13"

    assert webhooks.Dispatcher(Fake()).versions == ("v1beta1",)
    Fake.k8s_version = "1.28"
    assert webhooks.Dispatcher(Fake()).versions == ("v1", "v1beta1")


# ---- the real clients -------------------------------------------------------------------------


def run(env, *argv, check=True):
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=90, env=env, cwd=REPO)
    if check and proc.returncode != 0:
        raise AssertionError(f"{argv} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def test_kubectl_and_helm_as_typed(srv, tmp_path):
    env = {
        **os.environ,
        "KUBECONFIG": srv.write_kubeconfig(str(tmp_path / "kc")),
        "HOME": str(tmp_path),
        "HELM_CACHE_HOME": str(tmp_path / "c"),
        "HELM_CONFIG_HOME": str(tmp_path / "cf"),
        "HELM_DATA_HOME": str(tmp_path / "d"),
    }
    # 1.16 removed extensions/v1beta1 workloads: the tutorial's manifest is refused as a 1.28 cluster does
    proc = run(env, KUBECTL, "apply", "-f", "examples/debian-app.yaml", check=False)
    assert proc.returncode != 0 and 'no matches for kind "Deployment" in version "extensions/v1beta1"' in proc.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "b"}, "bogus": 1}))
    proc = run(env, KUBECTL, "apply", "-f", str(bad), check=False)
    assert proc.returncode != 0 and 'unknown field "bogus"' in proc.stderr
    run(env, HELM, "install", "tproxy", "chart/", "--namespace", "tproxy", "--create-namespace")
    objs = json.loads(run(env, KUBECTL, "get", "all", "-n", "tproxy", "-o", "json").stdout)["items"]
    assert {o["apiVersion"] for o in objs if o["kind"] in ("Deployment", "DaemonSet")} <= {"apps/v1"}
    assert "tproxy" in run(env, HELM, "list", "-n", "tproxy").stdout
    run(env, HELM, "uninstall", "tproxy", "-n", "tproxy")
    assert "tproxy" not in run(env, HELM, "list", "-n", "tproxy").stdout
