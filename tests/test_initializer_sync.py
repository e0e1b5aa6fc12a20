"""Controller.sync error handling against scripted API answers (controllerkit's fake server).

The kubesim tests cover the happy paths and random faults; these pin the exact reaction to each
answer the API can give a write: 409 re-read and redo, 422 on the injected object -> fail the create
with the server's reason, 404 -> done, 403 -> reported and retried, never a silent drop.
"""

import json
import time

import pytest

from controllerkit import errors
from controllerkit.kube import Client
from controllerkit.testing import status_body
from initializer import metrics
from initializer.controller import MAX_CONFLICT_RETRIES, Controller
from initializer.mutate import FAIL, INJECT

NAME = "tproxy.initializer.kubernetes.io"
PATH = "/apis/apps/v1beta1/namespaces/ns/deployments/web"
CONFIG = (
    "containers: [{name: tproxy, image: sidecar}]\nvolumes: [{name: ca, emptyDir: {}}]\n"
    "volumeMounts: [{name: ca, mountPath: /etc/ssl/certs}]"
)


def dep(rv="5"):
    return {
        "apiVersion": "apps/v1beta1",
        "kind": "Deployment",
        "metadata": {
            "name": "web",
            "namespace": "ns",
            "uid": "u",
            "resourceVersion": rv,
            "creationTimestamp": "2026-01-01T00:00:00Z",
            "initializers": {"pending": [{"name": NAME}]},
        },
        "spec": {"template": {"metadata": {}, "spec": {"containers": [{"name": "app", "image": "x"}]}}},
    }


class Recorder:
    def __init__(self):
        self.records = []

    def __getattr__(self, level):
        return lambda event, **kw: self.records.append((level, event, kw))


@pytest.fixture
def fake(fake_api_server):
    return fake_api_server


@pytest.fixture
def ctl(fake):
    c = Controller(Client.from_url(fake.url), logger=Recorder())
    assert c.load_configmap({"metadata": {"name": "cm", "namespace": "default"}, "data": {"config": CONFIG}})
    return c


def puts(fake):
    return [
        json.loads(body)
        for (headers, body), (method, path, _) in zip(fake.request_details, fake.requests)
        if method == "PUT" and path == PATH
    ]


def test_write_carries_the_resource_version_read(fake, ctl):
    fake.route("GET", PATH, 200, dep(rv="41"))
    fake.route("PUT", PATH, 200, dep(rv="42"))
    decision = ctl.sync("ns/web")
    assert decision.action == INJECT
    [body] = puts(fake)
    assert body["metadata"]["resourceVersion"] == "41"
    assert body["metadata"]["initializers"] is None
    assert body["spec"]["template"]["spec"]["initContainers"][0]["name"] == "tproxy"


def test_conflicts_are_reread_and_redone(fake, ctl):
    before = metrics.WRITE_CONFLICTS._value.get()
    for rv in ("1", "2", "3"):
        fake.route("GET", PATH, 200, dep(rv=rv))
    for _ in range(2):
        fake.route("PUT", PATH, 409, status_body(409, "Conflict", "the object has been modified"))
    fake.route("PUT", PATH, 200, dep(rv="4"))
    assert ctl.sync("ns/web").action == INJECT
    assert [b["metadata"]["resourceVersion"] for b in puts(fake)] == ["1", "2", "3"]
    assert metrics.WRITE_CONFLICTS._value.get() == before + 2


def test_endless_conflicts_raise_so_the_key_is_requeued(fake, ctl):
    fake.route("GET", PATH, 200, dep())
    fake.route("PUT", PATH, 409, status_body(409, "Conflict", "the object has been modified"))
    with pytest.raises(errors.Conflict, match="still conflicting"):
        ctl.sync("ns/web")
    assert len(puts(fake)) == MAX_CONFLICT_RETRIES


def test_server_rejecting_the_injection_fails_the_create_with_its_reason(fake, ctl):
    fake.route("GET", PATH, 200, dep())
    fake.route("PUT", PATH, 422, status_body(422, "Invalid", 'Deployment.apps "web" is invalid: spec.x: bad'))
    fake.route("PUT", PATH, 200, dep())
    decision = ctl.sync("ns/web")
    assert decision.action == FAIL
    injected, failed = puts(fake)
    assert injected["spec"]["template"]["spec"]["initContainers"]
    result = failed["metadata"]["initializers"]["result"]
    assert result["code"] == 422 and result["status"] == "Failure"
    assert result["message"] == (
        'tproxy initializer: the API server rejected the injected deployment: Deployment.apps "web" is invalid: spec.x: bad'
    )
    assert failed["metadata"]["initializers"]["pending"] == [{"name": NAME}]
    assert failed["spec"] == dep()["spec"] and failed["metadata"]["resourceVersion"] == "5"


def test_deleted_object_is_done(fake, ctl):
    fake.route("GET", PATH, 404, status_body(404, "NotFound", "not found"))
    assert ctl.sync("ns/web") is None
    assert puts(fake) == []
    fake.route("GET", PATH, 200, dep())
    fake.route("PUT", PATH, 404, status_body(404, "NotFound", "gone meanwhile"))
    assert ctl.sync("ns/web") is None


def test_forbidden_write_is_reported_and_raised_for_retry(fake, ctl):
    fake.route("GET", PATH, 200, dep())
    fake.route("PUT", PATH, 403, status_body(403, "Forbidden", 'deployments.apps "web" is forbidden'))
    with pytest.raises(errors.Forbidden):
        ctl.sync("ns/web")
    [(level, event, kw)] = [r for r in ctl.log.records if r[1] == "write_forbidden"]
    assert level == "error" and kw["namespace"] == "ns" and "initialize" in kw["hint"]


def test_not_ours_is_not_written(fake, ctl):
    other = dep()
    other["metadata"]["initializers"]["pending"].insert(0, {"name": "other.example.com"})
    fake.route("GET", PATH, 200, other)
    assert ctl.sync("ns/web") is None and puts(fake) == []


def test_without_config_keys_wait_and_are_queued_when_it_arrives(fake):
    c = Controller(Client.from_url(fake.url), logger=Recorder())
    assert c.sync("ns/web") is None and fake.requests == []
    assert c.ready() == (False, "ConfigMap default/tproxy-initializer not read yet")
    assert not c.load_configmap({"data": {"config": "containers: [{name: x}]"}})
    assert len(c.queue) == 0
    assert "containers[0].image: required" in c.ready()[1]
    assert c.load_configmap({"data": {"config": CONFIG}})
    assert c.queue.get(timeout=1) == "ns/web"


def test_config_watch_that_is_always_gone_backs_off_instead_of_spinning(fake):
    """One 410 means "re-GET at once"; a 410 again right after a fresh GET must not turn into a
    GET+watch loop as fast as the network allows (the informer has the same rule)."""
    cm_path = "/api/v1/namespaces/default/configmaps/tproxy-initializer"
    watch_path = "/api/v1/watch/namespaces/default/configmaps/tproxy-initializer"
    fake.route(
        "GET",
        cm_path,
        200,
        {"metadata": {"name": "tproxy-initializer", "namespace": "default", "resourceVersion": "3"}, "data": {"config": CONFIG}},
    )
    fake.route("GET", watch_path, 410, status_body(410, "Gone", "too old resource version: 3"))
    fake.add_collection("/apis/apps/v1beta1/deployments")
    c = Controller(Client.from_url(fake.url), logger=Recorder(), config_retry=0.3)
    c.start()
    try:
        time.sleep(1.2)
    finally:
        c.stop()
    watches = [q for m, p, q in fake.requests if p == watch_path]
    assert 2 <= len(watches) <= 6, f"{len(watches)} config watches in 1.2 s"
    assert c.config is not None, "the GET's config is still installed"
    assert any(e == "watch_gone_again" for _, e, _ in c.log.records)


def _sample(name, **labels):
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_skipped_and_failed_outcomes_are_counted_timed_and_logged_with_identity(fake):
    c = Controller(Client.from_url(fake.url), logger=Recorder(), require_annotation=True)
    assert c.load_configmap({"data": {"config": CONFIG}})
    annotated = dep()
    annotated["metadata"]["annotations"] = {"initializer.kubernetes.io/tproxy": "TRUE"}
    annotated["spec"]["template"]["spec"]["volumes"] = [{"name": "ca", "hostPath": {"path": "/etc"}}]
    fake.route("GET", PATH, 200, dep())  # no annotation: released untouched
    fake.route("GET", PATH, 200, annotated)  # annotated, but its volume "ca" clashes with ours
    fake.route("PUT", PATH, 200, dep())
    skipped, failed = (_sample("tproxy_initializer_deployments_total", outcome=o) for o in ("skipped", "failed"))
    timed = _sample("tproxy_initializer_initialization_seconds_count")

    assert c.sync("ns/web").action == "skip"
    assert c.sync("ns/web").action == FAIL
    assert _sample("tproxy_initializer_deployments_total", outcome="skipped") == skipped + 1
    assert _sample("tproxy_initializer_deployments_total", outcome="failed") == failed + 1
    assert _sample("tproxy_initializer_initialization_seconds_count") == timed + 2
    skip_put, fail_put = puts(fake)
    assert skip_put["spec"] == dep()["spec"] and skip_put["metadata"]["initializers"] is None
    assert "volume 'ca' with a different definition" in fail_put["metadata"]["initializers"]["result"]["message"]
    logged = {e: (level, kw) for level, e, kw in c.log.records if e.startswith("deployment_")}
    level, kw = logged["deployment_skipped"]
    assert level == "info" and kw["outcome"] == "skipped" and (kw["namespace"], kw["name"], kw["uid"]) == ("ns", "web", "u")
    assert kw["reason"] == "annotation initializer.kubernetes.io/tproxy is missing", "a skip says why"
    level, kw = logged["deployment_failed"]
    assert level == "warning" and kw["outcome"] == "failed" and "volume 'ca'" in kw["reason"]


def test_config_reloads_count_changes_only(fake):
    c = Controller(Client.from_url(fake.url), logger=Recorder())
    before = metrics.CONFIG_RELOADS._value.get()
    assert c.load_configmap({"data": {"config": CONFIG}})
    assert c.load_configmap({"data": {"config": CONFIG + "\n"}})  # same content: not a reload
    assert c.load_configmap({"data": {"config": CONFIG.replace("image: sidecar", "image: sidecar:v2")}})
    assert metrics.CONFIG_RELOADS._value.get() == before + 2
    assert [kw["previous"] is None for _, e, kw in c.log.records if e == "config_loaded"] == [True, False]


def test_malformed_reload_keeps_the_last_good_config_and_logs_why(fake):
    c = Controller(Client.from_url(fake.url), logger=Recorder())
    assert c.load_configmap({"metadata": {"name": "cm", "namespace": "ns"}, "data": {"config": CONFIG}})
    good = c.config
    errs = metrics.CONFIG_ERRORS.labels("malformed")._value.get()
    assert not c.load_configmap(
        {"metadata": {"name": "cm", "namespace": "ns"}, "data": {"config": CONFIG.replace("image: sidecar", "imgae: sidecar")}}
    )
    assert c.config is good, "the last good config stays in force"
    assert metrics.CONFIG_ERRORS.labels("malformed")._value.get() == errs + 1
    [(level, kw)] = [(level, kw) for level, e, kw in c.log.records if e == "config_error_keeping_last_good"]
    assert level == "error" and kw["reason"] == "malformed" and kw["fingerprint"] == good.fingerprint
    assert "ConfigMap ns/cm: containers[0]: unknown field(s) imgae" in kw["error"]


# ---- the CA bundle copy before the release (--root-certs-configmap) -------------------------------

CM = "/api/v1/namespaces/ns/configmaps/root-certs"
CMS = "/api/v1/namespaces/ns/configmaps"
BUNDLE = {"root-certs.crt": "CA"}


def copy_of(rv="7", data=BUNDLE, owner="tproxy-system/root-certs"):
    ann = {"tproxy.initializer.kubernetes.io/root-certs-copy-of": owner} if owner else {}
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "data": dict(data),
        "metadata": {"name": "root-certs", "namespace": "ns", "resourceVersion": rv, "annotations": ann},
    }


@pytest.fixture
def certs_ctl(fake):
    c = Controller(
        Client.from_url(fake.url), logger=Recorder(), root_certs_configmap="root-certs", root_certs_namespace="tproxy-system"
    )
    assert c.load_configmap({"metadata": {"name": "cm", "namespace": "default"}, "data": {"config": CONFIG}})
    assert c.load_root_certs({"metadata": {"name": "root-certs", "namespace": "tproxy-system"}, "data": BUNDLE})
    return c


def calls(fake):
    return [(m, p) for m, p, _ in fake.requests if p in (PATH, CM, CMS)]


def test_without_the_bundle_read_deployments_wait(fake):
    c = Controller(
        Client.from_url(fake.url), logger=Recorder(), root_certs_configmap="root-certs", root_certs_namespace="tproxy-system"
    )
    assert c.load_configmap({"metadata": {"name": "cm", "namespace": "default"}, "data": {"config": CONFIG}})
    assert c.sync("ns/web") is None and fake.requests == []
    assert c.ready() == (False, "ConfigMap tproxy-system/root-certs not read yet")


def test_a_lost_create_race_is_looked_at_again_then_released(fake, certs_ctl):
    """Another replica created the copy between our GET and our POST: 409 AlreadyExists, GET again, ours
    and current: the deployment is released, nothing overwritten."""
    fake.route("GET", PATH, 200, dep())
    fake.route("GET", CM, 404, status_body(404, "NotFound", 'configmaps "root-certs" not found'))
    fake.route("GET", CM, 200, copy_of())
    fake.route("POST", CMS, 409, status_body(409, "AlreadyExists", 'configmaps "root-certs" already exists'))
    fake.route("PUT", PATH, 200, dep(rv="6"))
    assert certs_ctl.sync("ns/web").action == INJECT
    assert calls(fake) == [("GET", PATH), ("GET", CM), ("POST", CMS), ("GET", CM), ("PUT", PATH)]


def test_an_outdated_copy_is_updated_with_the_version_read_before_the_release(fake, certs_ctl):
    fake.route("GET", PATH, 200, dep())
    fake.route("GET", CM, 200, copy_of(rv="3", data={"root-certs.crt": "OLD"}))
    fake.route("PUT", CM, 200, copy_of(rv="4"))
    fake.route("PUT", PATH, 200, dep(rv="6"))
    assert certs_ctl.sync("ns/web").action == INJECT
    assert calls(fake) == [("GET", PATH), ("GET", CM), ("PUT", CM), ("PUT", PATH)]
    [(_, body)] = [(h, json.loads(b)) for (h, b), (m, p, _) in zip(fake.request_details, fake.requests) if m == "PUT" and p == CM]
    assert body["data"] == BUNDLE and body["metadata"]["resourceVersion"] == "3"


def test_a_server_error_on_the_copy_is_retried_and_nothing_is_released(fake, certs_ctl):
    fake.route("GET", PATH, 200, dep())
    fake.route("GET", CM, 500, status_body(500, "InternalError", "etcd is down"))
    with pytest.raises(errors.ServerError):
        certs_ctl.sync("ns/web")
    assert ("PUT", PATH) not in calls(fake)


def test_a_forbidden_copy_fails_the_deployment_with_403_naming_namespace_and_grant(fake, certs_ctl):
    fake.route("GET", PATH, 200, dep())
    fake.route("GET", CM, 200, copy_of(data={"root-certs.crt": "OLD"}))
    fake.route("PUT", CM, 403, status_body(403, "Forbidden", 'configmaps "root-certs" is forbidden'))
    fake.route("PUT", PATH, 200, dep(rv="6"))
    decision = certs_ctl.sync("ns/web")
    assert decision.action == FAIL
    [body] = puts(fake)
    result = body["metadata"]["initializers"]["result"]
    assert (result["code"], result["reason"], result["status"]) == (403, "Forbidden", "Failure")
    assert result["message"].startswith(
        "tproxy initializer: cannot provide the proxy CA bundle in namespace ns: update of ConfigMap ns/root-certs is forbidden"
    )
    assert "needs get, create and update on configmaps named root-certs in ns" in result["message"]
    assert body["metadata"]["initializers"]["pending"] == [{"name": NAME}]  # failed, not released
    assert "initContainers" not in body["spec"]["template"]["spec"]


def test_the_source_namespace_needs_no_copy(fake, certs_ctl):
    path = "/apis/apps/v1beta1/namespaces/tproxy-system/deployments/web"
    d = dep()
    d["metadata"]["namespace"] = "tproxy-system"
    fake.route("GET", path, 200, d)
    fake.route("PUT", path, 200, d)
    assert certs_ctl.sync("tproxy-system/web").action == INJECT
    assert not [p for _, p, _ in fake.requests if "configmaps" in p]
