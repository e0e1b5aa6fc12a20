"""Webhook mode's background half against kubesim's API server over HTTPS: the injection ConfigMap read
and hot-reloaded, the CA bundle copied into namespaces as they appear (never during admission), and
``python3 -m initializer webhook`` run as a process answering reviews over HTTPS.

kubesim does not call webhooks itself yet (its modern mode comes in a later step), so the reviews are
POSTed by the test, as kube-apiserver would.
"""

from __future__ import annotations

import functools
import json
import signal
import socket
import ssl
import subprocess
import sys
import urllib.request
from pathlib import Path

import jsonpatch
import pytest
import trustme

from controllerkit import errors
from controllerkit.kube import Client, resource_path
from initializer.rootcerts import COPY_OF_ANNOTATION
from initializer.webhook import PRESENT, REFUSED, Webhook, WebhookController
from kubesim.testing import wait_for
from test_initializer_webhook import CONFIG, Recorder, patch_of, review_of, tutorial_deployment, verify_like_apiserver, write_pair

REPO = Path(__file__).resolve().parent.parent
CM_NS, CM, SRC_NS, SRC = "kube-system", "tproxy-initializer", "tproxy-system", "tproxy-root-certs"
BUNDLE = "-----BEGIN CERTIFICATE-----\nA\n-----END CERTIFICATE-----\n"

wait_for = functools.partial(wait_for, timeout=10.0, interval=0.02)


@pytest.fixture(scope="module")
def server(kubesim_server_factory_module):
    return kubesim_server_factory_module(k8s_version="1.13", seed=0)


@pytest.fixture(scope="module")
def admin(server):
    c = Client.from_url(server.url, token=server.admin_token, ca_file=server.ca_file)
    c.api_client.set_default_header("X-Kubesim-No-Faults", "1")
    for ns in (SRC_NS, "team-a", "taken"):
        c.create("/api/v1/namespaces", {"metadata": {"name": ns}})
    c.create(resource_path("v1", "configmaps", CM_NS), {"metadata": {"name": CM}, "data": {"config": CONFIG}})
    c.create(resource_path("v1", "configmaps", SRC_NS), {"metadata": {"name": SRC}, "data": {"root-certs.crt": BUNDLE}})
    c.create(resource_path("v1", "configmaps", "taken"), {"metadata": {"name": SRC}, "data": {"mine": "x"}})
    return c


@pytest.fixture(scope="module")
def kubeconfig(server, tmp_path_factory):
    return server.write_kubeconfig(str(tmp_path_factory.mktemp("kc") / "admin.kubeconfig"))


@pytest.fixture(scope="module")
def controller(admin, kubeconfig):
    ctl = WebhookController.from_kubeconfig(
        kubeconfig,
        configmap=CM,
        config_namespace=CM_NS,
        require_annotation=True,
        exclude_namespaces=["kube-system"],
        resync_period=0.5,
        root_certs_configmap=SRC,
        root_certs_namespace=SRC_NS,
        logger=Recorder(),
    )
    ctl.start()
    assert ctl.wait_ready(10), ctl.ready()
    yield ctl
    ctl.stop()


def _copy(admin, ns):
    try:
        return admin.get(resource_path("v1", "configmaps", ns, SRC))
    except errors.NotFound:
        return None


def test_existing_and_new_namespaces_get_the_bundle_and_pods_pass_once_it_is_there(admin, controller):
    wait_for(lambda: controller.bundle_state("team-a")[0] == PRESENT)
    cm = _copy(admin, "team-a")
    assert cm["data"] == {"root-certs.crt": BUNDLE}
    assert cm["metadata"]["annotations"][COPY_OF_ANNOTATION] == f"{SRC_NS}/{SRC}"
    assert _copy(admin, "kube-system") is None, "excluded namespaces get no copy"
    admin.create("/api/v1/namespaces", {"metadata": {"name": "created-later"}})
    wait_for(lambda: controller.bundle_state("created-later")[0] == PRESENT)
    assert _copy(admin, "created-later") is not None
    assert controller.bundle_check("created-later", "Pod") is None


def test_a_name_taken_by_a_foreign_configmap_refuses_with_the_initializers_message(admin, controller):
    wait_for(lambda: controller.bundle_state("taken")[0] == REFUSED)
    code, reason, message = controller.bundle_check("taken", "Deployment")
    assert (code, reason) == (409, "AlreadyExists") and "is not a copy of" in message
    assert _copy(admin, "taken")["data"] == {"mine": "x"}, "never overwritten"


def _copies(outcome):
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("tproxy_initializer_root_certs_copies_total", {"outcome": outcome}) or 0.0


def test_a_namespace_gone_before_its_copy_is_neither_an_error_nor_retried(admin, controller):
    errors_before = _copies("error")
    assert controller.sync_copy("never-created") is None
    assert _copies("error") == errors_before
    assert _copy(admin, "never-created") is None


def test_the_initializer_controller_retries_a_copy_it_could_not_make(admin, kubeconfig):
    """The same copy loop in the Initializer controller: a missing namespace is an error, re-queued."""
    from initializer.controller import Controller

    ctl = Controller.from_kubeconfig(
        kubeconfig, configmap=CM, config_namespace=CM_NS, root_certs_configmap=SRC, root_certs_namespace=SRC_NS, logger=Recorder()
    )
    assert ctl.load_root_certs(admin.get(resource_path("v1", "configmaps", SRC_NS, SRC)))
    errors_before = _copies("error")
    with pytest.raises(errors.NotFound):
        ctl.sync_copy("never-created")
    assert _copies("error") == errors_before + 1
    assert ctl.sync_copy("team-a") in ("created", "updated", "unchanged")


def test_a_new_bundle_reaches_every_copy(admin, controller):
    wait_for(lambda: controller.bundle_state("team-a")[0] == PRESENT)
    src = admin.get(resource_path("v1", "configmaps", SRC_NS, SRC))
    src["data"] = {"root-certs.crt": BUNDLE + BUNDLE}
    admin.replace(resource_path("v1", "configmaps", SRC_NS, SRC), src)
    wait_for(lambda: (_copy(admin, "team-a") or {}).get("data") == src["data"])


def test_configmap_hot_reload_changes_the_next_answer_and_a_bad_one_keeps_the_last(admin, controller):
    hook = Webhook.for_controller(controller)

    def injected_image():
        out = hook.handle(json.dumps(review_of(tutorial_deployment())).encode())
        patched = jsonpatch.apply_patch(tutorial_deployment(), patch_of(out["response"]))
        return patched["spec"]["template"]["spec"]["initContainers"][0]["image"]

    wait_for(lambda: injected_image() == "tproxy-sidecar:0.1.0")
    path = resource_path("v1", "configmaps", CM_NS, CM)
    cm = admin.get(path)
    cm["data"]["config"] = CONFIG.replace("tproxy-sidecar:0.1.0", "tproxy-sidecar:0.2.0")
    cm = admin.replace(path, cm)
    wait_for(lambda: injected_image() == "tproxy-sidecar:0.2.0")
    cm["data"]["config"] = "containers: [{name: tproxy}]"  # no image: invalid
    cm = admin.replace(path, cm)
    try:
        wait_for(lambda: controller.log.events("config_error_keeping_last_good"))
        assert injected_image() == "tproxy-sidecar:0.2.0"
    finally:
        cm["data"]["config"] = CONFIG
        admin.replace(path, cm)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_webhook_process_serves_reviews_metrics_and_readiness(admin, kubeconfig, tmp_path):
    ca = trustme.CA()
    cert, key = write_pair(ca, tmp_path)
    port, mport = _free_port(), _free_port()
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
            CM,
            "-namespace",
            CM_NS,
            "-require-annotation",
            "--exclude-namespaces",
            "kube-system",
            "--root-certs-configmap",
            SRC,
            "--root-certs-namespace",
            SRC_NS,
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def ready():
            try:
                return urllib.request.urlopen(f"http://127.0.0.1:{mport}/readyz", timeout=2).status == 200
            except OSError:
                return False

        try:
            wait_for(ready, timeout=30)
        except AssertionError:
            proc.kill()
            raise AssertionError(f"the webhook never got ready: {proc.communicate(timeout=10)[1][-3000:]}") from None
        ctx = ssl.create_default_context()
        ca.configure_trust(ctx)
        rev = review_of(tutorial_deployment(), api_version="admission.k8s.io/v1beta1")
        req = urllib.request.Request(
            f"https://localhost:{port}/mutate?timeout=10s",
            data=json.dumps(rev).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        resp = verify_like_apiserver(rev, json.loads(urllib.request.urlopen(req, context=ctx, timeout=10).read()))
        assert resp["allowed"] is True and patch_of(resp)
        wait_for(lambda: _copy(admin, "team-a") is not None)
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=5).read().decode()
        assert 'tproxy_initializer_webhook_reviews_total{kind="Deployment",operation="CREATE",outcome="injected"} 1.0' in metrics
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    lines = [json.loads(ln) for ln in err.splitlines() if ln.startswith("{")]
    audit = [ln for ln in lines if ln["event"] == "admission_review"]
    assert len(audit) == 1 and audit[0]["uid"] == rev["request"]["uid"] and audit[0]["outcome"] == "injected"
    assert audit[0]["review_version"] == "admission.k8s.io/v1beta1"
