"""The initializer against kubesim's 1.7 API server over HTTPS (official client underneath).

The cluster objects are the chart's own: its ConfigMap (the injection config), its
InitializerConfiguration and, for the RBAC test, its ServiceAccount/ClusterRole/Role and bindings,
rendered by the real Helm binary. Most tests share one in-process controller (the chart's flags:
-require-annotation=true, --exclude-namespaces); tests that need their own controller use their own
initializer name and put it in ``pending`` themselves (an admin may, as in the 1.7 e2e tests), so
they do not race the shared one.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from controllerkit import errors
from controllerkit.kube import Client, resource_path
from controllerkit.serve import HealthServer
from initializer import metrics
from initializer.controller import Controller
from initializer.mutate import ALPHA_INIT_ANNOTATION, BETA_INIT_ANNOTATION
from initializer_objects import ANN, DEPLOY, NAME, deployment
from kubesim.testing import wait_for

REPO = Path(__file__).resolve().parent.parent
HELM = os.environ.get("TPROXY_HELM", str(REPO / ".tools" / "bin" / "helm"))
CM_NS = "kube-system"
RELEASE_NS = "tproxy-system"


# ---------------------------------------------------------------------------------------------
# helpers


def render_chart() -> list[dict]:
    if not os.access(HELM, os.X_OK):
        pytest.fail(f"Helm binary not found at {HELM}: run `make setup` or set TPROXY_HELM")
    out = subprocess.run(
        [
            HELM,
            "template",
            "tproxy",
            str(REPO / "chart"),
            "--namespace",
            "tproxy-system",
            "--kube-version",
            "1.7.16",
            "--api-versions",
            "admissionregistration.k8s.io/v1alpha1",
            "--set",
            "tproxy.useRBAC=true,tproxy.useInitializer=true",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def initializer_objects(docs):
    """The chart's initializer objects by kind (component=initializer) + its InitializerConfiguration,
    and under "RootCerts" the CA bundle ConfigMap the initializer copies."""
    by_kind: dict[str, list[dict]] = {}
    for d in docs:
        labels = (d.get("metadata") or {}).get("labels") or {}
        if labels.get("component") == "initializer" or d["kind"] == "InitializerConfiguration":
            by_kind.setdefault(d["kind"], []).append(d)
        elif d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-root-certs"):
            by_kind.setdefault("RootCerts", []).append(d)
    return by_kind


def collection_path(obj: dict) -> str:
    kind = obj["kind"]
    plural = {
        "ConfigMap": "configmaps",
        "ServiceAccount": "serviceaccounts",
        "ClusterRole": "clusterroles",
        "ClusterRoleBinding": "clusterrolebindings",
        "Role": "roles",
        "RoleBinding": "rolebindings",
        "InitializerConfiguration": "initializerconfigurations",
        "Namespace": "namespaces",
    }[kind]
    return resource_path(obj["apiVersion"], plural, (obj.get("metadata") or {}).get("namespace"))


wait_for = functools.partial(wait_for, timeout=10.0, interval=0.02)


def tproxy_count(obj: dict) -> int:
    return [c["name"] for c in obj["spec"]["template"]["spec"].get("initContainers") or []].count("tproxy")


def assert_injected_once(obj: dict, cfg_mounts: int = 3):
    pod = obj["spec"]["template"]["spec"]
    assert tproxy_count(obj) == 1, pod.get("initContainers")
    assert pod["initContainers"][0]["name"] == "tproxy"
    vols = [v["name"] for v in pod.get("volumes") or []]
    assert vols.count("ca-certs-debian") == 1 and vols.count("ca-certs-fedora") == 1, vols
    for c in pod["containers"]:
        paths = [m["mountPath"] for m in c.get("volumeMounts") or []]
        assert len(paths) == len(set(paths)), paths
        assert "/etc/ssl/certs/" in paths
    assert obj["spec"]["template"]["metadata"]["annotations"][ANN] == "true"


class Recorder:
    """A logger that keeps (level, event, fields): tests assert what was reported."""

    def __init__(self):
        self.records = []
        self.lock = threading.Lock()

    def _rec(self, level, event, **kw):
        with self.lock:
            self.records.append((level, event, kw))

    def debug(self, event, **kw):
        self._rec("debug", event, **kw)

    def info(self, event, **kw):
        self._rec("info", event, **kw)

    def warning(self, event, **kw):
        self._rec("warning", event, **kw)

    def error(self, event, **kw):
        self._rec("error", event, **kw)

    def events(self, name):
        with self.lock:
            return [kw for _, e, kw in self.records if e == name]


# ---------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def chart():
    return initializer_objects(render_chart())


@pytest.fixture(scope="module")
def server(chart, kubesim_server_factory_module):
    return kubesim_server_factory_module(k8s_version="1.7", seed=0)


@pytest.fixture(scope="module")
def admin(server, chart):
    """Admin client whose requests are exempt from injected faults (test set-up must not flake)."""
    c = Client.from_url(server.url, token=server.admin_token, ca_file=server.ca_file)
    c.api_client.set_default_header("X-Kubesim-No-Faults", "1")
    c.default_timeout = 40
    c.create("/api/v1/namespaces", {"metadata": {"name": RELEASE_NS}})
    for kind in ("ConfigMap", "InitializerConfiguration", "RootCerts"):
        for obj in chart[kind]:
            c.create(collection_path(obj), obj)
    for ns in ("team-a", "team-b", "excluded", "two", "kill", "late", "rbac", "faults", "order", "groups"):
        c.create("/api/v1/namespaces", {"metadata": {"name": ns}})
    return c


@pytest.fixture(scope="module")
def cm_name(chart):
    return chart["ConfigMap"][0]["metadata"]["name"]


@pytest.fixture(scope="module")
def kubeconfig(server, tmp_path_factory):
    return server.write_kubeconfig(str(tmp_path_factory.mktemp("kc") / "admin.kubeconfig"))


@pytest.fixture(scope="module")
def controller(admin, kubeconfig, cm_name):
    """The shared controller, with the chart's flags."""
    ctl = Controller.from_kubeconfig(
        kubeconfig,
        configmap=cm_name,
        config_namespace=CM_NS,
        require_annotation=True,
        exclude_namespaces=["excluded"],
        workers=2,
        resync_period=0.5,
    )
    ctl.start()
    assert ctl.wait_ready(10), ctl.ready()
    yield ctl
    ctl.stop()


def create(c: Client, ns: str, obj: dict, group: str = DEPLOY, **query) -> dict:
    return c.create(resource_path(group, "deployments", ns), obj, **query)


def get(c: Client, ns: str, name: str) -> dict:
    return c.get(resource_path(DEPLOY, "deployments", ns, name))


def pending_of(obj):
    inits = obj["metadata"].get("initializers")
    return None if inits is None else [p["name"] for p in inits.get("pending") or []]


# ---------------------------------------------------------------------------------------------
# the create path


def test_blocking_create_returns_201_with_the_injection(controller, admin):
    before = metrics.DEPLOYMENTS.labels("initialized")._value.get()
    obj = create(admin, "team-a", deployment("web"))
    assert obj["metadata"].get("initializers") is None
    assert_injected_once(obj)
    app = obj["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "ca-certs-debian", "mountPath": "/etc/ssl/certs/", "readOnly": True} in app["volumeMounts"]
    # (the create returns when the server applied our PUT; the metric follows the PUT's answer)
    wait_for(lambda: metrics.DEPLOYMENTS.labels("initialized")._value.get() == before + 1, what="metric")
    # A plain (initialized-only) list now sees it.
    names = [d["metadata"]["name"] for d in admin.list(resource_path(DEPLOY, "deployments", "team-a"))["items"]]
    assert "web" in names


def test_status_code_is_201_through_the_official_client(controller, server):
    from kubernetes import client as k8s

    cfg = k8s.Configuration()
    cfg.host, cfg.ssl_ca_cert = server.url, server.ca_file
    cfg.api_key["BearerToken"], cfg.api_key_prefix["BearerToken"] = server.admin_token, "Bearer"
    api = k8s.ApiClient(cfg)
    resp = api.call_api(
        "/apis/apps/v1beta1/namespaces/team-b/deployments",
        "POST",
        body=deployment("official"),
        header_params={"Content-Type": "application/json", "Accept": "application/json"},
        auth_settings=["BearerToken"],
        _preload_content=False,
        _return_http_data_only=False,
    )
    assert resp.status == 201
    assert tproxy_count(json.loads(resp.data)) == 1


def test_not_annotated_deployment_is_initialized_untouched(controller, admin):
    obj = create(admin, "team-a", deployment("plain", annotated=None))
    assert obj["metadata"].get("initializers") is None
    pod = obj["spec"]["template"]["spec"]
    assert not pod.get("initContainers") and not pod.get("volumes")
    assert ANN not in (obj["spec"]["template"]["metadata"].get("annotations") or {})
    obj = create(admin, "team-a", deployment("optout", annotated="false"))
    assert tproxy_count(obj) == 0


def test_excluded_namespace_is_released_without_injection(controller, admin):
    obj = create(admin, "excluded", deployment("sys"))
    assert obj["metadata"].get("initializers") is None and tproxy_count(obj) == 0


@pytest.mark.parametrize("group", ["apps/v1beta1", "extensions/v1beta1"])
def test_both_api_groups_are_initialized(controller, admin, group):
    name = "g-" + group.split("/")[0]
    obj = create(admin, "groups", deployment(name, group=group), group=group)
    assert obj["apiVersion"] == group
    assert_injected_once(obj)


def test_conflicting_volume_fails_the_create_with_our_message(controller, admin):
    bad = deployment("clash", volumes=[{"name": "ca-certs-debian", "emptyDir": {}}])
    with pytest.raises(errors.Invalid) as exc:
        create(admin, "team-a", bad)
    assert exc.value.code == 422
    assert exc.value.message.startswith("tproxy initializer: ")
    assert "volume 'ca-certs-debian' with a different definition" in exc.value.message
    with pytest.raises(errors.NotFound):
        get(admin, "team-a", "clash")


def test_17_init_container_annotation_stays_consistent(controller, admin):
    user = [{"name": "migrate", "image": "m"}]
    obj = create(admin, "team-b", deployment("legacy", initContainers=user))
    field = obj["spec"]["template"]["spec"]["initContainers"]
    assert [c["name"] for c in field] == ["tproxy", "migrate"]
    ann = obj["spec"]["template"]["metadata"]["annotations"]
    for key in (BETA_INIT_ANNOTATION, ALPHA_INIT_ANNOTATION):
        if key in ann:  # the 1.7 server mirrors the field into these
            assert [c["name"] for c in json.loads(ann[key])] == ["tproxy", "migrate"]
    # The user's init container got the CA mounts too (it runs after the lock).
    assert any(m["mountPath"] == "/etc/ssl/certs/" for m in field[1]["volumeMounts"])
    # Read back: the stored object kept the injected container.
    assert [c["name"] for c in get(admin, "team-b", "legacy")["spec"]["template"]["spec"]["initContainers"]] == [
        "tproxy",
        "migrate",
    ]


def test_17_annotation_only_init_containers_are_kept(controller, admin):
    dep = deployment("annotated-init")
    dep["spec"]["template"]["metadata"]["annotations"] = {BETA_INIT_ANNOTATION: json.dumps([{"name": "old", "image": "o"}])}
    obj = create(admin, "team-b", dep)
    assert [c["name"] for c in obj["spec"]["template"]["spec"]["initContainers"]] == ["tproxy", "old"]
    assert [c["name"] for c in json.loads(obj["spec"]["template"]["metadata"]["annotations"][BETA_INIT_ANNOTATION])] == [
        "tproxy",
        "old",
    ]


# ---------------------------------------------------------------------------------------------
# pending order


def test_other_initializer_first_is_left_alone_until_it_is_ours(controller, admin):
    other = "other.initializer.example.com"
    created = create(admin, "order", deployment("second", pending=[other, NAME]), includeUninitialized="1")
    assert pending_of(created) == [other, NAME]
    time.sleep(1.2)  # > 2 resync periods of the controller
    cur = get(admin, "order", "second")
    assert pending_of(cur) == [other, NAME] and tproxy_count(cur) == 0
    cur["metadata"]["initializers"]["pending"] = [{"name": NAME}]  # the other initializer finishes
    admin.replace(resource_path(DEPLOY, "deployments", "order", "second"), cur)
    done = wait_for(
        lambda: (lambda o: o if pending_of(o) is None else None)(get(admin, "order", "second")),
        what="initialized after the other initializer",
    )
    assert_injected_once(done)


def test_other_initializer_after_us_stays_pending_in_order(controller, admin):
    after = ["b.initializer.example.com", "c.initializer.example.com"]
    create(admin, "order", deployment("first", pending=[NAME, *after]), includeUninitialized="1")
    obj = wait_for(lambda: (lambda o: o if tproxy_count(o) else None)(get(admin, "order", "first")), what="injection")
    assert pending_of(obj) == after
    assert_injected_once(obj)
    time.sleep(0.6)
    assert pending_of(get(admin, "order", "first")) == after


# ---------------------------------------------------------------------------------------------
# config: hot reload, bad config, not ready without config


def test_configmap_hot_reload_and_bad_configmap_keeps_last_good(controller, admin, cm_name):
    path = resource_path("v1", "configmaps", CM_NS, cm_name)
    original = admin.get(path)
    try:
        cm = copy.deepcopy(original)
        cm["data"]["config"] = cm["data"]["config"].replace("image: tproxy-sidecar:0.1.0", "image: tproxy-sidecar:v2")
        admin.replace(path, cm)
        wait_for(lambda: "v2" in json.dumps(controller.config.containers), what="reload")
        obj = create(admin, "team-a", deployment("after-reload"))
        assert obj["spec"]["template"]["spec"]["initContainers"][0]["image"] == "tproxy-sidecar:v2"

        errs = metrics.CONFIG_ERRORS.labels("malformed")._value.get()
        cm = admin.get(path)
        cm["data"]["config"] = "volumeMount: [oops"
        admin.replace(path, cm)
        wait_for(lambda: metrics.CONFIG_ERRORS.labels("malformed")._value.get() > errs, what="config error counted")
        assert controller.ready() == (True, "ok"), "a bad reload must not make a working initializer unready"
        obj = create(admin, "team-a", deployment("after-bad-config"))
        assert obj["spec"]["template"]["spec"]["initContainers"][0]["image"] == "tproxy-sidecar:v2"
    finally:
        cur = admin.get(path)
        cur["data"] = original["data"]
        admin.replace(path, cur)
        wait_for(lambda: "v2" not in json.dumps(controller.config.containers), what="restore")


def test_no_config_means_not_ready_and_nothing_initialized_until_it_arrives(admin, kubeconfig, chart):
    late = "late.initializer.example.com"
    ctl = Controller.from_kubeconfig(
        kubeconfig, initializer_name=late, configmap="late-config", config_namespace="late", resync_period=0.3, config_retry=0.1
    )
    health = HealthServer(0, host="127.0.0.1", ready=ctl.ready).start()
    ctl.start()
    try:
        ok, why = wait_for(lambda: (lambda r: r if "not found" in r[1] else None)(ctl.ready()), what="reason")
        assert not ok and "ConfigMap late/late-config not found" in why
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(f"http://127.0.0.1:{health.port}/readyz", timeout=5)
        assert exc.value.code == 503 and b"late-config not found" in exc.value.read()

        create(admin, "late", deployment("waits", pending=[late]), includeUninitialized="1")
        # A malformed config: still not ready, with the validation message; still nothing done.
        cm = copy.deepcopy(chart["ConfigMap"][0])
        cm["metadata"] = {"name": "late-config", "namespace": "late"}
        good = cm["data"]["config"]
        cm["data"]["config"] = "containers: [{name: tproxy}]"
        admin.create(resource_path("v1", "configmaps", "late"), cm)
        wait_for(lambda: "image: required" in ctl.ready()[1], what="malformed reason")
        time.sleep(0.8)
        cur = get(admin, "late", "waits")
        assert pending_of(cur) == [late] and tproxy_count(cur) == 0, "never initialize without a config"

        cur_cm = admin.get(resource_path("v1", "configmaps", "late", "late-config"))
        cur_cm["data"]["config"] = good
        admin.replace(resource_path("v1", "configmaps", "late", "late-config"), cur_cm)
        done = wait_for(
            lambda: (lambda o: o if pending_of(o) is None else None)(get(admin, "late", "waits")),
            what="initialized once the config arrived",
        )
        assert_injected_once(done)
        assert ctl.ready() == (True, "ok")
        assert urllib.request.urlopen(f"http://127.0.0.1:{health.port}/readyz", timeout=5).status == 200
    finally:
        ctl.stop()
        health.stop()


def test_config_watch_survives_cuts_and_410(admin, server, kubeconfig, chart):
    """Every config watch is cut after one event and half of the re-watches get 410: each ConfigMap
    change is still picked up (re-GET + watch by name), and the watch is by name (legacy path)."""
    cm = copy.deepcopy(chart["ConfigMap"][0])
    cm["metadata"] = {"name": "cut-config", "namespace": "team-b"}
    path = resource_path("v1", "configmaps", "team-b", "cut-config")
    admin.create(resource_path("v1", "configmaps", "team-b"), cm)
    server.set_faults("watch_cut_after=1,gone=0.5")
    ctl = Controller.from_kubeconfig(
        kubeconfig,
        initializer_name="cut.initializer.example.com",
        configmap="cut-config",
        config_namespace="team-b",
        config_retry=0.05,
    )
    ctl.start()
    try:
        wait_for(lambda: ctl.config is not None, what="first config")
        for i in range(5):
            cur = admin.get(path)
            cur["data"]["config"] = cm["data"]["config"].replace("tproxy-sidecar:0.1.0", f"tproxy-sidecar:r{i}")
            admin.replace(path, cur)
            wait_for(lambda: ctl.config.containers[0]["image"] == f"tproxy-sidecar:r{i}", what=f"revision {i}")
    finally:
        server.set_faults(None)
        ctl.stop()


# ---------------------------------------------------------------------------------------------
# never hang, never twice: faults, two replicas, kill -9


def test_faults_leave_nothing_uninitialized_and_nothing_injected_twice(admin, server, kubeconfig, cm_name):
    """409s, 500s, watch cuts and 410s on every request of a controller started under faults (kubesim
    decides a watch's faults when it opens, so the controller must start after they are set). The
    creates are blocking creates (the admin puts the controller's name in pending, exempt from faults)."""
    from prometheus_client import REGISTRY

    fname = "faults.initializer.example.com"
    informer = "/apis/apps/v1beta1/deployments"

    def sample(name, **labels):
        return REGISTRY.get_sample_value(name, labels) or 0

    conflicts = metrics.WRITE_CONFLICTS._value.get()
    lists = sample("informer_lists_total", informer=informer)
    cuts = sum(sample("informer_events_total", informer=informer, type=t) for t in ("ADDED", "MODIFIED"))
    gone = sample("informer_watch_errors_total", informer=informer, error="Gone")
    server.set_faults("conflict=0.3,error500=0.05,gone=0.5,watch_cut=0.3")
    ctl = Controller.from_kubeconfig(
        kubeconfig,
        initializer_name=fname,
        configmap=cm_name,
        config_namespace=CM_NS,
        workers=2,
        resync_period=0.5,
        config_retry=0.05,
    )
    ctl.start()
    try:
        with ThreadPoolExecutor(max_workers=10) as pool:
            results = list(pool.map(lambda i: create(admin, "faults", deployment(f"f{i}", pending=[fname])), range(30)))
    finally:
        server.set_faults(None)
        ctl.stop()
    for obj in results:
        assert obj["metadata"].get("initializers") is None
        assert_injected_once(obj)
    for i in range(30):
        assert_injected_once(get(admin, "faults", f"f{i}"))
    assert metrics.WRITE_CONFLICTS._value.get() > conflicts, "the fault mix should have produced 409s"
    assert sample("informer_watch_errors_total", informer=informer, error="Gone") > gone, "no 410 seen"
    assert sample("informer_lists_total", informer=informer) > lists + 1, "a 410 must force a relist"
    assert sum(sample("informer_events_total", informer=informer, type=t) for t in ("ADDED", "MODIFIED")) > cuts


def _all_done(admin, ns, n, name_of):
    objs = [get(admin, ns, name_of(i)) for i in range(n)]
    return objs if all(pending_of(o) is None for o in objs) else None


def test_two_replicas_inject_exactly_once(admin, kubeconfig, cm_name):
    two = "two.initializer.example.com"
    n = 30
    for i in range(n):
        create(admin, "two", deployment(f"t{i}", pending=[two]), includeUninitialized="1")
    logs = [Recorder(), Recorder()]
    replicas = [
        Controller.from_kubeconfig(
            kubeconfig, initializer_name=two, configmap=cm_name, config_namespace=CM_NS, workers=3, resync_period=0.3, logger=log
        )
        for log in logs
    ]
    for r in replicas:
        r.start()
    try:
        objs = wait_for(lambda: _all_done(admin, "two", n, lambda i: f"t{i}"), timeout=20, what="all initialized")
    finally:
        for r in replicas:
            r.stop()
    for o in objs:
        assert_injected_once(o)
    # Exactly one successful write per deployment across both replicas: the loser of a race saw a 409,
    # re-read, and found nothing left to do.
    done = [[kw["name"] for kw in log.events("deployment_initialized")] for log in logs]
    print(f"replica split: {len(done[0])} + {len(done[1])}")
    assert sorted(done[0] + done[1]) == sorted(f"t{i}" for i in range(n))


def test_kill_9_mid_burst_then_restart_completes_everything_once(admin, kubeconfig, cm_name, tmp_path):
    """A burst of concurrent *blocking* creates; the initializer is killed -9 as soon as it has done
    one, and restarted: every create still returns 201 with the injection exactly once (the server
    holds each create up to 30 s, far longer than the restart takes)."""
    killname = "kill.initializer.example.com"
    n = 60
    cmd = [
        sys.executable,
        "-m",
        "initializer",
        "--kubeconfig",
        kubeconfig,
        "-initializer-name=" + killname,
        "-namespace=" + CM_NS,
        "-configmap",
        cm_name,
        "--metrics-port",
        "0",
        "--workers",
        "2",
        "--resync-period",
        "500ms",
    ]
    env = dict(os.environ, PYTHONPATH=str(REPO))

    def done_count():
        items = admin.list(resource_path(DEPLOY, "deployments", "kill"), includeUninitialized="true")["items"]
        return sum(1 for o in items if pending_of(o) is None)

    def settled_done_count():
        """Requests the killed process sent may still be in the server's hands for a moment."""
        last = done_count()
        while True:
            time.sleep(0.1)
            now = done_count()
            if now == last:
                return now
            last = now

    pool = ThreadPoolExecutor(max_workers=20)
    first = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        futures = [pool.submit(create, admin, "kill", deployment(f"k{i}", pending=[killname])) for i in range(n)]
        wait_for(lambda: done_count() >= 1, timeout=20, interval=0.005, what="first initialization")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    killed_at = settled_done_count()
    print(f"killed with {killed_at}/{n} initialized")
    log_path = tmp_path / "second.log"
    with open(log_path, "w") as log:
        second = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=log)
        try:
            results = [f.result(timeout=40) for f in futures]
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
            second.terminate()
            second.wait(10)
    assert second.returncode == 0, "SIGTERM is a clean shutdown"
    for obj in results:  # each blocking create answered 201 with the initialized, injected object
        assert pending_of(obj) is None
        assert_injected_once(obj)
    for i in range(n):
        assert_injected_once(get(admin, "kill", f"k{i}"))
    # The restarted process logged JSON lines with namespace/name/uid/outcome for what it finished.
    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    done = [r for r in lines if r.get("event") == "deployment_initialized"]
    assert len(done) == n - killed_at
    if done:
        assert {"namespace", "name", "uid", "outcome"} <= set(done[0]) and done[0]["component"] == "initializer"


# ---------------------------------------------------------------------------------------------
# RBAC: the chart's, cross-namespace; and clear 403s without it


def _sa_kubeconfig(server, tmp_path, ns, name):
    return server.write_kubeconfig(str(tmp_path / f"{name}.kubeconfig"), token=server.service_account_token(ns, name))


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_works_with_exactly_the_charts_rbac_and_args_across_namespaces(admin, server, chart, tmp_path):
    """The chart's ServiceAccount, ClusterRole, Role and bindings, and the chart's container args (only
    the initializer name, the metrics port and the kubeconfig replaced), run as `python -m initializer`:
    deployments in another namespace are initialized; /readyz and /metrics answer."""
    for kind in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"):
        for obj in chart[kind]:
            admin.create(collection_path(obj), obj)
    sa = chart["ServiceAccount"][0]["metadata"]
    kc = _sa_kubeconfig(server, tmp_path, sa["namespace"], sa["name"])
    rb = "rbac.initializer.example.com"
    (container,) = chart["Deployment"][0]["spec"]["template"]["spec"]["containers"]
    args = [a for a in container["args"] if not a.startswith(("-initializer-name", "--metrics-port"))]
    assert len(args) == len(container["args"]) - 2, container["args"]
    port = _free_port()
    cmd = [
        sys.executable,
        "-m",
        "initializer",
        *args,
        "-initializer-name=" + rb,
        f"--metrics-port={port}",
        "--metrics-host=127.0.0.1",
        "--kubeconfig",
        kc,
        "--resync-period=300ms",
    ]
    log_path = tmp_path / "rbac.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), stdout=log, stderr=log)
    try:

        def readyz():
            try:
                return urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2).status == 200
            except OSError:
                return False

        wait_for(readyz, timeout=20, interval=0.1, what=f"ready (log: {log_path})")
        for group in ("apps/v1beta1", "extensions/v1beta1"):
            name = "r-" + group.split("/")[0]
            create(admin, "rbac", deployment(name, group=group, pending=[rb]), group=group, includeUninitialized="1")
            done = wait_for(
                lambda: (lambda o: o if pending_of(o) is None else None)(get(admin, "rbac", name)),
                what=f"initialized with the chart's RBAC ({group})",
            )
            assert_injected_once(done)

        # the counter is incremented after the write that a client may already have seen: wait for it
        def metrics():
            body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            return body if 'tproxy_initializer_deployments_total{outcome="initialized"} 2.0' in body else None

        text = wait_for(metrics, timeout=10, what="both initializations counted in /metrics")
        assert "tproxy_initializer_config_loaded 1.0" in text and 'workqueue_depth{name="initializer"}' in text
        assert "tproxy_initializer_root_certs_loaded 1.0" in text
        # The CA bundle was copied into the deployments' namespace with the chart's RBAC.
        source = chart["RootCerts"][0]
        copy_ = admin.get(resource_path("v1", "configmaps", "rbac", source["metadata"]["name"]))
        assert copy_["data"] == source["data"]
    finally:
        proc.terminate()
        proc.wait(10)
    assert "Forbidden" not in log_path.read_text()


def test_without_rbac_403s_are_reported_clearly(admin, server, cm_name, tmp_path):
    nobody = _sa_kubeconfig(server, tmp_path, "rbac", "nobody")
    log = Recorder()
    ctl = Controller.from_kubeconfig(
        nobody,
        initializer_name="nobody.initializer.example.com",
        configmap=cm_name,
        config_namespace=CM_NS,
        config_retry=0.1,
        logger=log,
    )
    ctl.start()
    try:
        ok, why = wait_for(lambda: (lambda r: r if "403" in r[1] else None)(ctl.ready()), what="403 reason")
        assert not ok
        assert f"ConfigMap {CM_NS}/{cm_name}" in why and "needs get and watch" in why
        assert metrics.CONFIG_ERRORS.labels("forbidden")._value.get() >= 1
    finally:
        ctl.stop()


def _grant_config_read(admin, sa_name: str, cm_name: str) -> None:
    """A Role + RoleBinding giving ServiceAccount rbac/<sa_name> get+watch on the one ConfigMap (as the chart does)."""
    admin.create(
        resource_path("rbac.authorization.k8s.io/v1beta1", "roles", CM_NS),
        {
            "metadata": {"name": sa_name, "namespace": CM_NS},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "resourceNames": [cm_name], "verbs": ["get", "watch"]}],
        },
    )
    admin.create(
        resource_path("rbac.authorization.k8s.io/v1beta1", "rolebindings", CM_NS),
        {
            "metadata": {"name": sa_name, "namespace": CM_NS},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": sa_name},
            "subjects": [{"kind": "ServiceAccount", "name": sa_name, "namespace": "rbac"}],
        },
    )


def test_config_but_no_deployment_access_says_so_in_readiness(admin, server, cm_name, tmp_path):
    name = "cfg-only"
    _grant_config_read(admin, name, cm_name)
    kc = _sa_kubeconfig(server, tmp_path, "rbac", name)
    ctl = Controller.from_kubeconfig(
        kc, initializer_name="cfg.initializer.example.com", configmap=cm_name, config_namespace=CM_NS, logger=Recorder()
    )
    ctl.start()
    try:
        ok, why = wait_for(lambda: (lambda r: r if "403" in r[1] else None)(ctl.ready()), what="403 in readiness")
        assert not ok and ctl.config is not None
        assert why.startswith("deployment informer has not synced yet: list failed: 403")
        assert "deployments" in why
    finally:
        ctl.stop()


def test_write_without_initialize_verb_is_reported_and_retried(admin, server, chart, cm_name, tmp_path):
    """Config readable, deployments readable, but no update/initialize: the 403 on the PUT is logged
    with what is missing, and the object is retried (stays pending, never half-written)."""
    name = "readonly-init"
    admin.create(
        resource_path("rbac.authorization.k8s.io/v1beta1", "clusterroles"),
        {
            "metadata": {"name": name},
            "rules": [{"apiGroups": ["apps", "extensions"], "resources": ["deployments"], "verbs": ["get", "list", "watch"]}],
        },
    )
    admin.create(
        resource_path("rbac.authorization.k8s.io/v1beta1", "clusterrolebindings"),
        {
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": "rbac"}],
        },
    )
    _grant_config_read(admin, name, cm_name)
    kc = _sa_kubeconfig(server, tmp_path, "rbac", name)
    ro = "ro.initializer.example.com"
    log = Recorder()
    ctl = Controller.from_kubeconfig(
        kc, initializer_name=ro, configmap=cm_name, config_namespace=CM_NS, resync_period=0.3, logger=log
    )
    ctl.start()
    try:
        assert ctl.wait_ready(10), ctl.ready()
        create(admin, "rbac", deployment("ro", pending=[ro]), includeUninitialized="1")
        wait_for(lambda: len(log.events("write_forbidden")) >= 2, what="403 reported (and retried)")
        rec = log.events("write_forbidden")[0]
        assert rec["namespace"] == "rbac" and rec["name"] == "ro" and "403" in rec["error"]
        assert "initialize" in rec["hint"]
        cur = get(admin, "rbac", "ro")
        assert pending_of(cur) == [ro] and tproxy_count(cur) == 0
    finally:
        ctl.stop()


# ---------------------------------------------------------------------------------------------
# the proxy's CA bundle in every namespace (issue 23)
#
# Each test has its own initializer name and its own source ConfigMap (the copies take the source's
# name), so they neither race the shared controller nor see each other's copies.


def _source(admin, name: str, bundle: str = "-----BEGIN CERTIFICATE-----\nA\n-----END CERTIFICATE-----\n") -> dict:
    return admin.create(
        resource_path("v1", "configmaps", RELEASE_NS), {"metadata": {"name": name}, "data": {"root-certs.crt": bundle}}
    )


def _certs_controller(kubeconfig, cm_name, initializer_name, source, log=None, **kw):
    kw.setdefault("resync_period", 0.3)
    ctl = Controller.from_kubeconfig(
        kubeconfig,
        initializer_name=initializer_name,
        configmap=cm_name,
        config_namespace=CM_NS,
        require_annotation=True,
        root_certs_configmap=source,
        root_certs_namespace=RELEASE_NS,
        logger=log or Recorder(),
        **kw,
    )
    ctl.start()
    assert ctl.wait_ready(10), ctl.ready()
    return ctl


def _copy(admin, ns, name):
    try:
        return admin.get(resource_path("v1", "configmaps", ns, name))
    except errors.NotFound:
        return None


def test_bundle_is_in_a_fresh_namespace_before_the_create_returns(admin, kubeconfig, cm_name):
    """Two replicas; a namespace created after they started; a blocking create: when it returns 201 the
    namespace already holds the bundle the pods will mount (a copy marked as ours), created once."""
    from initializer.rootcerts import COPY_OF_ANNOTATION

    rc, source = "copy.initializer.example.com", "copy-root-certs"
    src = _source(admin, source)
    ctls = [_certs_controller(kubeconfig, cm_name, rc, source) for _ in range(2)]
    try:
        admin.create("/api/v1/namespaces", {"metadata": {"name": "fresh"}})
        assert _copy(admin, "fresh", source) is None
        obj = create(admin, "fresh", deployment("app", pending=[rc]))  # blocks until released
        assert pending_of(obj) is None and tproxy_count(obj) == 1
        cm = _copy(admin, "fresh", source)
        assert cm is not None, "released before the bundle was in the namespace"
        assert cm["data"] == src["data"]
        assert cm["metadata"]["annotations"][COPY_OF_ANNOTATION] == f"{RELEASE_NS}/{source}"
        # A second deployment there, handled by either replica: the copy is left as it is.
        create(admin, "fresh", deployment("app2", pending=[rc]))
        assert _copy(admin, "fresh", source)["metadata"]["resourceVersion"] == cm["metadata"]["resourceVersion"]
        # Not annotated: released untouched, and no copy is needed for it.
        admin.create("/api/v1/namespaces", {"metadata": {"name": "fresh-plain"}})
        create(admin, "fresh-plain", deployment("plain", annotated=None, pending=[rc]))
        assert _copy(admin, "fresh-plain", source) is None
        # The release namespace holds the source itself: never overwritten with a copy.
        create(admin, RELEASE_NS, deployment("in-release-ns", pending=[rc]))
        here = _copy(admin, RELEASE_NS, source)
        assert COPY_OF_ANNOTATION not in (here["metadata"].get("annotations") or {})
        assert here["metadata"]["resourceVersion"] == src["metadata"]["resourceVersion"]
    finally:
        for c in ctls:
            c.stop()


def test_a_new_ca_reaches_every_copy_and_a_deleted_copy_comes_back(admin, kubeconfig, cm_name):
    rc, source = "rotate.initializer.example.com", "rotate-root-certs"
    src = _source(admin, source, "OLD CA\n")
    log = Recorder()
    ctl = _certs_controller(kubeconfig, cm_name, rc, source, log=log)
    try:
        for ns in ("rot-a", "rot-b"):
            admin.create("/api/v1/namespaces", {"metadata": {"name": ns}})
            create(admin, ns, deployment("app", pending=[rc]))
            assert _copy(admin, ns, source)["data"] == {"root-certs.crt": "OLD CA\n"}
        # The CA changes (e.g. helm upgrade with a new tproxy.ca.cert): every copy follows.
        src["data"] = {"root-certs.crt": "NEW CA\n"}
        admin.replace(resource_path("v1", "configmaps", RELEASE_NS, source), src)
        for ns in ("rot-a", "rot-b"):
            wait_for(lambda: _copy(admin, ns, source)["data"] == {"root-certs.crt": "NEW CA\n"}, what=f"copy in {ns} updated")
        assert {"rot-a", "rot-b"} <= {e["namespace"] for e in log.events("root_certs_copy_updated")}
        # A copy deleted by someone is written again on the next pass (new pods there must start).
        admin.delete(resource_path("v1", "configmaps", "rot-b", source))
        wait_for(
            lambda: (_copy(admin, "rot-b", source) or {}).get("data") == {"root-certs.crt": "NEW CA\n"},
            what="deleted copy re-created",
        )
    finally:
        ctl.stop()


def test_a_same_named_configmap_that_is_not_ours_fails_the_create_and_is_kept(admin, kubeconfig, cm_name):
    rc, source = "taken.initializer.example.com", "taken-root-certs"
    _source(admin, source)
    admin.create("/api/v1/namespaces", {"metadata": {"name": "taken"}})
    theirs = admin.create(
        resource_path("v1", "configmaps", "taken"), {"metadata": {"name": source}, "data": {"root-certs.crt": "THEIR OWN BUNDLE"}}
    )
    ctl = _certs_controller(kubeconfig, cm_name, rc, source)
    try:
        with pytest.raises(errors.ApiError) as exc:
            create(admin, "taken", deployment("app", pending=[rc]))
        assert exc.value.code == 409, exc.value
        msg = exc.value.message
        assert msg.startswith("tproxy initializer: cannot provide the proxy CA bundle in namespace taken")
        assert f"ConfigMap taken/{source} exists and is not a copy of {RELEASE_NS}/{source}" in msg
        with pytest.raises(errors.NotFound):
            get(admin, "taken", "app")
        assert _copy(admin, "taken", source) == theirs  # untouched
    finally:
        ctl.stop()


def test_a_namespace_where_the_initializer_may_not_write_the_bundle_fails_the_create_naming_it(admin, server, cm_name, tmp_path):
    """Everything the chart grants, except that the copy may only be written in one namespace: a
    deployment elsewhere fails at once with a result naming the namespace and the missing grant
    (never released without its bundle, never left waiting)."""
    rbac = "rbac.authorization.k8s.io/v1beta1"
    sa, rc, source = "one-ns", "onens.initializer.example.com", "onens-root-certs"
    _source(admin, source)
    for ns in ("copy-allowed", "copy-denied"):
        admin.create("/api/v1/namespaces", {"metadata": {"name": ns}})

    def bind(kind, name, ns, rules):
        path_ns = ns if kind == "Role" else None
        admin.create(
            resource_path(rbac, kind.lower() + "s", path_ns),
            {"metadata": {"name": name, **({"namespace": ns} if ns else {})}, "rules": rules},
        )
        admin.create(
            resource_path(rbac, kind.lower() + "bindings", path_ns),
            {
                "metadata": {"name": name, **({"namespace": ns} if ns else {})},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": name},
                "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": "rbac"}],
            },
        )

    cms = {"apiGroups": [""], "resources": ["configmaps"]}
    bind(
        "ClusterRole",
        sa,
        None,
        [
            {
                "apiGroups": ["apps", "extensions"],
                "resources": ["deployments"],
                "verbs": ["get", "list", "watch", "update", "patch", "initialize"],
            }
        ],
    )
    bind("Role", sa, CM_NS, [{**cms, "resourceNames": [cm_name], "verbs": ["get", "watch"]}])
    bind("Role", sa, RELEASE_NS, [{**cms, "resourceNames": [source], "verbs": ["get", "watch"]}])
    bind(
        "Role",
        sa + "-copy",
        "copy-allowed",
        [{**cms, "resourceNames": [source], "verbs": ["get", "update"]}, {**cms, "verbs": ["create"]}],
    )
    kc = _sa_kubeconfig(server, tmp_path, "rbac", sa)
    ctl = _certs_controller(kc, cm_name, rc, source)
    try:
        ok = create(admin, "copy-allowed", deployment("app", pending=[rc]))
        assert pending_of(ok) is None and _copy(admin, "copy-allowed", source) is not None
        with pytest.raises(errors.Forbidden) as exc:
            create(admin, "copy-denied", deployment("app", pending=[rc]))
        msg = exc.value.message
        assert msg.startswith("tproxy initializer: cannot provide the proxy CA bundle in namespace copy-denied")
        assert f"get of ConfigMap copy-denied/{source} is forbidden" in msg
        assert f"needs get, create and update on configmaps named {source} in copy-denied" in msg
        with pytest.raises(errors.NotFound):
            get(admin, "copy-denied", "app")
        assert _copy(admin, "copy-denied", source) is None
    finally:
        ctl.stop()


def test_copies_left_stale_while_the_initializer_was_down_are_updated_at_start(admin, kubeconfig, cm_name):
    """The CA changed while no replica ran: at start, without any new deployment, the copies in
    namespaces with locked deployments are brought up to date (not one resync period later)."""
    from initializer.rootcerts import COPY_OF_ANNOTATION

    rc, source = "stale.initializer.example.com", "stale-root-certs"
    _source(admin, source, "NEW CA\n")
    admin.create("/api/v1/namespaces", {"metadata": {"name": "stale"}})
    admin.create(
        resource_path("v1", "configmaps", "stale"),
        {
            "metadata": {"name": source, "annotations": {COPY_OF_ANNOTATION: f"{RELEASE_NS}/{source}"}},
            "data": {"root-certs.crt": "OLD CA\n"},
        },
    )
    locked = deployment("locked", meta={"initializers": {"pending": []}})  # already initialized
    locked["spec"]["template"]["metadata"]["annotations"] = {ANN: "true"}
    create(admin, "stale", locked)
    # The source is known before the deployments are listed (as when its GET answers first).
    ctl = Controller.from_kubeconfig(
        kubeconfig,
        initializer_name=rc,
        configmap=cm_name,
        config_namespace=CM_NS,
        require_annotation=True,
        resync_period=300,
        root_certs_configmap=source,
        root_certs_namespace=RELEASE_NS,
        logger=Recorder(),
    )
    assert ctl.load_root_certs(admin.get(resource_path("v1", "configmaps", RELEASE_NS, source)))
    ctl.start()
    try:
        wait_for(
            lambda: _copy(admin, "stale", source)["data"] == {"root-certs.crt": "NEW CA\n"}, what="stale copy updated at start"
        )
    finally:
        ctl.stop()
