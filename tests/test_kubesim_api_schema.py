"""What kubesim returns has the shape of the real API: every kind validates (strict, no unknown fields)
against the Kubernetes 1.8 OpenAPI schemas bundled by kubernetes-validate (the oldest available; 1.7's
types are a subset for these kinds, metadata.initializers included)."""

import warnings

import pytest

from kubesim.testing import raw

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import kubernetes_validate

TEMPLATE = {
    "metadata": {"labels": {"a": "b"}},
    "spec": {
        "initContainers": [{"name": "i", "image": "x"}],
        "containers": [{"name": "c", "image": "i", "ports": [{"containerPort": 80}], "env": [{"name": "E", "value": "v"}]}],
        "volumes": [{"name": "v", "secret": {"secretName": "s"}}, {"name": "w", "configMap": {"name": "m"}}],
    },
}


@pytest.fixture(scope="module")
def objects(kube_api_client_module):
    c = kube_api_client_module
    out = []
    raw(
        c,
        "POST",
        "/apis/admissionregistration.k8s.io/v1alpha1/initializerconfigurations",
        body={
            "metadata": {"name": "x"},
            "initializers": [
                {
                    "name": "a.example.com",
                    "rules": [{"apiGroups": ["extensions"], "apiVersions": ["*"], "resources": ["daemonsets"]}],
                }
            ],
        },
    )
    out.append(raw(c, "GET", "/apis/admissionregistration.k8s.io/v1alpha1/initializerconfigurations/x")[1])
    out.append(
        raw(
            c,
            "POST",
            "/apis/extensions/v1beta1/namespaces/default/deployments",
            body={"metadata": {"name": "d"}, "spec": {"template": TEMPLATE}},
        )[1]
    )
    out.append(raw(c, "GET", "/apis/apps/v1beta1/namespaces/default/deployments/d")[1])
    out.append(
        raw(
            c,
            "POST",
            "/apis/extensions/v1beta1/namespaces/default/daemonsets",
            query={"includeUninitialized": "1"},
            body={"metadata": {"name": "ds"}, "spec": {"template": TEMPLATE}},
        )[1]
    )
    out.append(raw(c, "POST", "/api/v1/namespaces/default/pods", body={"metadata": {"name": "p"}, "spec": TEMPLATE["spec"]})[1])
    out.append(
        raw(
            c, "POST", "/api/v1/namespaces/default/services", body={"metadata": {"name": "s"}, "spec": {"ports": [{"port": 80}]}}
        )[1]
    )
    out.append(raw(c, "GET", "/api/v1/namespaces/default")[1])
    sa = raw(c, "GET", "/api/v1/namespaces/default/serviceaccounts/default")[1]
    out.append(sa)
    out.append(raw(c, "GET", "/api/v1/namespaces/default/secrets/" + sa["secrets"][0]["name"])[1])
    out.append(raw(c, "POST", "/api/v1/namespaces/default/configmaps", body={"metadata": {"name": "m"}, "data": {"k": "v"}})[1])
    out.append(raw(c, "GET", "/apis/rbac.authorization.k8s.io/v1beta1/clusterroles/cluster-admin")[1])
    out.append(raw(c, "GET", "/apis/rbac.authorization.k8s.io/v1beta1/clusterrolebindings/cluster-admin")[1])
    return out


def test_every_kind_validates_strictly(objects):
    kinds = []
    for obj in objects:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            kubernetes_validate.validate(obj, "1.8.0", strict=True)
        kinds.append(obj["kind"])
    assert {
        "Deployment",
        "DaemonSet",
        "Pod",
        "Service",
        "Namespace",
        "ServiceAccount",
        "Secret",
        "ConfigMap",
        "InitializerConfiguration",
        "ClusterRole",
        "ClusterRoleBinding",
    } <= set(kinds)
    ds = next(o for o in objects if o["kind"] == "DaemonSet")
    assert ds["metadata"]["initializers"]["pending"] == [{"name": "a.example.com"}]
