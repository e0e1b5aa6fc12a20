"""controllerkit.informer against a local server speaking the Kubernetes list/watch protocol:
resourceVersion tracking, relist on 410 (ERROR event and HTTP status), reconnect after a stream cut
mid-line, re-watch after a normal end, resync, handler isolation and cache protection."""

import functools
import threading
import time

import pytest

from controllerkit.informer import Informer, Store, key_of
from controllerkit.kube import Client
from kubesim.testing import wait_for

PODS = "/api/v1/pods"
QUERY = {"includeUninitialized": "true", "fieldSelector": "spec.nodeName=n1"}


def pod(name, ns="ns", **spec):
    return {"metadata": {"name": name, "namespace": ns}, "spec": dict(spec)}


wait_for = functools.partial(wait_for, timeout=5.0, interval=0.005)


class Recorder:
    def __init__(self):
        self.events = []
        self.lock = threading.Lock()

    def on_add(self, obj):
        with self.lock:
            self.events.append(("add", key_of(obj), obj["metadata"]["resourceVersion"]))

    def on_update(self, old, new):
        with self.lock:
            self.events.append(("update", key_of(new), new["metadata"]["resourceVersion"]))

    def on_delete(self, obj):
        with self.lock:
            self.events.append(("delete", key_of(obj), obj["metadata"].get("resourceVersion")))

    def kinds(self, key=None):
        with self.lock:
            return [(e[0], e[1]) for e in self.events if key is None or e[1] == key]


@pytest.fixture
def srv(fake_api_server):
    return fake_api_server


@pytest.fixture
def make_informer(srv):
    started = []

    srv.add_collection(PODS)

    def make(**kw):
        kw.setdefault("query", QUERY)
        kw.setdefault("resync_period", 0)
        kw.setdefault("backoff_initial", 0.02)
        kw.setdefault("backoff_max", 0.1)
        kw.setdefault("watch_timeout", (5, 5))
        inf = Informer(Client.from_url(srv.url), PODS, name="pods", **kw)
        rec = Recorder()
        inf.add_handler(rec.on_add, rec.on_update, rec.on_delete)
        started.append(inf)
        return inf, rec

    yield make
    for inf in started:
        inf.stop()


def lists(srv):
    return [q for m, p, q in list(srv.requests) if p == PODS and "watch" not in q]


def watches(srv):
    return [q for m, p, q in list(srv.requests) if p == PODS and q.get("watch") == "true"]


def test_key_of():
    assert key_of(pod("a", "ns")) == "ns/a"
    assert key_of({"metadata": {"name": "node1"}}) == "node1"
    with pytest.raises(ValueError):
        key_of({"metadata": {}})


def test_store_returns_copies():
    s = Store()
    s._set("ns/a", pod("a"))
    got = s.get("ns/a")
    got["spec"]["mutated"] = True
    assert "mutated" not in s.get("ns/a")["spec"]
    assert s.get("nope") is None and s.keys() == ["ns/a"] and len(s.list()) == 1
    listed = s.list()
    listed[0]["spec"]["mutated"] = True
    assert "mutated" not in s.get("ns/a")["spec"]
    assert s.list(copy=False)[0] is s.list(copy=False)[0], "copy=False shares the cached objects"


def test_list_then_watch_tracks_resource_version_and_passes_query(srv, make_informer):
    srv.upsert(PODS, pod("a"))
    srv.upsert(PODS, pod("b"))
    inf, rec = make_informer()
    assert not inf.has_synced
    inf.start()
    assert inf.wait_for_sync(5)
    assert sorted(inf.store.keys()) == ["ns/a", "ns/b"]
    assert inf.last_resource_version == str(srv.resource_version)
    assert sorted(rec.kinds()) == [("add", "ns/a"), ("add", "ns/b")]
    wait_for(lambda: watches(srv), what="first watch")
    w = watches(srv)[0]
    assert w["resourceVersion"] == inf.last_resource_version
    assert w["includeUninitialized"] == "true" and w["fieldSelector"] == "spec.nodeName=n1"
    assert 1 <= int(w["timeoutSeconds"]) <= 5
    assert lists(srv)[0] == QUERY

    b2 = srv.upsert(PODS, pod("b", image="v2"))
    srv.remove(PODS, "ns", "a")
    c = srv.upsert(PODS, pod("c"))
    wait_for(lambda: inf.last_resource_version == c["metadata"]["resourceVersion"], what="rv of last event")
    assert rec.kinds()[2:] == [("update", "ns/b"), ("delete", "ns/a"), ("add", "ns/c")]
    assert inf.store.get("ns/b")["spec"] == {"image": "v2"}
    assert inf.store.get("ns/b")["metadata"]["resourceVersion"] == b2["metadata"]["resourceVersion"]
    assert sorted(inf.store.keys()) == ["ns/b", "ns/c"]

    srv.bookmark(PODS)
    wait_for(lambda: inf.last_resource_version == str(srv.resource_version), what="bookmark rv")
    assert len(rec.kinds()) == 5, "a BOOKMARK moves the resourceVersion and calls no handler"


@pytest.mark.parametrize("how", ["error410", "http410"])
def test_relist_after_gone_reports_what_was_missed(srv, make_informer, how):
    srv.upsert(PODS, pod("a"))
    srv.upsert(PODS, pod("b"))
    inf, rec = make_informer()
    inf.start()
    assert inf.wait_for_sync(5)
    wait_for(lambda: watches(srv), what="first watch")
    # while the informer is not looking: history is compacted, b is deleted, c is created, a changes
    with srv._lock:
        srv.compact()
        coll = srv._coll(PODS)
        del coll.objects["ns/b"]
        srv._rv += 1
        coll.objects["ns/c"] = {**pod("c"), "metadata": {**pod("c")["metadata"], "resourceVersion": str(srv._rv)}}
        srv._rv += 1
        coll.objects["ns/a"]["metadata"]["resourceVersion"] = str(srv._rv)
        srv.compacted_rv = srv._rv
        # error410: the open watch gets an ERROR event; http410: the open watch ends normally and the
        # re-watch from the (now compacted) resourceVersion is answered with HTTP 410
        coll.faults.append("error410" if how == "error410" else "close")
        srv._lock.notify_all()
    wait_for(lambda: len(lists(srv)) == 2, what="relist")
    wait_for(lambda: len(rec.kinds()) == 5, what="events from the relist")
    assert sorted(rec.kinds()[2:]) == [("add", "ns/c"), ("delete", "ns/b"), ("update", "ns/a")]
    assert sorted(inf.store.keys()) == ["ns/a", "ns/c"]
    assert inf.last_resource_version == str(srv.resource_version)
    d = srv.upsert(PODS, pod("d"))
    wait_for(lambda: ("add", "ns/d") in rec.kinds(), what="events after the relist")
    assert watches(srv)[-1]["resourceVersion"] in (str(srv.compacted_rv), d["metadata"]["resourceVersion"])


@pytest.mark.parametrize("fault", ["cut", "end_mid_line", "http500"])
def test_reconnect_after_stream_failure_resumes_from_last_rv_without_relist(srv, make_informer, fault):
    srv.upsert(PODS, pod("a"))
    inf, rec = make_informer()
    inf.start()
    assert inf.wait_for_sync(5)
    b = srv.upsert(PODS, pod("b"))
    wait_for(lambda: inf.last_resource_version == b["metadata"]["resourceVersion"], what="event b")
    n_watches = len(watches(srv))
    # an http500 answers the next watch request, so end the current watch first
    srv.fault(PODS, *(("close", "http500") if fault == "http500" else (fault,)))
    wait_for(lambda: len(watches(srv)) >= n_watches + (2 if fault == "http500" else 1), what="re-watch")
    c = srv.upsert(PODS, pod("c"))
    wait_for(lambda: ("add", "ns/c") in rec.kinds(), what="event after reconnect")
    assert len(lists(srv)) == 1, "a broken stream is resumed, not relisted"
    resumed = [w["resourceVersion"] for w in watches(srv)[n_watches:]]
    assert set(resumed) <= {b["metadata"]["resourceVersion"], c["metadata"]["resourceVersion"]}
    assert rec.kinds() == [("add", "ns/a"), ("add", "ns/b"), ("add", "ns/c")], "no duplicate or lost events"


def test_cut_after_events_resumes_at_once_not_after_backoff(srv, make_informer):
    """A watch that delivered events and was then cut resumes immediately (client-go does the same);
    the backoff is for servers that fail again and again. With a 30 s initial backoff, the old code
    re-watched only after ~30 s."""
    srv.upsert(PODS, pod("a"))
    inf, rec = make_informer(backoff_initial=30.0, backoff_max=60.0)
    inf.start()
    assert inf.wait_for_sync(5)
    srv.upsert(PODS, pod("b"))
    wait_for(lambda: ("add", "ns/b") in rec.kinds(), what="event b on the first watch")
    n_watches = len(watches(srv))
    srv.fault(PODS, "cut")
    wait_for(lambda: len(watches(srv)) > n_watches, timeout=5, what="immediate re-watch after the cut")
    srv.upsert(PODS, pod("c"))
    wait_for(lambda: ("add", "ns/c") in rec.kinds(), timeout=5, what="event after the resumed watch")
    assert len(lists(srv)) == 1


def test_server_closing_watch_normally_rewatches(srv, make_informer):
    srv.upsert(PODS, pod("a"))
    srv.max_watch_seconds = 0.05
    inf, rec = make_informer(backoff_initial=0.01)
    inf.start()
    assert inf.wait_for_sync(5)
    wait_for(lambda: len(watches(srv)) >= 3, what="several re-watches")
    srv.max_watch_seconds = 30
    b = srv.upsert(PODS, pod("b"))
    wait_for(lambda: ("add", "ns/b") in rec.kinds(), what="event after re-watch")
    assert len(lists(srv)) == 1
    assert inf.last_resource_version == b["metadata"]["resourceVersion"]


def test_initial_list_failure_is_retried(srv, make_informer):
    srv.route("GET", PODS, 500, {"kind": "Status", "code": 500, "reason": "InternalError", "message": "etcd down"})
    srv.route("GET", PODS, 403, {"kind": "Status", "code": 403, "reason": "Forbidden", "message": "rbac"})
    inf, rec = make_informer()
    inf.start()
    assert not inf.wait_for_sync(0.02)
    wait_for(lambda: len(lists(srv)) >= 3, what="list retries")
    assert not inf.has_synced
    srv._routes.clear()
    srv.upsert(PODS, pod("a"))
    assert inf.wait_for_sync(5)
    assert inf.store.keys() == ["ns/a"]


def test_handler_exception_does_not_kill_informer(srv, make_informer):
    inf, rec = make_informer()
    boom = []

    def bad_add(obj):
        boom.append(key_of(obj))
        raise RuntimeError("handler bug")

    inf.add_handler(on_add=bad_add)
    inf.start()
    assert inf.wait_for_sync(5)
    srv.upsert(PODS, pod("a"))
    srv.upsert(PODS, pod("b"))
    wait_for(lambda: rec.kinds() == [("add", "ns/a"), ("add", "ns/b")], what="events despite a failing handler")
    assert boom == ["ns/a", "ns/b"]
    assert inf._thread.is_alive()


def test_handlers_get_copies_not_the_cache(srv, make_informer):
    srv.upsert(PODS, pod("a"))
    inf, _ = make_informer()

    def mutate(obj):
        obj["metadata"]["name"] = "hijacked"
        obj["spec"]["evil"] = True

    inf.add_handler(on_add=mutate)
    inf.start()
    assert inf.wait_for_sync(5)
    assert inf.store.get("ns/a")["spec"] == {}
    assert inf.store.get("ns/a")["metadata"]["name"] == "a"


def test_resync_calls_update_with_same_object(srv, make_informer):
    srv.upsert(PODS, pod("a"))
    srv.upsert(PODS, pod("b"))
    inf, rec = make_informer(resync_period=0.1)
    pairs = []
    inf.add_handler(on_update=lambda old, new: pairs.append((key_of(old), old == new)))
    inf.start()
    assert inf.wait_for_sync(5)
    wait_for(lambda: len(pairs) >= 4, what="two resyncs")
    assert {k for k, _ in pairs} == {"ns/a", "ns/b"}
    assert all(same for _, same in pairs)


def test_late_handler_gets_existing_objects(srv, make_informer):
    srv.upsert(PODS, pod("a"))
    inf, _ = make_informer()
    inf.start()
    assert inf.wait_for_sync(5)
    late = []
    inf.add_handler(on_add=lambda o: late.append(key_of(o)))
    assert late == ["ns/a"]


def test_stop_returns_promptly_during_quiet_watch(srv, make_informer):
    inf, _ = make_informer(watch_timeout=(30, 30))
    inf.start()
    assert inf.wait_for_sync(5)
    wait_for(lambda: watches(srv), what="watch")
    inf.stop()
    # the watch would stay quiet for 30 s: stop() interrupted it rather than waiting it out
    assert not inf._thread.is_alive()


@pytest.mark.parametrize("fault", ["http500", "http410"])
def test_a_server_that_keeps_failing_gets_growing_backoff_not_a_busy_loop(srv, make_informer, fault):
    """Every watch answered 500 (reconnect) or 410 (relist, then 410 again): the informer keeps trying,
    with capped exponential backoff instead of as fast as the network allows, and recovers after."""
    srv.upsert(PODS, pod("a"))
    srv.fault(PODS, *[fault] * 500)
    inf, rec = make_informer(backoff_initial=0.05, backoff_max=0.4)
    inf.start()
    assert inf.wait_for_sync(5)
    time.sleep(1.0)
    n = len(watches(srv))
    # 0.05, 0.1, 0.2, 0.4, 0.4 s (+-20 %) between attempts: about 5 in a second; a busy loop makes dozens
    assert 3 <= n <= 9, f"{n} watch attempts in 1 s"
    if fault == "http410":
        assert len(lists(srv)) >= n, "each 410 forces a relist"
    with srv._lock:
        srv._coll(PODS).faults.clear()
    srv.upsert(PODS, pod("b"))
    wait_for(lambda: ("add", "ns/b") in rec.kinds(), what="events once the server recovers")
