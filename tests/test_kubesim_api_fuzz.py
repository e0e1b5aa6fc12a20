"""Bad input never breaks the API server: arbitrary JSON bodies and patches get a 4xx Status (never a
500, never a hang), and nothing half-written is left behind."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kubesim.testing import api_client_for, raw

json_scalars = st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=5)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(
                [
                    "metadata",
                    "spec",
                    "name",
                    "template",
                    "containers",
                    "initializers",
                    "pending",
                    "result",
                    "labels",
                    "selector",
                    "matchLabels",
                    "status",
                    "image",
                    "x",
                ]
            ),
            inner,
            max_size=4,
        )
    ),
    max_leaves=12,
)

PATHS = [
    "/api/v1/namespaces/default/pods",
    "/api/v1/namespaces/default/configmaps",
    "/apis/extensions/v1beta1/namespaces/default/deployments",
    "/apis/apps/v1beta1/namespaces/default/deployments",
    "/apis/admissionregistration.k8s.io/v1alpha1/initializerconfigurations",
    "/apis/rbac.authorization.k8s.io/v1beta1/namespaces/default/roles",
]


@pytest.fixture(scope="module")
def fuzz_server(kubesim_server_module):
    return kubesim_server_module


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(PATHS), body=json_values)
def test_arbitrary_create_bodies_never_500(fuzz_server, path, body):
    c = api_client_for(fuzz_server)
    s, status = raw(c, "POST", path, query={"includeUninitialized": "1"}, body=body, timeout=10)
    assert s != 500 and s < 600, status
    if s >= 400:
        assert status["kind"] == "Status" and status["code"] == s


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    ctype=st.sampled_from(
        ["application/strategic-merge-patch+json", "application/merge-patch+json", "application/json-patch+json"]
    ),
    body=json_values,
)
def test_arbitrary_patches_never_500(fuzz_server, ctype, body):
    c = api_client_for(fuzz_server)
    path = "/apis/extensions/v1beta1/namespaces/default/deployments"
    if raw(c, "GET", f"{path}/target")[0] == 404:
        assert (
            raw(
                c,
                "POST",
                path,
                body={
                    "metadata": {"name": "target"},
                    "spec": {
                        "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}
                    },
                },
            )[0]
            == 201
        )
    s, status = raw(c, "PATCH", f"{path}/target", body=body, content_type=ctype, timeout=10)
    assert s != 500, status
    s, obj = raw(c, "GET", f"{path}/target")
    assert s in (200, 404)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=json_values)
def test_arbitrary_update_bodies_never_500(fuzz_server, body):
    c = api_client_for(fuzz_server)
    path = "/api/v1/namespaces/default/pods"
    if raw(c, "GET", f"{path}/put-target")[0] == 404:
        assert (
            raw(
                c, "POST", path, body={"metadata": {"name": "put-target"}, "spec": {"containers": [{"name": "c", "image": "i"}]}}
            )[0]
            == 201
        )
    s, status = raw(c, "PUT", f"{path}/put-target", body=body, timeout=10)
    assert s != 500, status
    s, status = raw(c, "PUT", f"{path}/put-target/status", body=body, timeout=10)
    assert s != 500, status


PATHS_1_13 = [
    "/apis/apps/v1/namespaces/default/deployments",
    "/apis/apps/v1/namespaces/default/daemonsets",
    "/apis/apps/v1/namespaces/default/statefulsets",
    "/apis/batch/v1/namespaces/default/jobs",
    "/apis/admissionregistration.k8s.io/v1beta1/mutatingwebhookconfigurations",
    "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
]


@pytest.fixture(scope="module")
def fuzz_server_1_13():
    from kubesim.apiserver import APIServer

    srv = APIServer(k8s_version="1.13").start()
    yield srv
    srv.stop()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(PATHS_1_13), body=json_values)
def test_1_13_kinds_never_500(fuzz_server_1_13, path, body):
    c = api_client_for(fuzz_server_1_13)
    s, status = raw(c, "POST", path, body=body, timeout=10)
    assert s != 500 and s < 600, status


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    ctype=st.sampled_from(
        ["application/strategic-merge-patch+json", "application/merge-patch+json", "application/json-patch+json"]
    ),
    body=json_values,
    sub=st.sampled_from(["", "/scale", "/status"]),
)
def test_1_13_patches_and_scale_never_500(fuzz_server_1_13, ctype, body, sub):
    c = api_client_for(fuzz_server_1_13)
    path = "/apis/apps/v1/namespaces/default/daemonsets" if sub == "/status" else "/apis/apps/v1/namespaces/default/deployments"
    if raw(c, "GET", f"{path}/target")[0] == 404:
        assert (
            raw(
                c,
                "POST",
                path,
                body={
                    "metadata": {"name": "target"},
                    "spec": {
                        "selector": {"matchLabels": {"a": "b"}},
                        "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}},
                    },
                },
            )[0]
            == 201
        )
    s, status = raw(c, "PATCH", f"{path}/target{sub}", body=body, content_type=ctype, timeout=10)
    assert s != 500, status
    s, status = raw(c, "PUT", f"{path}/target{sub}", body=body, timeout=10)
    assert s != 500, status
