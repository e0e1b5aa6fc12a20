"""podwatch's sync loop in-process with real iptables in a node namespace: coalescing, partial
syncs, periodic forced resync under constant churn, retry after a failed iptables-restore."""

from __future__ import annotations

import subprocess
import threading
import time

import pytest

from capture_topology import wait_for
from controllerkit.log import get_logger
from podwatch import controller, rules

ANN = "initializer.kubernetes.io/tproxy"


class Store:
    def __init__(self):
        self.pods: dict[str, dict] = {}

    def list(self):
        return list(self.pods.values())


class FakeInformer:
    """Only the cache: events are fed to the controller's handlers by the test."""

    def __init__(self):
        self.store = Store()

    def add_handler(self, *a):
        pass


def pod(i, ip=None, **labels):
    return {
        "metadata": {"namespace": "default", "name": f"p{i}", "uid": f"u{i}", "labels": labels, "annotations": {ANN: "true"}},
        "spec": {"nodeName": "n1"},
        "status": {"phase": "Running", "podIP": ip or f"10.5.{i // 256}.{i % 256}"},
    }


@pytest.fixture
def node():
    from kubesim.netns import Netns

    ns = Netns.create("cap-loop")
    yield ns
    ns.delete()


class RecordingLogger:
    """Keeps (level, event, fields) so a test can check what an operator would read."""

    def __init__(self):
        self.records = []

    def __getattr__(self, level):
        return lambda event, **kw: self.records.append((level, event, kw))


def make(node, runner=None, logger=None, **kw):
    pw = controller.PodWatch(
        node="n1",
        annotation=ANN,
        host_port=8080,
        runner=runner or rules.netns_runner(node.name),
        logger=logger or get_logger(component="podwatch-test"),
        **kw,
    )
    pw.attach(FakeInformer())
    calls = []
    real = pw.syncer.sync

    def counting(pods, *, force=False):
        res = real(pods, force=force)
        calls.append((force, len(pods), list(res.skipped)))
        return res

    pw.syncer.sync = counting
    t = threading.Thread(target=pw.run, daemon=True)
    return pw, calls, t


def redirects(node):
    return node.run("iptables", "-t", "nat", "-S", rules.REDIRECT_CHAIN, check=False).stdout.count("-j REDIRECT")


@pytest.mark.root
def test_a_burst_of_events_coalesces_into_few_syncs(node):
    pw, calls, t = make(node, min_sync_interval=0.2, resync_period=60)
    t.start()
    try:
        wait_for(lambda: calls, what="first sync")
        for i in range(200):
            p = pod(i)
            pw.informer.store.pods[f"p{i}"] = p
            pw.on_add(p)
        wait_for(lambda: redirects(node) == 200, what="200 pods programmed")
        # 200 events, a handful of syncs (the first, empty one may already have seen the burst)
        assert 1 <= len(calls) <= 10, calls
        assert all("ipv6" in skipped for force, _, skipped in calls[1:])  # IPv6 unchanged: not rewritten
    finally:
        pw.stop()
        t.join(5)


@pytest.mark.root
def test_periodic_forced_resync_repairs_drift_even_under_constant_churn(node):
    pw, calls, t = make(node, min_sync_interval=0.05, resync_period=0.6)
    pw.informer.store.pods["p1"] = pod(1)
    t.start()
    stop = threading.Event()

    def churn():  # label changes: events that do not change the rules (unforced syncs skip)
        n = 0
        while not stop.is_set():
            n += 1
            p = pod(1, gen=str(n))
            pw.informer.store.pods["p1"] = p
            pw.on_update(p, p)
            time.sleep(0.05)

    c = threading.Thread(target=churn)
    try:
        wait_for(lambda: redirects(node) == 1, what="first sync")
        c.start()
        node.run("iptables", "-t", "nat", "-F", rules.REDIRECT_CHAIN)
        wait_for(lambda: redirects(node) == 1, timeout=10, what="drift repaired")
        assert any(skipped == ["ipv4", "ipv6"] for _, _, skipped in calls)  # churn did not rewrite
    finally:
        stop.set()
        pw.stop()
        t.join(5)
        if c.is_alive():
            c.join(5)


@pytest.mark.root
def test_failed_restore_is_retried_with_backoff_and_counted(node):
    real = rules.netns_runner(node.name)
    fail = {"left": 2}

    def flaky(argv, input=None):
        if "iptables-nft-restore" in argv and fail["left"] > 0:  # the backend podwatch defaults to
            fail["left"] -= 1
            return subprocess.CompletedProcess(argv, 1, "", "iptables-restore: line 3 failed\n")
        return real(argv, input)

    before = controller.SYNC_FAILURES.labels("ipv4")._value.get()
    log = RecordingLogger()
    pw, calls, t = make(node, runner=flaky, logger=log, min_sync_interval=0.01, resync_period=60)
    pw.informer.store.pods["p1"] = pod(1)
    assert pw.ready()[0] is False
    t.start()
    try:
        wait_for(lambda: redirects(node) == 1, timeout=5, what="applied after retries")
        assert controller.SYNC_FAILURES.labels("ipv4")._value.get() - before >= 1
        assert all(force for force, _, _ in calls)  # retries rewrite everything
        wait_for(lambda: pw.ready()[0], what="ready after success")
        # the error names the table and quotes the restore input line iptables complained about
        failed = [kw for level, event, kw in log.records if event == "sync_failed" and level == "error"]
        assert failed and failed[0]["family"] == "ipv4" and failed[0]["table"] == "filter"
        assert failed[0]["offending_lines"] == [f"3: :{rules.LOCKED_CHAIN} - [0:0]"]
        assert "line 3 failed" in failed[0]["error"]
    finally:
        pw.stop()
        t.join(5)


@pytest.mark.root
def test_removing_the_annotation_of_a_running_pod_keeps_it_locked_until_it_is_gone(node):
    """Otherwise `kubectl annotate pod p1 tproxy-` would lift the redirect and guard while the
    pod's own lock still lets tcp 80/443 out: a bypass of the proxy."""
    log = RecordingLogger()
    pw, _, _ = make(node, logger=log)
    store = pw.informer.store.pods
    store["p1"], store["p2"] = pod(1), pod(2)
    assert pw.sync_once()
    assert redirects(node) == 2
    for value in (None, "false"):  # annotation deleted, or set to "false"
        p1 = pod(1)
        if value is None:
            del p1["metadata"]["annotations"][ANN]
        else:
            p1["metadata"]["annotations"][ANN] = value
        store["p1"] = p1
        assert pw.sync_once() and redirects(node) == 2
    warned = [kw for level, event, kw in log.records if event == "annotation_removed_kept_locked"]
    assert len(warned) == 1 and warned[0]["pod"] == "default/p1"  # once, not every sync
    gone = pod(1)
    del gone["metadata"]["annotations"][ANN]
    gone["status"]["phase"] = "Succeeded"
    store["p1"] = gone
    assert pw.sync_once() and redirects(node) == 1  # terminated: its rules go, p2's stay
    p2 = pod(2)
    p2["metadata"]["deletionTimestamp"] = "2026-12-04T10:00:00Z"  # a graceful delete
    store["p2"] = p2
    assert pw.sync_once() and redirects(node) == 1  # terminating: its containers may still run
    del store["p2"]
    assert pw.sync_once() and redirects(node) == 0  # deleted once they stopped: its rules go
    store["p3"] = pod(3)
    del store["p3"]["metadata"]["annotations"][ANN]
    assert pw.sync_once() and redirects(node) == 0  # never seen annotated: never locked


@pytest.mark.root
def test_a_restarted_podwatch_keeps_pods_locked_whose_annotation_went_while_it_was_down(node):
    """The rules on the node are the memory across a restart: matched by IP and ns/name."""
    first, _, _ = make(node)
    for i in (1, 2, 3):
        first.informer.store.pods[f"p{i}"] = pod(i)
    assert first.sync_once() and redirects(node) == 3
    # podwatch down; meanwhile p1 loses its annotation, p2 is deleted, and p3 is replaced by a
    # new pod of the same name on another IP without the annotation
    log = RecordingLogger()
    second, _, _ = make(node, logger=log)
    p1 = pod(1)
    del p1["metadata"]["annotations"][ANN]
    p3 = pod(3, ip="10.5.9.9")
    del p3["metadata"]["annotations"][ANN]
    second.informer.store.pods.update(p1=p1, p3=p3)
    assert second.sync_once()
    out = node.run("iptables", "-t", "nat", "-S", rules.REDIRECT_CHAIN).stdout
    assert redirects(node) == 1 and '"default/p1"' in out
    assert [kw["pod"] for _, event, kw in log.records if event == "annotation_removed_kept_locked"] == ["default/p1"]


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def _fake(**kw):
    clock = Clock()
    pw = controller.PodWatch(
        node="n1", annotation=ANN, host_port=8080, runner=lambda argv, **k: None, logger=RecordingLogger(), clock=clock, **kw
    )
    pw.informer = FakeInformer()
    pw._remembered = True  # no iptables reads: desired() only
    return pw, clock


def test_a_force_deleted_locked_pod_keeps_its_rules_for_its_grace_period():
    """A force delete removes the object while the containers may still run: dropping the redirect
    then would let the pod's own lock (tcp 80/443 allowed) send them out unfiltered."""
    pw, clock = _fake(departed_grace=35)
    pw.informer.store.pods["p1"] = pod(1)
    assert [p.name for p in pw.desired()] == ["p1"]
    del pw.informer.store.pods["p1"]
    clock.t += 10
    assert [p.name for p in pw.desired()] == ["p1"]  # still redirected and guarded
    assert any(e == "locked_pod_vanished_keeping_rules" for _, e, _ in pw.log.records)
    clock.t += 36  # 36 s after podwatch saw it vanish
    assert pw.desired() == []


def test_a_vanished_pods_address_taken_by_another_pod_drops_its_rules_at_once():
    pw, clock = _fake(departed_grace=35)
    pw.informer.store.pods["p1"] = pod(1, ip="10.9.0.1")
    pw.desired()
    del pw.informer.store.pods["p1"]
    pw.desired()
    plain = pod(2, ip="10.9.0.1")
    plain["metadata"]["annotations"] = {}
    pw.informer.store.pods["p2"] = plain  # an unlocked pod now owns the address
    assert pw.desired() == []


def test_a_pod_that_ended_or_zero_grace_keeps_nothing():
    pw, clock = _fake(departed_grace=35)
    done = pod(1)
    pw.informer.store.pods["p1"] = done
    pw.desired()
    done["status"]["phase"] = "Succeeded"  # its processes are gone
    assert pw.desired() == []
    del pw.informer.store.pods["p1"]
    assert pw.desired() == []
    pw0, _ = _fake(departed_grace=0)
    pw0.informer.store.pods["p1"] = pod(1)
    pw0.desired()
    del pw0.informer.store.pods["p1"]
    assert pw0.desired() == []


def test_a_gracefully_deleted_pod_loses_its_rules_when_its_object_goes():
    """Graceful deletion: the object (with deletionTimestamp) outlives the containers, so when it
    goes nothing of the pod runs any more and its rules go at once."""
    pw, clock = _fake(departed_grace=35)
    p = pod(1)
    pw.informer.store.pods["p1"] = p
    pw.desired()
    p["metadata"]["deletionTimestamp"] = "2026-12-04T10:00:00Z"
    assert [x.name for x in pw.desired()] == ["p1"]  # terminating: still locked
    del pw.informer.store.pods["p1"]
    assert pw.desired() == []


def test_a_force_deleted_pod_keeps_its_rules_but_not_its_identity(tmp_path):
    """Its containers may still run (rules kept), but its address may be reused at any moment: the
    identity file drops it at once, so the proxy judges that address as nobody's (the default
    policy), never as the old pod's, until the new pod's entry is written."""
    import json
    import subprocess

    clock = Clock()
    pw = controller.PodWatch(
        node="n1",
        annotation=ANN,
        host_port=8080,
        logger=RecordingLogger(),
        clock=clock,
        runner=lambda argv, *a, **k: subprocess.CompletedProcess(argv, 0, "", ""),
        departed_grace=35,
        identity_file=str(tmp_path / "identity.json"),
    )
    pw.informer = FakeInformer()
    pw._remembered = True
    pw.informer.store.pods["p1"] = pod(1, ip="10.9.0.1")
    pw.sync_once()
    assert "10.9.0.1" in json.loads((tmp_path / "identity.json").read_text())["pods"]
    del pw.informer.store.pods["p1"]
    pw.sync_once()
    assert [p.name for p in pw.desired()] == ["p1"]  # still redirected and guarded
    assert json.loads((tmp_path / "identity.json").read_text())["pods"] == {}
