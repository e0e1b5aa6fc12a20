"""kubesim's MutatingAdmissionWebhook (kubesim/apiserver/webhooks.py) in 1.13 mode: v1beta1 configurations
called over HTTPS on create and update, as kube-apiserver calls them, against a small scripted HTTPS
webhook (each path one behaviour) and against the real ``python3 -m initializer webhook``. The fields
1.13 did not have (objectSelector, reinvocationPolicy, ...) are exercised in 1.28 mode with v1
configurations; 1.28's own specifics are in test_kubesim_modern.py."""

from __future__ import annotations

import base64
import copy
import json
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import trustme

from controllerkit import errors
from controllerkit.kube import Client, resource_path
from kubesim.apiserver import webhooks
from kubesim.testing import wait_for

REPO = Path(__file__).resolve().parent.parent
MWC = "/apis/admissionregistration.k8s.io/v1beta1/mutatingwebhookconfigurations"
CM = resource_path("v1", "configmaps", "default")
DEPLOY_V1 = resource_path("apps/v1", "deployments", "default")
DEPLOY_EXT = resource_path("extensions/v1beta1", "deployments", "default")


class ScriptedWebhook:
    """HTTPS on 127.0.0.1; POST /<behaviour>: patch (label ``patched-by``=name of the path's query),
    deny, slow (sleeps ``self.delay``), baduid, notjson, allow. Every review is recorded."""

    def __init__(self, ca: trustme.CA):
        self.reviews: list[dict] = []
        self.delay = 0.0
        outer = self
        cert = ca.issue_cert("localhost", "127.0.0.1")

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, *a):
                pass

            def do_POST(self):
                review = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.reviews.append({"path": self.path, "review": review})
                req = review["request"]
                what = self.path.lstrip("/").split("?")[0]
                resp = {"uid": req["uid"], "allowed": True}
                if what.startswith("patch"):
                    label = what.split("-", 1)[1] if "-" in what else "yes"
                    labels = req["object"]["metadata"].get("labels") or {}
                    ops = [{"op": "add", "path": "/metadata/labels", "value": {}}] if not labels else []
                    ops.append({"op": "add", "path": f"/metadata/labels/patched-{label}", "value": str(len(labels))})
                    resp.update(patchType="JSONPatch", patch=base64.b64encode(json.dumps(ops).encode()).decode())
                elif what == "deny":
                    resp = {
                        "uid": req["uid"],
                        "allowed": False,
                        "status": {"message": "no thanks", "code": 403, "reason": "Forbidden"},
                    }
                elif what == "slow":
                    time.sleep(outer.delay)
                elif what == "baduid":
                    resp["uid"] = "not-the-uid"
                body = (
                    b"not json"
                    if what == "notjson"
                    else json.dumps({"apiVersion": review["apiVersion"], "kind": "AdmissionReview", "response": resp}).encode()
                )
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.httpd.daemon_threads = True
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        cert.configure_cert(ctx)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def url(self, what: str) -> str:
        return f"https://localhost:{self.port}/{what}"

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


@pytest.fixture(scope="module")
def hook(ca):
    h = ScriptedWebhook(ca)
    yield h
    h.stop()


def _client(srv):
    c = Client.from_url(srv.url, token=srv.admin_token, ca_file=srv.ca_file)
    c.api_client.set_default_header("X-Kubesim-No-Faults", "1")
    c.srv = srv
    return c


@pytest.fixture
def api(kubesim_server_factory):
    return _client(kubesim_server_factory(k8s_version="1.13"))


@pytest.fixture
def api128(kubesim_server_factory):
    return _client(kubesim_server_factory(k8s_version="1.28"))


MWC_V1 = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"


def config(name: str, *hooks: dict, version: str = "v1beta1") -> dict:
    return {
        "apiVersion": f"admissionregistration.k8s.io/{version}",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": list(hooks),
    }


def webhook(
    ca,
    url: str,
    name: str = "h.example.com",
    *,
    resources=("configmaps",),
    groups=("",),
    versions=("v1",),
    ops=("CREATE", "UPDATE"),
    **extra,
) -> dict:
    return {
        "name": name,
        "clientConfig": {"url": url, "caBundle": base64.b64encode(ca.cert_pem.bytes()).decode()},
        "rules": [
            {"operations": list(ops), "apiGroups": list(groups), "apiVersions": list(versions), "resources": list(resources)}
        ],
        **extra,
    }


def webhook_v1(ca, url: str, name: str = "h.example.com", **kw) -> dict:
    return webhook(ca, url, name, **{"sideEffects": "None", "admissionReviewVersions": ["v1"], **kw})


def cm(name: str, **labels) -> dict:
    meta = {"name": name}
    if labels:
        meta["labels"] = labels
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {"k": "v"}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def status_of(exc) -> dict:
    return exc.value.status


def test_a_patch_is_applied_on_create_and_update_and_the_review_is_v1beta1(api, hook, ca):
    api.create(MWC, config("patcher", webhook(ca, hook.url("patch"), failurePolicy="Fail")))
    out = api.create(CM, cm("a"))
    assert out["metadata"]["labels"] == {"patched-yes": "0"}
    review = hook.reviews[-1]["review"]
    assert review["apiVersion"] == "admission.k8s.io/v1beta1"
    req = review["request"]
    assert (req["operation"], req["kind"], req["resource"], req["namespace"], req["name"]) == (
        "CREATE",
        {"group": "", "version": "v1", "kind": "ConfigMap"},
        {"group": "", "version": "v1", "resource": "configmaps"},
        "default",
        "a",
    )
    assert req["userInfo"]["username"] == "admin" and req["object"]["data"] == {"k": "v"} and not req["dryRun"]
    assert api.get(f"{CM}/a")["metadata"]["labels"] == {"patched-yes": "0"}  # stored mutated
    cur = api.get(f"{CM}/a")
    cur["metadata"]["labels"] = {"x": "1"}
    out = api.replace(f"{CM}/a", cur)
    assert out["metadata"]["labels"] == {"x": "1", "patched-yes": "1"}
    req = hook.reviews[-1]["review"]["request"]
    assert req["operation"] == "UPDATE" and req["oldObject"]["metadata"]["labels"] == {"patched-yes": "0"}


def test_denial_and_failures_have_the_real_servers_messages_and_store_nothing(api, hook, ca):
    api.create(MWC, config("denier", webhook(ca, hook.url("deny"), "deny.example.com")))
    with pytest.raises(errors.ApiError) as e:
        api.create(CM, cm("denied"))
    st = status_of(e)
    assert st["code"] == 403 and st["message"] == 'admission webhook "deny.example.com" denied the request: no thanks'
    api.delete(f"{MWC}/denier")
    api.create(
        MWC,
        config(
            "bad",
            webhook(ca, hook.url("baduid"), "uid.example.com", failurePolicy="Fail"),
            webhook(ca, hook.url("notjson"), "json.example.com", failurePolicy="Fail"),
        ),
    )
    # v1beta1 reviews: 1.13 did not check the uid; a body that is not JSON fails the call
    with pytest.raises(errors.ApiError) as e:
        api.create(CM, cm("garbled"))
    st = status_of(e)
    assert st["code"] == 500 and st["reason"] == "InternalError"
    assert st["message"].startswith(
        'Internal error occurred: failed calling webhook "json.example.com": received invalid webhook response'
    )
    with pytest.raises(errors.NotFound):
        api.get(f"{CM}/garbled")


def test_failure_policy_fail_refuses_and_ignore_lets_through(api, hook, ca):
    port = free_port()  # nothing listens there
    url = f"https://localhost:{port}/x"
    api.create(MWC, config("down", webhook(ca, url, "down.example.com", failurePolicy="Fail")))
    with pytest.raises(errors.ApiError) as e:
        api.create(CM, cm("refused"))
    st = status_of(e)
    assert st["code"] == 500
    assert st["message"].startswith(f'Internal error occurred: failed calling webhook "down.example.com": Post {url}:')
    with pytest.raises(errors.NotFound):
        api.get(f"{CM}/refused")
    cfg = api.get(f"{MWC}/down")
    cfg["webhooks"][0]["failurePolicy"] = "Ignore"
    api.replace(f"{MWC}/down", cfg)
    assert api.create(CM, cm("ignored"))["metadata"]["name"] == "ignored"


def test_the_default_failure_policy_of_v1beta1_is_ignore(api, ca):
    out = api.create(MWC, config("defaults", webhook(ca, "https://localhost:1/x")))
    assert out["webhooks"][0]["failurePolicy"] == "Ignore" and out["webhooks"][0]["sideEffects"] == "Unknown"
    assert api.create(CM, cm("through"))["metadata"]["name"] == "through"


def test_a_wrong_ca_bundle_fails_verification(api, hook):
    other = trustme.CA()
    api.create(MWC, config("wrongca", webhook(other, hook.url("patch"), "ca.example.com", failurePolicy="Fail")))
    with pytest.raises(errors.ApiError) as e:
        api.create(CM, cm("unverified"))
    assert status_of(e)["message"] == (
        'Internal error occurred: failed calling webhook "ca.example.com": '
        f"Post {hook.url('patch')}: x509: certificate signed by unknown authority"
    )


def test_a_slow_webhook_times_out_instead_of_hanging(api, hook, ca, monkeypatch):
    # 1.13's webhook client has a fixed 30 s timeout; make it short to see the error it gives
    hook.delay = 3.0
    monkeypatch.setattr(webhooks.Dispatcher, "_timeout", lambda self, hook_: 0.5, raising=False)
    api.create(MWC, config("slow", webhook(ca, hook.url("slow"), "slow.example.com", failurePolicy="Fail")))
    with pytest.raises(errors.ApiError) as e:
        api.create(CM, cm("late"))
    assert status_of(e)["message"] == (
        f'Internal error occurred: failed calling webhook "slow.example.com": Post {hook.url("slow")}: '
        f"net/http: request canceled (Client.Timeout exceeded while awaiting headers)"
    )
    hook.delay = 0.0


def test_fields_1_13_did_not_have_are_dropped_as_its_decoder_did(api, ca):
    out = api.create(
        MWC,
        config(
            "later",
            webhook(
                ca,
                "https://localhost:1/x",
                objectSelector={"matchLabels": {"a": "b"}},
                matchPolicy="Equivalent",
                reinvocationPolicy="IfNeeded",
                timeoutSeconds=5,
                admissionReviewVersions=["v1beta1"],
            ),
        ),
    )
    w = out["webhooks"][0]
    for key in ("objectSelector", "matchPolicy", "reinvocationPolicy", "timeoutSeconds", "admissionReviewVersions"):
        assert key not in w, key
    assert "scope" not in w["rules"][0]


def test_rules_namespace_and_object_selectors_choose_what_is_sent(api128, hook, ca):
    api = api128
    api.create(resource_path("v1", "namespaces"), {"metadata": {"name": "team", "labels": {"inject": "on"}}})
    api.create(
        MWC_V1,
        config(
            "selective",
            webhook_v1(
                ca,
                hook.url("patch-ns"),
                "ns.example.com",
                namespaceSelector={"matchExpressions": [{"key": "inject", "operator": "In", "values": ["on"]}]},
            ),
            webhook_v1(ca, hook.url("patch-obj"), "obj.example.com", objectSelector={"matchLabels": {"pick": "me"}}),
            webhook_v1(ca, hook.url("patch-secrets"), "sec.example.com", resources=("secrets",)),
            webhook_v1(ca, hook.url("patch-deletes"), "del.example.com", ops=("DELETE",)),
            version="v1",
        ),
    )
    plain = api.create(CM, cm("plain"))
    assert not plain["metadata"].get("labels")
    team = api.create(resource_path("v1", "configmaps", "team"), cm("t"))
    assert team["metadata"]["labels"] == {"patched-ns": "0"}
    assert hook.reviews[-1]["review"]["apiVersion"] == "admission.k8s.io/v1"
    picked = api.create(CM, cm("picked", pick="me"))
    assert picked["metadata"]["labels"] == {"pick": "me", "patched-obj": "1"}


def test_match_policy_equivalent_sends_the_version_the_rule_names(api, hook, ca):
    """As a 1.15-1.21 server, which had matchPolicy and still served extensions/v1beta1 Deployments: the
    1.13 server here, its stored configuration given the field (1.13's decoder drops it)."""
    dep = {
        "apiVersion": "extensions/v1beta1",
        "kind": "Deployment",
        "metadata": {"name": "d"},
        "spec": {
            "template": {"metadata": {"labels": {"app": "d"}}, "spec": {"containers": [{"name": "c", "image": "debian:12"}]}}
        },
    }
    api.create(
        MWC,
        config(
            "apps",
            webhook(ca, hook.url("patch-exact"), "exact.example.com", groups=("apps",), resources=("deployments",)),
            webhook(ca, hook.url("patch-equiv"), "equiv.example.com", groups=("apps",), resources=("deployments",)),
        ),
    )
    store = api.srv.store
    with store.lock:
        cfg = copy.deepcopy(store.get("mutatingwebhookconfigurations", "", "apps"))
        cfg["webhooks"][1]["matchPolicy"] = "Equivalent"
        store.update("mutatingwebhookconfigurations", cfg)
    out = api.create(DEPLOY_EXT, dep)
    assert out["metadata"]["labels"] == {"app": "d", "patched-equiv": "1"}
    req = hook.reviews[-1]["review"]["request"]
    assert req["kind"] == {"group": "apps", "version": "v1", "kind": "Deployment"}
    assert req["object"]["apiVersion"] == "apps/v1"


def test_reinvocation_if_needed_calls_an_earlier_webhook_again_once(api128, hook, ca):
    api = api128
    api.create(
        MWC_V1,
        config("a-first", webhook_v1(ca, hook.url("allow"), "first.example.com", reinvocationPolicy="IfNeeded"), version="v1"),
    )
    api.create(MWC_V1, config("b-second", webhook_v1(ca, hook.url("patch-second"), "second.example.com"), version="v1"))
    n = len(hook.reviews)
    api.create(CM, cm("re"))
    assert [r["path"] for r in hook.reviews[n:]] == ["/allow?timeout=10s", "/patch-second?timeout=10s", "/allow?timeout=10s"]
    assert hook.reviews[-1]["review"]["request"]["object"]["metadata"]["labels"] == {"patched-second": "0"}


def test_dry_run_needs_webhooks_without_side_effects_and_stores_nothing(api, hook, ca):
    api.create(MWC, config("effects", webhook(ca, hook.url("patch"), "fx.example.com")))
    with pytest.raises(errors.ApiError) as e:
        api.create(CM, cm("dry"), dryRun="All")
    st = status_of(e)
    assert st["code"] == 400 and st["message"] == 'admission webhook "fx.example.com" does not support dry run'
    cfg = api.get(f"{MWC}/effects")
    cfg["webhooks"][0]["sideEffects"] = "None"
    api.replace(f"{MWC}/effects", cfg)
    out = api.create(CM, cm("dry"), dryRun="All")
    assert out["metadata"]["labels"] == {"patched-yes": "0"} and hook.reviews[-1]["review"]["request"]["dryRun"]
    with pytest.raises(errors.NotFound):
        api.get(f"{CM}/dry")
    with pytest.raises(errors.ApiError) as e:
        api.create(CM, cm("dry"), dryRun="Some")
    assert 'dryRun: Unsupported value: "Some"' in status_of(e)["message"]


def test_a_webhook_configuration_is_never_sent_to_webhooks(api, hook, ca):
    api.create(
        MWC,
        config(
            "all",
            webhook(
                ca, hook.url("deny"), "all.example.com", groups=("*",), versions=("*",), resources=("*",), failurePolicy="Fail"
            ),
        ),
    )
    api.create(MWC, config("more", webhook(ca, hook.url("deny"), "more.example.com")))  # not refused
    with pytest.raises(errors.ApiError):
        api.create(CM, cm("nope"))


# ---- the real webhook server -----------------------------------------------------------------


def test_the_tutorial_deployment_comes_out_locked_through_the_real_initializer_webhook(api, ca, tmp_path):
    from test_initializer_webhook import CONFIG, write_pair

    srv = api.srv
    api.create(
        resource_path("v1", "configmaps", "kube-system"), {"metadata": {"name": "tproxy-initializer"}, "data": {"config": CONFIG}}
    )
    kubeconfig = srv.write_kubeconfig(str(tmp_path / "kc"))
    cert, key = write_pair(ca, tmp_path)
    port, mport = free_port(), free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "initializer",
            "webhook",
            "--kubeconfig",
            kubeconfig,
            "--tls-cert-file",
            cert,
            "--tls-private-key-file",
            key,
            "--port",
            str(port),
            "--host",
            "127.0.0.1",
            "--metrics-port",
            str(mport),
            "--metrics-host",
            "127.0.0.1",
            "-configmap",
            "tproxy-initializer",
            "-namespace",
            "kube-system",
            "-require-annotation",
            "--exclude-namespaces",
            "kube-system",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        api.create(
            MWC,
            config(
                "tproxy",
                webhook(
                    ca,
                    f"https://localhost:{port}/mutate",
                    "tproxy.example.com",
                    groups=("apps", "extensions"),
                    versions=("*",),
                    resources=("deployments",),
                    failurePolicy="Fail",
                    sideEffects="None",
                ),
            ),
        )
        import yaml

        docs = [d for d in yaml.safe_load_all((REPO / "examples" / "debian-app-locked.yaml").read_text()) if d]
        dep = next(d for d in docs if d["kind"] == "Deployment")
        path = resource_path(dep["apiVersion"], "deployments", "default")

        def created():
            try:
                return api.create(path, dep)
            except errors.ApiError as e:  # the webhook still starting: refused, nothing stored
                assert "failed calling webhook" in e.message
                return None

        out = wait_for(created, timeout=30, interval=0.2, what="the create admitted by the running webhook")
        spec = out["spec"]["template"]["spec"]
        assert [c["name"] for c in spec.get("initContainers") or []] == ["tproxy"]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)
