"""Conformance: visibility (§2), watch event mapping, resume, 410 Gone, timeouts and legacy watch paths.

Official kubernetes client over HTTPS against kubesim. § refers to docs/initializers-1.7.md.
"""

import threading
import time

import kubernetes.client as k
import kubernetes.watch
import pytest

from kubesim.apiserver import APIServer
from kubesim.testing import RbacV1beta1, api_client_for, raw, wait_for, watch_events

EXT = "/apis/extensions/v1beta1/namespaces/default/deployments"
ALL_EXT = "/apis/extensions/v1beta1/deployments"
CFG = "/apis/admissionregistration.k8s.io/v1alpha1/initializerconfigurations"
INIT = "tproxy.initializer.kubernetes.io"


def deployment(name):
    return {
        "metadata": {"name": name},
        "spec": {"template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "a", "image": "x"}]}}},
    }


@pytest.fixture
def srv(kubesim_server):
    return kubesim_server


@pytest.fixture
def c(kube_api_client):
    return kube_api_client


@pytest.fixture
def with_config(c):
    s, _ = raw(
        c,
        "POST",
        CFG,
        body={
            "metadata": {"name": "tp"},
            "initializers": [{"name": INIT, "rules": [{"apiGroups": ["*"], "apiVersions": ["*"], "resources": ["deployments"]}]}],
        },
    )
    assert s == 201


class Collector:
    """Watch in a background thread, collecting events."""

    def __init__(self, srv, path, query=None, token=None, timeout=10):
        self.events = []
        self.client = api_client_for(srv, token)
        q = dict(query or {})
        self.thread = threading.Thread(target=self._run, args=(path, q, timeout), daemon=True)
        self.thread.start()

    def _run(self, path, q, timeout):
        try:
            for ev in watch_events(self.client, path, q, timeout=timeout):
                self.events.append(ev)
        except Exception as e:  # noqa: BLE001 - record stream errors for assertions
            self.events.append({"type": "CLIENT_ERROR", "object": repr(e)})

    def wait_for(self, n, timeout=5):
        deadline = time.monotonic() + timeout
        while len(self.events) < n and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.events

    def types(self):
        return [(e["type"], e["object"]["metadata"]["name"]) for e in self.events]


def start_at(srv):
    return {"resourceVersion": str(srv.store.rv)}


# ---- §2 visibility ----------------------------------------------------------------------------


def test_list_hides_uninitialized_unless_included(c, with_config):
    """§2: LIST shows uninitialized objects only with ?includeUninitialized=true (also with fieldSelector)."""
    raw(c, "POST", EXT, query={"includeUninitialized": "1"}, body=deployment("hidden"))
    assert raw(c, "GET", EXT)[1]["items"] == []
    assert raw(c, "GET", EXT, query={"fieldSelector": "metadata.name=hidden"})[1]["items"] == []
    items = raw(c, "GET", EXT, query={"includeUninitialized": "true"})[1]["items"]
    assert [i["metadata"]["name"] for i in items] == ["hidden"]
    assert "kind" not in items[0], "list items carry no kind/apiVersion"


def test_get_by_name_returns_uninitialized_object(c, with_config):
    """§2 + e2e 1.7: GET by name always returns the object (200), initialized or not."""
    raw(c, "POST", EXT, query={"includeUninitialized": "1"}, body=deployment("visible"))
    s, obj = raw(c, "GET", f"{EXT}/visible")
    assert s == 200 and obj["metadata"]["initializers"]["pending"] == [{"name": INIT}]


def test_unfiltered_watcher_sees_added_only_at_completion(srv, c, with_config):
    """§2: a watcher without includeUninitialized sees nothing at creation, then ADDED with the completing rv."""
    plain = Collector(srv, ALL_EXT, start_at(srv))
    full = Collector(srv, ALL_EXT, dict(start_at(srv), includeUninitialized="true"))
    time.sleep(0.2)
    s, obj = raw(c, "POST", EXT, query={"includeUninitialized": "1"}, body=deployment("w"))
    obj["metadata"]["labels"] = {"step": "1"}
    s, obj = raw(c, "PUT", f"{EXT}/w", body=obj)
    obj["metadata"]["initializers"] = None
    s, done = raw(c, "PUT", f"{EXT}/w", body=obj)
    plain.wait_for(1)
    full.wait_for(3)
    time.sleep(0.1)
    assert plain.types() == [("ADDED", "w")]
    assert plain.events[0]["object"]["metadata"]["resourceVersion"] == done["metadata"]["resourceVersion"]
    assert full.types() == [("ADDED", "w"), ("MODIFIED", "w"), ("MODIFIED", "w")]
    assert full.events[0]["object"]["metadata"]["initializers"]["pending"] == [{"name": INIT}]
    assert "initializers" not in full.events[2]["object"]["metadata"]


def test_failed_initialization_visible_only_to_filtered_watchers(srv, c, with_config):
    """§2/§4: failure -> includeUninitialized watcher gets MODIFIED (result) then DELETED; plain gets nothing."""
    plain = Collector(srv, ALL_EXT, start_at(srv))
    full = Collector(srv, ALL_EXT, dict(start_at(srv), includeUninitialized="true"))
    time.sleep(0.2)
    s, obj = raw(c, "POST", EXT, query={"includeUninitialized": "1"}, body=deployment("f"))
    obj["metadata"]["initializers"]["result"] = {"status": "Failure", "code": 422, "message": "nope"}
    assert raw(c, "PUT", f"{EXT}/f", body=obj)[0] == 200
    # a marker object proves the plain watcher is alive and ordered after the failure
    raw(
        c,
        "POST",
        EXT,
        query={"includeUninitialized": "1"},
        body=dict(deployment("marker"), metadata={"name": "marker", "initializers": {"pending": []}}),
    )
    plain.wait_for(1)
    full.wait_for(4)
    assert plain.types() == [("ADDED", "marker")]
    assert full.types() == [("ADDED", "f"), ("MODIFIED", "f"), ("DELETED", "f"), ("ADDED", "marker")]
    assert full.events[2]["object"]["metadata"]["initializers"]["result"]["message"] == "nope"


def test_delete_of_uninitialized_object_allowed_and_hidden(srv, c, with_config):
    """§2: DELETE needs no initialize; a plain watcher sees nothing for an object deleted while uninitialized."""
    plain = Collector(srv, ALL_EXT, start_at(srv))
    time.sleep(0.2)
    raw(c, "POST", EXT, query={"includeUninitialized": "1"}, body=deployment("gone"))
    assert raw(c, "DELETE", f"{EXT}/gone")[0] == 200
    raw(
        c,
        "POST",
        "/apis/extensions/v1beta1/namespaces/default/daemonsets",
        body={
            "metadata": {"name": "unrelated"},
            "spec": {"template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}},
        },
    )
    time.sleep(0.3)
    assert plain.events == []


def test_deletecollection_includes_uninitialized(c, with_config):
    """§2: DeleteCollection forces includeUninitialized."""
    raw(c, "POST", EXT, query={"includeUninitialized": "1"}, body=deployment("dc1"))
    s, lst = raw(c, "DELETE", EXT)
    assert s == 200 and [i["metadata"]["name"] for i in lst["items"]] == ["dc1"]
    assert raw(c, "GET", f"{EXT}/dc1")[0] == 404


def test_apps_watcher_sees_deployment_created_through_extensions(srv, c):
    """§7: both groups serve one storage; a watcher on apps/v1beta1 sees an extensions create, as apps."""
    w = Collector(srv, "/apis/apps/v1beta1/deployments", start_at(srv))
    time.sleep(0.2)
    raw(c, "POST", EXT, body=deployment("both"))
    w.wait_for(1)
    assert w.types() == [("ADDED", "both")] and w.events[0]["object"]["apiVersion"] == "apps/v1beta1"


# ---- resume, 410, timeouts, selectors ---------------------------------------------------------


def test_watch_resumes_from_resource_version(srv, c):
    """A watch from resourceVersion R replays every retained event after R, in order."""
    v1 = k.CoreV1Api(c)
    first = v1.create_namespaced_config_map("default", {"metadata": {"name": "r0"}})
    rv = first.metadata.resource_version
    v1.create_namespaced_config_map("default", {"metadata": {"name": "r1"}})
    v1.patch_namespaced_config_map("r0", "default", {"data": {"a": "b"}})
    v1.delete_namespaced_config_map("r1", "default")
    evs = list(watch_events(c, "/api/v1/namespaces/default/configmaps", {"resourceVersion": rv, "timeoutSeconds": "1"}))
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in evs] == [("ADDED", "r1"), ("MODIFIED", "r0"), ("DELETED", "r1")]
    rvs = [int(e["object"]["metadata"]["resourceVersion"]) for e in evs]
    assert rvs == sorted(rvs) and rvs[0] > int(rv)


def test_watch_without_resource_version_starts_with_current_state(c):
    """resourceVersion unset/0: synthetic ADDED for existing objects, then live events."""
    k.CoreV1Api(c).create_namespaced_config_map("default", {"metadata": {"name": "pre"}})
    evs = list(watch_events(c, "/api/v1/namespaces/default/configmaps", {"timeoutSeconds": "1"}))
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in evs] == [("ADDED", "pre")]


def test_too_old_resource_version_gets_410_error_event():
    """Events older than the retained window -> ERROR event with a 410 Status (1.7 reason Gone)."""
    srv = APIServer(history=10).start()
    try:
        c = api_client_for(srv)
        v1 = k.CoreV1Api(c)
        rv = v1.create_namespaced_config_map("default", {"metadata": {"name": "old"}}).metadata.resource_version
        for i in range(20):
            v1.create_namespaced_config_map("default", {"metadata": {"name": f"n{i}"}})
        evs = list(watch_events(c, "/api/v1/namespaces/default/configmaps", {"resourceVersion": rv}, timeout=5))
        assert len(evs) == 1 and evs[0]["type"] == "ERROR"
        st = evs[0]["object"]
        assert st["code"] == 410 and st["reason"] == "Gone" and st["message"].startswith(f"too old resource version: {rv} (")
        # a recent resourceVersion still works
        recent = str(srv.store.rv)
        assert (
            list(watch_events(c, "/api/v1/namespaces/default/configmaps", {"resourceVersion": recent, "timeoutSeconds": "1"}))
            == []
        )
    finally:
        srv.stop()


def test_1_13_gone_reason_is_expired():
    """1.13 answers a too-old resourceVersion with 410 reason Expired."""
    srv = APIServer(k8s_version="1.13", history=2).start()
    try:
        c = api_client_for(srv)
        for i in range(5):
            k.CoreV1Api(c).create_namespaced_config_map("default", {"metadata": {"name": f"n{i}"}})
        evs = list(watch_events(c, "/api/v1/namespaces/default/configmaps", {"resourceVersion": "1"}, timeout=5))
        assert evs[0]["object"]["reason"] == "Expired" and evs[0]["object"]["code"] == 410
    finally:
        srv.stop()


def test_timeout_seconds_ends_the_stream(c):
    """timeoutSeconds closes the stream cleanly after that long."""
    t0 = time.monotonic()
    assert (
        list(watch_events(c, "/api/v1/namespaces/default/secrets", {"timeoutSeconds": "1", "resourceVersion": "1000000"})) == []
    )
    assert time.monotonic() - t0 >= 0.9  # ended by timeoutSeconds (watch_events' own 10 s read timeout would raise)


def test_watch_field_selector_on_node_name(srv, c):
    """fieldSelector=spec.nodeName=X (podwatch's watch) filters pods; leaving the selection is DELETED."""
    v1 = k.CoreV1Api(c)
    w = Collector(srv, "/api/v1/pods", dict(start_at(srv), fieldSelector="spec.nodeName=node-a"))
    time.sleep(0.2)
    pod = {"metadata": {"name": "p"}, "spec": {"nodeName": "node-a", "containers": [{"name": "c", "image": "i"}]}}
    v1.create_namespaced_pod("default", pod)
    v1.create_namespaced_pod("default", dict(pod, metadata={"name": "q"}, spec=dict(pod["spec"], nodeName="node-b")))
    v1.patch_namespaced_pod_status("p", "default", {"status": {"phase": "Running", "podIP": "198.18.1.5"}})
    v1.delete_namespaced_pod("p", "default", grace_period_seconds=0)  # as its kubelet finishes it
    w.wait_for(3)
    assert w.types() == [("ADDED", "p"), ("MODIFIED", "p"), ("DELETED", "p")]
    assert w.events[1]["object"]["status"]["podIP"] == "198.18.1.5"


def test_label_selector_transition_maps_to_added_and_deleted(srv, c):
    """§2 mapping for any filter: entering a label selection is ADDED, leaving it is DELETED."""
    v1 = k.CoreV1Api(c)
    w = Collector(srv, "/api/v1/namespaces/default/configmaps", dict(start_at(srv), labelSelector="tier in (web)"))
    time.sleep(0.2)
    v1.create_namespaced_config_map("default", {"metadata": {"name": "l", "labels": {"tier": "db"}}})
    v1.patch_namespaced_config_map("l", "default", {"metadata": {"labels": {"tier": "web"}}})
    v1.patch_namespaced_config_map("l", "default", {"metadata": {"labels": {"tier": "db"}}})
    w.wait_for(2)
    assert w.types() == [("ADDED", "l"), ("DELETED", "l")]


def test_official_watch_helper_tracks_resource_version(c):
    """kubernetes.watch.Watch over the typed API works against kubesim (stream of typed objects)."""
    v1 = k.CoreV1Api(c)
    v1.create_namespaced_config_map("default", {"metadata": {"name": "typed"}})
    w = kubernetes.watch.Watch()
    got = []
    for ev in w.stream(v1.list_namespaced_config_map, "default", timeout_seconds=1):
        got.append((ev["type"], ev["object"].metadata.name))
    assert got == [("ADDED", "typed")]
    assert int(w.resource_version) > 0


def test_legacy_watch_path_by_name_is_authorized_with_the_name(srv, c):
    """1.7 legacy /watch/namespaces/{ns}/{resource}/{name}: RBAC sees verb watch WITH the name, so resourceNames
    allow it; a collection watch/list with fieldSelector=metadata.name is authorized without a name and denied."""
    rbac = RbacV1beta1(c)
    k.CoreV1Api(c).create_namespaced_config_map("default", {"metadata": {"name": "tproxy-config"}})
    rbac.create_namespaced_role(
        "default",
        {
            "metadata": {"name": "cfg"},
            "rules": [
                {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["tproxy-config"], "verbs": ["get", "watch"]}
            ],
        },
    )
    rbac.create_namespaced_role_binding(
        "default",
        {
            "metadata": {"name": "cfg"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "cfg"},
            "subjects": [{"kind": "ServiceAccount", "name": "init", "namespace": "default"}],
        },
    )
    token = srv.service_account_token("default", "init")
    sa = api_client_for(srv, token)
    assert raw(sa, "GET", "/api/v1/namespaces/default/configmaps/tproxy-config")[0] == 200
    w = Collector(srv, "/api/v1/watch/namespaces/default/configmaps/tproxy-config", {}, token=token)
    w.wait_for(1)
    k.CoreV1Api(c).patch_namespaced_config_map("tproxy-config", "default", {"data": {"config": "v2"}})
    k.CoreV1Api(c).create_namespaced_config_map("default", {"metadata": {"name": "other"}})
    w.wait_for(2)
    time.sleep(0.1)
    assert w.types() == [("ADDED", "tproxy-config"), ("MODIFIED", "tproxy-config")]
    s, body = raw(
        sa,
        "GET",
        "/api/v1/namespaces/default/configmaps",
        query={"watch": "true", "fieldSelector": "metadata.name=tproxy-config"},
    )
    assert s == 403 and body.startswith('User "system:serviceaccount:default:init" cannot watch configmaps')
    assert raw(sa, "GET", "/api/v1/namespaces/default/configmaps/other")[0] == 403


def test_legacy_watch_collection_path(srv, c):
    """/apis/{group}/{version}/watch/namespaces/{ns}/{resource} streams like ?watch=true."""
    w = Collector(srv, "/apis/extensions/v1beta1/watch/namespaces/default/deployments", start_at(srv))
    time.sleep(0.2)
    raw(c, "POST", EXT, body=deployment("legacy"))
    w.wait_for(1)
    assert w.types() == [("ADDED", "legacy")]


def test_watchers_do_not_block_writers(srv, c):
    """A watcher that never reads does not slow writes down (per-watcher queues)."""
    stuck = api_client_for(srv)
    resp = stuck.call_api(
        "/api/v1/configmaps",
        "GET",
        query_params=[("watch", "true")],
        auth_settings=["BearerToken"],
        _preload_content=False,
        _return_http_data_only=True,
    )
    v1 = k.CoreV1Api(c)
    done = []

    def write():
        for i in range(200):
            v1.create_namespaced_config_map("default", {"metadata": {"name": f"fast-{i}"}, "data": {"x": "y" * 2000}})
            done.append(i)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    # 400 KB of events is far more than the stuck reader's socket buffers: a writer that waited for
    # the watcher would never finish
    wait_for(lambda: len(done) == 200, 60, 0.05, "200 creates while a watcher never reads")
    resp.close()


def test_watch_param_on_a_named_get_is_a_plain_get(c):
    """1.7 RequestInfo: ?watch=true turns only a collection GET into a watch; GET by name returns the object."""
    k.CoreV1Api(c).create_namespaced_config_map("default", {"metadata": {"name": "named"}})
    s, obj = raw(c, "GET", "/api/v1/namespaces/default/configmaps/named", query={"watch": "true"})
    assert s == 200 and obj["kind"] == "ConfigMap" and obj["metadata"]["name"] == "named"


def test_concurrent_writers_watchers_see_every_event_in_order(srv):
    """8 writer threads, 3 watchers: each watcher gets every event exactly once, in resourceVersion order."""
    import concurrent.futures

    n_writers, per_writer = 8, 25
    start = start_at(srv)
    watchers = [Collector(srv, "/api/v1/namespaces/default/configmaps", start) for _ in range(3)]
    time.sleep(0.2)
    clients = [api_client_for(srv) for _ in range(n_writers)]

    def write(w):
        v1 = k.CoreV1Api(clients[w])
        for i in range(per_writer):
            name = f"cw-{w}-{i}"
            v1.create_namespaced_config_map("default", {"metadata": {"name": name}})
            v1.patch_namespaced_config_map(name, "default", {"data": {"x": "1"}})

    with concurrent.futures.ThreadPoolExecutor(n_writers) as ex:
        list(ex.map(write, range(n_writers)))
    total = n_writers * per_writer * 2
    for w in watchers:
        evs = w.wait_for(total, timeout=20)
        assert len(evs) == total
        rvs = [int(e["object"]["metadata"]["resourceVersion"]) for e in evs]
        assert rvs == sorted(rvs) and len(set(rvs)) == total
        assert sum(e["type"] == "ADDED" for e in evs) == total // 2


def test_the_watch_window_is_per_resource_type_like_the_watch_cache():
    """Like kube-apiserver's watch cache (--default-watch-cache-size=100 per type): writes to one
    type do not push another type's resourceVersions out of its window; 101 writes to a type do."""
    srv = APIServer().start()
    try:
        assert srv.store.history_size == 100
        c = api_client_for(srv)
        v1 = k.CoreV1Api(c)
        rv = v1.create_namespaced_secret("default", {"metadata": {"name": "s0"}}).metadata.resource_version
        for i in range(150):  # another type only
            v1.create_namespaced_config_map("default", {"metadata": {"name": f"n{i}"}})
        evs = list(
            watch_events(c, "/api/v1/namespaces/default/secrets", {"resourceVersion": str(int(rv) - 1), "timeoutSeconds": "1"})
        )
        assert [(e["type"], e["object"]["metadata"]["name"]) for e in evs] == [("ADDED", "s0")]
        cm_rv = str(int(rv) + 1)  # the first ConfigMap's create: 149 more ConfigMap events since
        evs = list(watch_events(c, "/api/v1/namespaces/default/configmaps", {"resourceVersion": cm_rv}, timeout=5))
        assert len(evs) == 1 and evs[0]["type"] == "ERROR" and evs[0]["object"]["code"] == 410
    finally:
        srv.stop()
