"""The initializer's webhook mode: a real HTTPS server (test CA from trustme), real HTTP clients POSTing
AdmissionReview JSON the way kube-apiserver builds it (admission.k8s.io/v1 and v1beta1), loopback only.

What is checked: the answer's fields against the documented AdmissionReview response (a JSON Schema
written from k8s.io/api/admission/v1 types.go, plus the checks kube-apiserver's
VerifyAdmissionResponse makes); the patched objects against the 1.13 OpenAPI schemas
(kubernetes-validate, strict); the patch against the Initializer's own result for the same object
(one mutation, two front ends); idempotency; dryRun; conflicts; malformed bodies; the CA-bundle gate;
serving-certificate rotation with a keep-alive connection open; metrics and the audit line; the CLI.
"""

from __future__ import annotations

import base64
import copy
import http.client
import json
import os
import socket
import ssl
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jsonpatch
import jsonschema
import kubernetes_validate
import prometheus_client
import pytest
import trustme
import yaml

from initializer.config import parse_config
from initializer.mutate import INJECT, FAIL, decide
from initializer.rootcerts import CopyRefused
from initializer.webhook import PENDING, PRESENT, REFUSED, CertReloader, Webhook, WebhookController, WebhookServer

REPO = Path(__file__).resolve().parent.parent
ANN = "initializer.kubernetes.io/tproxy"
NAME = "tproxy.initializer.kubernetes.io"

# The chart's default injection config (chart/templates: the initializer ConfigMap), the tutorial's.
CONFIG = """
containers:
  - name: tproxy
    image: tproxy-sidecar:0.1.0
    imagePullPolicy: IfNotPresent
    securityContext: {privileged: true}
    env:
      - {name: NODE_NAME, valueFrom: {fieldRef: {fieldPath: spec.nodeName}}}
volumes:
  - name: ca-certs-debian
    configMap: {name: tproxy-root-certs, items: [{key: root-certs.crt, path: ca-certificates.crt}]}
volumeMounts:
  - {name: ca-certs-debian, mountPath: /etc/ssl/certs/}
envVars:
  - {name: NODE_NAME, valueFrom: {fieldRef: {fieldPath: spec.nodeName}}}
"""
CFG = parse_config(CONFIG)

# The AdmissionReview answer, from the documented fields (k8s.io/api/admission/v1 AdmissionResponse,
# metav1.Status). kubernetes-validate has no admission.k8s.io schemas (reviews are not API objects).
STATUS_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "kind": {"const": "Status"},
        "apiVersion": {"const": "v1"},
        "metadata": {"type": "object"},
        "status": {"enum": ["Success", "Failure"]},
        "message": {"type": "string"},
        "reason": {"type": "string"},
        "details": {"type": "object"},
        "code": {"type": "integer"},
    },
}
REVIEW_RESPONSE_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "response"],
    "properties": {
        "apiVersion": {"enum": ["admission.k8s.io/v1", "admission.k8s.io/v1beta1"]},
        "kind": {"const": "AdmissionReview"},
        "response": {
            "type": "object",
            "additionalProperties": False,
            "required": ["uid", "allowed"],
            "properties": {
                "uid": {"type": "string", "minLength": 1},
                "allowed": {"type": "boolean"},
                "status": STATUS_SCHEMA,
                "patch": {"type": "string", "contentEncoding": "base64", "pattern": "^[A-Za-z0-9+/]+={0,2}$"},
                "patchType": {"const": "JSONPatch"},
                "auditAnnotations": {"type": "object", "additionalProperties": {"type": "string"}},
                "warnings": {"type": "array", "items": {"type": "string"}},
            },
        },
    },
}
JSON_PATCH_SCHEMA = {  # RFC 6902
    "type": "array",
    "items": {
        "type": "object",
        "required": ["op", "path"],
        "properties": {
            "op": {"enum": ["add", "remove", "replace", "move", "copy", "test"]},
            "path": {"type": "string", "pattern": "^(/|$)"},
        },
    },
}


# ---------------------------------------------------------------------------------------------
# objects and reviews, as kube-apiserver sends them


def tutorial_deployment() -> dict:
    """examples/debian-app-locked.yaml as a 1.16+ server hands it to a webhook: apps/v1."""
    obj = yaml.safe_load((REPO / "examples" / "debian-app-locked.yaml").read_text())
    obj["apiVersion"] = "apps/v1"
    obj["metadata"]["namespace"] = "default"
    return obj


def pod(name="p", annotated=True, ns="default", **spec) -> dict:
    meta = {"name": name, "namespace": ns}
    if annotated:
        meta["annotations"] = {ANN: "true"}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": {"containers": [{"name": "app", "image": "debian"}], **spec},
    }


def review_of(obj, *, operation="CREATE", api_version="admission.k8s.io/v1", dry_run=False, namespace=None, sub_resource=""):
    """What kube-apiserver's CreateV1AdmissionReview / CreateV1beta1AdmissionReview put in a request."""
    if obj is not None and obj.get("kind") == "Pod":
        group, version, resource = "", "v1", "pods"
    else:
        group, version = (obj or {}).get("apiVersion", "apps/v1").split("/")
        resource = "deployments"
    meta = (obj or {}).get("metadata") or {}
    gvk = {"group": group, "version": version, "kind": (obj or {}).get("kind", "Deployment")}
    gvr = {"group": group, "version": version, "resource": resource}
    req = {
        "uid": str(uuid.uuid4()),
        "kind": gvk,
        "resource": gvr,
        "requestKind": gvk,
        "requestResource": gvr,
        "name": meta.get("name", ""),
        "namespace": namespace if namespace is not None else meta.get("namespace", ""),
        "operation": operation,
        "userInfo": {"username": "kubernetes-admin", "groups": ["system:masters", "system:authenticated"]},
        "object": obj,
        "oldObject": copy.deepcopy(obj) if operation == "UPDATE" else None,
        "dryRun": dry_run,
        "options": {"apiVersion": "meta.k8s.io/v1", "kind": f"{operation.title()}Options"},
    }
    if sub_resource:
        req["subResource"] = sub_resource
    return {"apiVersion": api_version, "kind": "AdmissionReview", "request": req}


def verify_like_apiserver(rev: dict, out: dict) -> dict:
    """The answer's schema and kube-apiserver's VerifyAdmissionResponse checks (mutating webhook)."""
    jsonschema.validate(out, REVIEW_RESPONSE_SCHEMA)
    assert out["apiVersion"] == rev["apiVersion"], "the answer must use the request's AdmissionReview version"
    resp = out["response"]
    assert resp["uid"] == rev["request"]["uid"]
    assert ("patch" in resp) == ("patchType" in resp), "patch and patchType go together"
    return resp


def patch_of(resp: dict) -> list:
    if "patch" not in resp:
        return []
    ops = json.loads(base64.b64decode(resp["patch"]))
    jsonschema.validate(ops, JSON_PATCH_SCHEMA)
    assert ops, "an empty patch must be left out"
    return ops


def with_server_defaults(pod_obj: dict) -> dict:
    """What the API server adds before mutating admission (defaulting), which must not count as a change."""
    p = copy.deepcopy(pod_obj)
    for c in p["spec"].get("initContainers", []) + p["spec"]["containers"]:
        c.setdefault("terminationMessagePath", "/dev/termination-log")
        c.setdefault("terminationMessagePolicy", "File")
        c.setdefault("imagePullPolicy", "IfNotPresent")
        c.setdefault("resources", {})
    for v in p["spec"].get("volumes", []):
        if "configMap" in v:
            v["configMap"].setdefault("defaultMode", 420)
    p["spec"].setdefault("restartPolicy", "Always")
    p["spec"].setdefault("dnsPolicy", "ClusterFirst")
    p["spec"].setdefault("schedulerName", "default-scheduler")
    return p


# ---------------------------------------------------------------------------------------------
# the server


class Recorder:
    def __init__(self):
        self.lines = []

    def _rec(self, level, event, **kw):
        self.lines.append({"level": level, "event": event, **kw})

    def debug(self, event, **kw):
        self._rec("debug", event, **kw)

    def info(self, event, **kw):
        self._rec("info", event, **kw)

    def warning(self, event, **kw):
        self._rec("warning", event, **kw)

    def error(self, event, **kw):
        self._rec("error", event, **kw)

    def exception(self, event, **kw):
        self._rec("error", event, **kw)

    def events(self, name):
        return [ln for ln in self.lines if ln["event"] == name]


def write_pair(ca: trustme.CA, directory: Path, *, key_of: trustme.CA | None = None) -> tuple[str, str]:
    """Write a serving certificate for localhost/127.0.0.1 (and its key) into ``directory``, replacing
    whatever is there by rename (as a Secret volume's update appears to the process)."""
    leaf = ca.issue_cert("localhost", "127.0.0.1")
    cert, key = directory / "tls.crt", directory / "tls.key"
    for path, blob in (
        (cert, leaf.cert_chain_pems[0].bytes()),
        (key, (key_of.issue_cert("localhost") if key_of else leaf).private_key_pem.bytes()),
    ):
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(blob)
        os.replace(tmp, path)
    return str(cert), str(key)


class Env:
    def __init__(
        self,
        tmp_path: Path,
        *,
        config=CFG,
        require_annotation=True,
        bundle_check=None,
        exclude=("kube-system",),
        max_body=64 * 1024,
    ):
        self.ca = trustme.CA()
        self.dir = tmp_path
        self.cert, self.key = write_pair(self.ca, tmp_path)
        self.log = Recorder()
        self.certs = CertReloader(self.cert, self.key, logger=self.log)
        self.config = config
        self.webhook = Webhook(
            config=lambda: self.config,
            annotation=ANN,
            require_annotation=require_annotation,
            exclude_namespaces=exclude,
            bundle_check=bundle_check,
            config_reason=lambda: "ConfigMap kube-system/tproxy-initializer not read yet",
            logger=self.log,
        )
        self.server = WebhookServer(
            self.webhook, self.certs, port=0, host="127.0.0.1", max_body=max_body, io_timeout=2.0, logger=self.log
        ).start()

    def ssl_context(self, ca: trustme.CA | None = None) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        (ca or self.ca).configure_trust(ctx)
        return ctx

    def connect(self, ca: trustme.CA | None = None) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection("127.0.0.1", self.server.port, context=self.ssl_context(ca), timeout=10)

    def post_raw(self, body: bytes, *, conn=None, path="/mutate", ctype="application/json", headers=None):
        own = conn is None
        conn = conn or self.connect()
        try:
            # kube-apiserver: POST <path>?timeout=10s, Content-Type and Accept application/json
            conn.request(
                "POST",
                f"{path}?timeout=10s",
                body=body,
                headers={"Content-Type": ctype, "Accept": "application/json, */*", **(headers or {})},
            )
            r = conn.getresponse()
            return r.status, r.read(), r
        finally:
            if own:
                conn.close()

    def review(self, rev: dict, conn=None) -> dict:
        status, body, _ = self.post_raw(json.dumps(rev).encode(), conn=conn)
        assert status == 200, body
        return verify_like_apiserver(rev, json.loads(body))

    def close(self):
        self.server.stop()
        self.certs.stop()


@pytest.fixture
def env(tmp_path):
    e = Env(tmp_path)
    yield e
    e.close()


def initializer_result(obj: dict) -> dict:
    """What the Initializer does with the same object (the 1.7 front end of the same mutation)."""
    pending = copy.deepcopy(obj)
    pending["metadata"]["initializers"] = {"pending": [{"name": NAME}]}
    return decide(pending, CFG, initializer_name=NAME, annotation=ANN, require_annotation=True)


# ---------------------------------------------------------------------------------------------
# the mutation, through HTTPS


@pytest.mark.parametrize("version", ["admission.k8s.io/v1", "admission.k8s.io/v1beta1"])
def test_tutorial_deployment_comes_out_locked_as_the_initializer_would_lock_it(env, version):
    obj = tutorial_deployment()
    rev = review_of(obj, api_version=version)
    resp = env.review(rev)
    assert resp["allowed"] is True
    patched = jsonpatch.apply_patch(obj, patch_of(resp))
    kubernetes_validate.validate(patched, "1.13.0", strict=True)
    want = initializer_result(obj)
    assert want.action == INJECT
    assert patched["spec"] == want.obj["spec"], "the webhook and the Initializer must inject the same"
    tpl = patched["spec"]["template"]
    assert tpl["metadata"]["annotations"][ANN] == "true", "podwatch selects the pods by this"
    assert [c["name"] for c in tpl["spec"]["initContainers"]] == ["tproxy"]
    assert tpl["spec"]["containers"][0]["volumeMounts"] == [{"name": "ca-certs-debian", "mountPath": "/etc/ssl/certs/"}]


def test_pod_from_the_injected_template_and_a_reinvocation_get_no_second_patch(env):
    obj = tutorial_deployment()
    locked = jsonpatch.apply_patch(obj, patch_of(env.review(review_of(obj))))
    # reinvocationPolicy: IfNeeded calls us again with our own output (possibly after other webhooks)
    again = env.review(review_of(locked))
    assert again["allowed"] is True and "patch" not in again and "patchType" not in again
    # the ReplicaSet controller creates Pods from the injected template; the server defaults them first
    tpl = locked["spec"]["template"]
    p = with_server_defaults(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {**copy.deepcopy(tpl["metadata"]), "generateName": "debian-app-locked-5d9c-"},
            "spec": copy.deepcopy(tpl["spec"]),
        }
    )
    resp = env.review(review_of(p, namespace="default"))
    assert resp["allowed"] is True and "patch" not in resp
    line = env.log.events("admission_review")[-1]
    assert line["outcome"] == "unchanged" and line["name"] == "debian-app-locked-5d9c-"


def test_annotated_bare_pod_is_injected_like_a_template(env):
    """Jobs, StatefulSets, DaemonSets, bare pods and a rollout restart's pods all arrive as Pod creates."""
    p = pod("job-x-abcde", initContainers=[{"name": "setup", "image": "busybox"}])
    resp = env.review(review_of(p))
    patched = jsonpatch.apply_patch(p, patch_of(resp))
    kubernetes_validate.validate(patched, "1.13.0", strict=True)
    assert [c["name"] for c in patched["spec"]["initContainers"]] == ["tproxy", "setup"], "the lock runs first"
    assert patched["spec"]["initContainers"][1]["volumeMounts"][0]["mountPath"] == "/etc/ssl/certs/"
    assert patched["spec"]["volumes"][0]["name"] == "ca-certs-debian"
    # the same injection as the Initializer's, on a template holding the same pod spec
    d = tutorial_deployment()
    d["spec"]["template"]["spec"] = copy.deepcopy(p["spec"])
    assert patched["spec"] == initializer_result(d).obj["spec"]["template"]["spec"]


@pytest.mark.parametrize(
    "case, rev, why",
    [
        ("pod without the annotation", lambda: review_of(pod(annotated=False)), "annotation"),
        (
            "pod annotated false",
            lambda: review_of({**pod(), "metadata": {"name": "p", "namespace": "default", "annotations": {ANN: "false"}}}),
            "'false'",
        ),
        (
            "deployment without the annotation",
            lambda: review_of({**tutorial_deployment(), "metadata": {"name": "d"}}, namespace="default"),
            "missing",
        ),
        ("excluded namespace", lambda: review_of(pod(ns="kube-system")), "excluded"),
        ("pod update", lambda: review_of(pod(), operation="UPDATE"), "UPDATE"),
        (
            "pod delete",
            lambda: {
                **review_of(pod(), operation="DELETE"),
                "request": {**review_of(pod(), operation="DELETE")["request"], "object": None},
            },
            "DELETE",
        ),
        (
            "status subresource",
            lambda: review_of(tutorial_deployment(), operation="UPDATE", sub_resource="status"),
            "subresource",
        ),
        (
            "another kind",
            lambda: review_of(
                {
                    "apiVersion": "apps/v1",
                    "kind": "StatefulSet",
                    "metadata": {"name": "s", "namespace": "default", "annotations": {ANN: "true"}},
                }
            ),
            "not mutated",
        ),
    ],
)
def test_objects_not_ours_to_mutate_are_allowed_untouched(env, case, rev, why):
    resp = env.review(rev())
    assert resp == {"uid": resp["uid"], "allowed": True}, case
    assert why in env.log.events("admission_review")[-1]["reason"]


def test_deployment_update_is_injected_so_annotating_or_editing_relocks(env):
    d = tutorial_deployment()
    resp = env.review(review_of(d, operation="UPDATE"))
    assert patch_of(resp), "an annotated Deployment updated without the lock gets it back"


def test_conflict_is_denied_with_the_initializers_result(env):
    d = tutorial_deployment()
    d["spec"]["template"]["spec"]["volumes"] = [{"name": "ca-certs-debian", "emptyDir": {}}]
    resp = env.review(review_of(d))
    want = initializer_result(d)
    assert want.action == FAIL
    assert resp["allowed"] is False and "patch" not in resp
    assert resp["status"] == want.obj["metadata"]["initializers"]["result"]
    assert resp["status"]["code"] == 422 and resp["status"]["message"].startswith("tproxy initializer: ")
    assert "spec.template.spec.volumes already has volume 'ca-certs-debian'" in resp["status"]["message"]
    # the same conflict on a Pod names the Pod's own field
    p = pod(volumes=[{"name": "ca-certs-debian", "emptyDir": {}}])
    resp = env.review(review_of(p))
    assert resp["allowed"] is False
    assert "spec.volumes already has volume 'ca-certs-debian'" in resp["status"]["message"]
    assert not resp["status"]["message"].startswith("tproxy initializer: spec.template")
    line = env.log.events("admission_review")[-1]
    assert line["outcome"] == "denied" and line["allowed"] is False and line["level"] == "warning"


def test_dry_run_gets_the_same_answer_and_is_marked_in_the_audit_line(env):
    obj = tutorial_deployment()
    real = env.review(review_of(obj))
    dry = env.review(review_of(obj, dry_run=True))
    assert patch_of(dry) == patch_of(real)
    lines = env.log.events("admission_review")[-2:]
    assert [ln["dry_run"] for ln in lines] == [False, True]


def test_without_a_config_opted_in_objects_are_refused_and_others_pass(tmp_path):
    e = Env(tmp_path, config=None)
    try:
        resp = e.review(review_of(tutorial_deployment()))
        assert resp["allowed"] is False and resp["status"]["code"] == 503
        assert "no valid injection config" in resp["status"]["message"]
        assert "not read yet" in resp["status"]["message"]
        assert e.review(review_of(pod(annotated=False)))["allowed"] is True
    finally:
        e.close()


@pytest.mark.exclusive  # asserts the review's duration_ms: a timing, so not under parallel load
def test_audit_line_and_metrics_per_review(env):
    def count(outcome):
        return (
            prometheus_client.REGISTRY.get_sample_value(
                "tproxy_initializer_webhook_reviews_total", {"kind": "Deployment", "operation": "CREATE", "outcome": outcome}
            )
            or 0.0
        )

    before = count("injected")
    rev = review_of(tutorial_deployment())
    resp = env.review(rev)
    assert count("injected") == before + 1
    line = env.log.events("admission_review")[-1]
    assert line["uid"] == rev["request"]["uid"] and line["kind"] == "apps/v1/Deployment"
    assert (line["namespace"], line["name"], line["operation"]) == ("default", "debian-app-locked", "CREATE")
    assert line["allowed"] is True and line["outcome"] == "injected" and line["reason"] == "injected"
    assert line["patch_bytes"] == len(base64.b64decode(resp["patch"])) and line["patch_ops"] >= 1
    assert line["duration_ms"] < 1000


# ---------------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize(
    "body, message",
    [
        (b"{not json", "not JSON"),
        (b"[1, 2]", "got a JSON list"),
        (
            json.dumps({"apiVersion": "admission.k8s.io/v2", "kind": "AdmissionReview", "request": {}}).encode(),
            "unsupported apiVersion 'admission.k8s.io/v2'",
        ),
        (json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "Pod"}).encode(), "expected kind AdmissionReview"),
        (json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}).encode(), "no request object"),
        (json.dumps({**review_of(pod()), "request": {**review_of(pod())["request"], "uid": ""}}).encode(), "request.uid"),
        (
            json.dumps({**review_of(pod()), "request": {**review_of(pod())["request"], "object": None}}).encode(),
            "request.object must be an object for CREATE",
        ),
        (
            json.dumps({**review_of(pod()), "request": {**review_of(pod())["request"], "operation": "PATCH"}}).encode(),
            "request.operation",
        ),
        (
            json.dumps({**review_of(pod()), "request": {**review_of(pod())["request"], "dryRun": "yes"}}).encode(),
            "request.dryRun must be a boolean",
        ),
        (
            json.dumps({**review_of(pod()), "request": {**review_of(pod())["request"], "kind": "Pod"}}).encode(),
            "request.kind must be an object",
        ),
        (b"[" * 30000 + b"]" * 30000, "nested too deeply"),
    ],
)
def test_malformed_review_is_400_with_a_clear_message_and_the_connection_survives(env, body, message):
    conn = env.connect()
    try:
        status, text, _ = env.post_raw(body, conn=conn)
        assert status == 400
        assert text.decode().startswith("tproxy webhook: malformed AdmissionReview: ") and message in text.decode()
        # the keep-alive connection still answers the next (good) review
        assert env.review(review_of(pod()), conn=conn)["allowed"] is True
    finally:
        conn.close()


def test_http_level_errors(env):
    good = json.dumps(review_of(pod())).encode()
    status, text, _ = env.post_raw(good, ctype="text/plain")
    assert status == 415 and b"application/json" in text
    status, text, _ = env.post_raw(good, path="/other")
    assert status == 404 and b"/mutate" in text
    conn = env.connect()
    conn.request("GET", "/mutate")
    r = conn.getresponse()
    assert r.status == 405 and b"POST" in r.read()
    conn.close()


def test_huge_body_is_413_without_being_read(env):
    """The server must not buffer what it will refuse: a declared length over the limit is refused at once,
    before the client has sent it."""
    conn = env.connect()
    conn.putrequest("POST", "/mutate")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(env.server.max_body + 1))
    conn.endheaders()
    r = conn.getresponse()
    assert r.status == 413 and b"more than" in r.read()
    assert r.getheader("Connection") == "close"
    conn.close()
    assert (
        prometheus_client.REGISTRY.get_sample_value("tproxy_initializer_webhook_bad_requests_total", {"reason": "too_large"}) >= 1
    )


def test_a_kept_alive_connection_outlives_the_request_timeout(env):
    """kube-apiserver keeps connections open between reviews (and closes them itself after 90 s idle):
    a connection idle for longer than the per-request I/O timeout must still answer."""
    conn = env.connect()
    try:
        assert env.review(review_of(pod()), conn=conn)["allowed"] is True
        time.sleep(env.server.io_timeout + 0.5)
        assert patch_of(env.review(review_of(pod()), conn=conn))
    finally:
        conn.close()


def test_a_client_that_sends_nothing_does_not_delay_others(env):
    """A connection that never completes its handshake (or its request) holds only its own thread."""
    idle = [socket.create_connection(("127.0.0.1", env.server.port)) for _ in range(5)]
    try:
        start = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda _: env.review(review_of(tutorial_deployment())), range(16)))
        assert all(patch_of(r) for r in results)
        assert time.monotonic() - start < 5, "reviews must be answered well within kube-apiserver's 10 s"
    finally:
        for s in idle:
            s.close()


# ---------------------------------------------------------------------------------------------
# the proxy CA bundle (copies made by the background loop, never during admission)


def _gate(states: dict) -> WebhookController:
    c = WebhookController(
        None,
        root_certs_configmap="tproxy-root-certs",
        root_certs_namespace="tproxy-system",
        exclude_namespaces=["kube-system"],
        logger=Recorder(),
    )
    for ns, (state, exc) in states.items():
        c._set_state(ns, state, exc)
    return c


def test_bundle_gate_refuses_pods_until_the_copy_is_confirmed_and_refused_copies_for_both_kinds(tmp_path):
    refused = CopyRefused(
        "cannot provide the proxy CA bundle in namespace taken: ConfigMap taken/tproxy-root-certs "
        "exists and is not a copy of tproxy-system/tproxy-root-certs (...): delete or rename it",
        409,
        "AlreadyExists",
    )
    gate = _gate({"ok": (PRESENT, None), "new": (PENDING, None), "taken": (REFUSED, refused)})
    e = Env(tmp_path, bundle_check=gate.bundle_check)
    try:

        def answer(obj, ns):
            obj = copy.deepcopy(obj)
            obj["metadata"]["namespace"] = ns
            return e.review(review_of(obj))

        assert patch_of(answer(pod(), "ok"))
        assert patch_of(answer(tutorial_deployment(), "new")), "a Deployment mounts nothing; its pods are checked"
        r = answer(pod(), "new")
        assert r["allowed"] is False and r["status"]["code"] == 503
        assert "not confirmed in namespace new yet" in r["status"]["message"]
        for obj in (pod(), tutorial_deployment()):
            r = answer(obj, "taken")
            assert r["allowed"] is False
            assert r["status"]["code"] == 409 and r["status"]["reason"] == "AlreadyExists"
            assert r["status"]["message"] == "tproxy initializer: " + str(refused), "the Initializer's message"
        # the source's own namespace and unopted objects never wait for a copy
        assert patch_of(answer(pod(), "tproxy-system"))
        assert answer(pod(annotated=False), "never-seen")["allowed"] is True
    finally:
        e.close()


# ---------------------------------------------------------------------------------------------
# the serving certificate


def _handshake_fails(env, ca) -> bool:
    try:
        env.review(review_of(pod()), conn=env.connect(ca))
    except ssl.SSLCertVerificationError:
        return True
    return False


def test_rotated_certificate_serves_new_connections_and_keeps_open_ones(env):
    old_ca = env.ca
    kept = env.connect(old_ca)
    assert env.review(review_of(pod()), conn=kept)["allowed"] is True
    new_ca = trustme.CA()
    write_pair(new_ca, env.dir)
    assert env.certs.check() is True
    # new connections get the new certificate: trusted with the new CA only
    assert env.review(review_of(pod()), conn=env.connect(new_ca))["allowed"] is True
    assert _handshake_fails(env, old_ca)
    # the keep-alive connection accepted before the rotation was not dropped
    assert patch_of(env.review(review_of(tutorial_deployment()), conn=kept))
    kept.close()
    assert env.log.events("serving_certificate_reloaded")


def test_a_broken_certificate_update_keeps_the_last_good_pair(env):
    errors_before = prometheus_client.REGISTRY.get_sample_value("tproxy_initializer_webhook_certificate_errors_total") or 0
    other = trustme.CA()
    write_pair(other, env.dir, key_of=other)  # a certificate with the wrong key (a half-done rotation)
    assert env.certs.check() is False
    assert env.certs.check() is False, "the same broken pair is reported once, not on every poll"
    assert prometheus_client.REGISTRY.get_sample_value("tproxy_initializer_webhook_certificate_errors_total") == errors_before + 1
    assert env.review(review_of(pod()))["allowed"] is True, "still served with the old pair (old CA)"
    write_pair(other, env.dir)  # the rotation completes
    assert env.certs.check() is True
    assert env.review(review_of(pod()), conn=env.connect(other))["allowed"] is True


def test_reload_thread_picks_up_a_rotation(env):
    env.certs.start(0.05)
    new_ca = trustme.CA()
    write_pair(new_ca, env.dir)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not env.log.events("serving_certificate_reloaded"):
        time.sleep(0.02)
    assert env.review(review_of(pod()), conn=env.connect(new_ca))["allowed"] is True


# ---------------------------------------------------------------------------------------------
# the command line


def _run(*args, timeout=30):
    return subprocess.run([sys.executable, "-m", "initializer", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)


def test_webhook_help_lists_every_flag():
    out = _run("webhook", "--help")
    assert out.returncode == 0, out.stderr
    for flag in (
        "-tls-cert-file",
        "-tls-private-key-file",
        "-port",
        "-host",
        "-path",
        "-max-request-bytes",
        "-cert-reload-interval",
        "-annotation",
        "-configmap",
        "-namespace",
        "-require-annotation",
        "-kubeconfig",
        "-metrics-port",
        "-exclude-namespaces",
        "-root-certs-configmap",
        "-root-certs-namespace",
        "-resync-period",
        "-log-level",
    ):
        assert flag in out.stdout, flag
    assert "-initializer-name" not in out.stdout and "-workers" not in out.stdout
    assert "webhook" in _run("--help").stdout, "the Initializer's help points at the webhook mode"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--port", "1"], "the following arguments are required: -tls-cert-file"),
        (["--tls-cert-file", "c", "--tls-private-key-file", "k", "--tls-cert"], "unrecognized arguments: --tls-cert"),
        (["--tls-cert-file", "c", "--tls-private-key-file", "k", "--port", "70000"], "port must be 0..65535"),
        (["--tls-cert-file", "c", "--tls-private-key-file", "k", "--path", "mutate"], "--path must start with '/'"),
        (["--tls-cert-file", "c", "--tls-private-key-file", "k", "-initializer-name", "x"], "unrecognized arguments"),
    ],
)
def test_bad_webhook_flags_exit_2_with_a_clear_message(args, message):
    out = _run("webhook", *args)
    assert out.returncode == 2, out
    assert message in out.stderr


def test_unusable_certificate_exits_1_saying_why(tmp_path):
    out = _run(
        "webhook",
        "--tls-cert-file",
        str(tmp_path / "missing.crt"),
        "--tls-private-key-file",
        str(tmp_path / "missing.key"),
        "--metrics-port",
        "0",
    )
    assert out.returncode == 1
    assert "cannot load the serving certificate" in out.stderr and "missing.crt" in out.stderr


def test_objects_injected_under_an_older_config_keep_their_lock_and_are_not_refused(env):
    """After the sidecar image changes in the config, pods of templates injected before must still be
    created (a refusal would stop every locked workload from scaling), and updates of those Deployments
    still pass; a *create* of such a Deployment is refused, as the Initializer refuses it."""
    old = jsonpatch.apply_patch(tutorial_deployment(), patch_of(env.review(review_of(tutorial_deployment()))))
    env.config = parse_config(CONFIG.replace("tproxy-sidecar:0.1.0", "tproxy-sidecar:0.2.0"))
    tpl = old["spec"]["template"]
    p = with_server_defaults(
        {"apiVersion": "v1", "kind": "Pod", "metadata": copy.deepcopy(tpl["metadata"]), "spec": copy.deepcopy(tpl["spec"])}
    )
    for rev in (review_of(p, namespace="default"), review_of(old, operation="UPDATE")):
        resp = env.review(rev)
        assert resp["allowed"] is True and "patch" not in resp
        line = env.log.events("admission_review")[-1]
        assert line["outcome"] == "kept" and "init container 'tproxy' with a different definition" in line["reason"]
    resp = env.review(review_of(old))
    assert resp["allowed"] is False and "init container 'tproxy'" in resp["status"]["message"]
    # a conflict that is not about our init container is still refused on a Pod
    p["spec"]["volumes"] = [{"name": "ca-certs-debian", "emptyDir": {}}]
    p["spec"]["initContainers"] = []
    assert env.review(review_of(p, namespace="default"))["allowed"] is False
