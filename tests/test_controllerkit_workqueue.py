"""controllerkit.workqueue: client-go semantics (de-duplication, no concurrent processing of a key,
re-add during processing, rate-limited retries, forget) and run_workers."""

import collections
import threading
import time

import pytest

from controllerkit.workqueue import WorkQueue, run_workers


def test_key_added_twice_is_processed_once():
    q = WorkQueue("t")
    q.add("ns/a")
    q.add("ns/a")
    q.add("ns/b")
    assert len(q) == 2
    assert q.get(timeout=1) == "ns/a"
    assert q.get(timeout=1) == "ns/b"
    assert q.get(timeout=0.05) is None


def test_readd_during_processing_is_requeued_after_done():
    q = WorkQueue("t")
    q.add("k")
    assert q.get(timeout=1) == "k"
    q.add("k")
    q.add("k")
    assert len(q) == 0, "a key being processed must not be handed to another worker"
    assert q.get(timeout=0.05) is None
    q.done("k")
    assert len(q) == 1
    assert q.get(timeout=1) == "k"
    q.done("k")
    assert q.get(timeout=0.05) is None, "done without a re-add must not requeue"


def test_get_blocks_until_add():
    q = WorkQueue("t")
    threading.Timer(0.1, q.add, args=("late",)).start()
    t0 = time.monotonic()
    assert q.get(timeout=30) == "late"  # the add woke it up: a timeout would return None
    assert time.monotonic() - t0 > 0.05  # it did block until the add


def test_shutdown_releases_waiting_get_and_drops_nothing_silently_before():
    q = WorkQueue("t")
    results = []
    t = threading.Thread(target=lambda: results.append(q.get()))
    t.start()
    time.sleep(0.05)
    q.shutdown()
    t.join(2)
    assert results == [None]
    q.add("after")
    assert len(q) == 0 and q.get(timeout=0.01) is None


def test_backoff_grows_exponentially_caps_and_forget_resets():
    q = WorkQueue("t", base_delay=0.01, max_delay=0.1)
    delays = [q.when("k") for _ in range(6)]
    assert delays == pytest.approx([0.01, 0.02, 0.04, 0.08, 0.1, 0.1])
    assert q.num_requeues("k") == 6
    assert q.num_requeues("other") == 0
    q.forget("k")
    assert q.num_requeues("k") == 0
    assert q.when("k") == pytest.approx(0.01)


def test_add_rate_limited_delays_growing():
    # Delays far above scheduling noise: a loaded 2-core CI machine can stall a thread for tens of ms,
    # which made a 0.05 s delay observable as "already due" (flaky). The early get()s only need to be
    # shorter than the delay, so they stay short.
    q = WorkQueue("t", base_delay=0.5, max_delay=5)
    t0 = time.monotonic()
    q.add_rate_limited("k")  # 0.5 s
    assert q.get(timeout=0.1) is None
    assert q.get(timeout=5) == "k"
    assert time.monotonic() - t0 >= 0.45
    q.done("k")
    t1 = time.monotonic()
    q.add_rate_limited("k")  # 1.0 s now
    assert q.get(timeout=0.3) is None
    assert q.get(timeout=5) == "k"
    assert q.num_requeues("k") == 2
    assert time.monotonic() - t1 >= 0.9


def test_add_after_keeps_earliest_and_dedups():
    q = WorkQueue("t")
    q.add_after("k", 5)
    q.add_after("k", 0.05)
    q.add_after("k", 0.06)
    assert q.get(timeout=1) == "k"
    q.done("k")
    assert q.get(timeout=0.2) is None, "the superseded 0.06 s and the 5 s adds must not add it again soon"


def test_rejects_bad_delays():
    with pytest.raises(ValueError):
        WorkQueue("t", base_delay=0)


def test_workers_never_process_one_key_concurrently_and_see_the_last_add():
    q = WorkQueue("t")
    stop = threading.Event()
    active = collections.Counter()
    overlap = []
    seen_version = {}
    versions = {}
    lock = threading.Lock()

    def sync(key):
        with lock:
            active[key] += 1
            if active[key] > 1:
                overlap.append(key)
            v = versions[key]
        time.sleep(0.002)
        with lock:
            seen_version[key] = v
            active[key] -= 1

    threads = run_workers(q, sync, workers=4, stop=stop)
    keys = [f"ns/k{i}" for i in range(5)]
    for rnd in range(60):
        for k in keys:
            with lock:
                versions[k] = rnd
            q.add(k)
        time.sleep(0.001)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(seen_version.get(k) != 59 for k in keys):
        time.sleep(0.01)
    stop.set()
    for t in threads:
        t.join(2)
    assert overlap == []
    assert all(seen_version[k] == 59 for k in keys), seen_version
    assert not any(t.is_alive() for t in threads)


def test_failed_sync_is_retried_with_backoff_then_forgotten():
    q = WorkQueue("t", base_delay=0.01, max_delay=0.05)
    stop = threading.Event()
    calls = []
    errors_seen = []
    done = threading.Event()

    def sync(key):
        calls.append((key, time.monotonic()))
        if len(calls) < 4:
            raise RuntimeError(f"boom {len(calls)}")
        done.set()

    class Log:
        def __init__(self):
            self.lines = []

        def warning(self, event, **kw):
            self.lines.append((event, kw))

        error = warning

    log = Log()
    run_workers(q, sync, stop=stop, logger=log, on_error=lambda k, e: errors_seen.append((k, str(e))))
    q.add("ns/a")
    assert done.wait(3)
    stop.set()
    assert [k for k, _ in calls] == ["ns/a"] * 4
    gaps = [b - a for (_, a), (_, b) in zip(calls, calls[1:])]
    assert gaps[0] >= 0.009 and gaps[2] >= 0.035, gaps  # 0.01, 0.02, 0.04
    assert errors_seen == [("ns/a", "boom 1"), ("ns/a", "boom 2"), ("ns/a", "boom 3")]
    assert [kw["key"] for ev, kw in log.lines if ev == "sync_failed"] == ["ns/a"] * 3
    deadline = time.monotonic() + 1
    while q.num_requeues("ns/a") and time.monotonic() < deadline:
        time.sleep(0.005)
    assert q.num_requeues("ns/a") == 0, "a successful sync forgets the failures"


def test_on_error_false_forgets_instead_of_retrying():
    q = WorkQueue("t", base_delay=0.01)
    stop = threading.Event()
    calls = []

    def sync(key):
        calls.append(key)
        raise ValueError("permanent")

    run_workers(q, sync, stop=stop, on_error=lambda k, e: False)
    q.add("x")
    time.sleep(0.2)
    stop.set()
    assert calls == ["x"]
    assert q.num_requeues("x") == 0


def test_workers_exit_on_queue_shutdown():
    q = WorkQueue("t")
    threads = run_workers(q, lambda k: None, workers=2, stop=threading.Event())
    q.shutdown()
    for t in threads:
        t.join(2)
    assert not any(t.is_alive() for t in threads)


# -- model-based check of the single-threaded semantics (hypothesis stateful testing) --------------
from hypothesis import settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule  # noqa: E402

KEYS = st.sampled_from(["a", "b", "c"])


class QueueModel(RuleBasedStateMachine):
    """The client-go contract as a model: FIFO of distinct keys, dirty set, processing set."""

    def __init__(self):
        super().__init__()
        self.q = WorkQueue("model")
        self.fifo, self.dirty, self.processing = [], set(), set()

    @rule(key=KEYS)
    def add(self, key):
        self.q.add(key)
        if key in self.dirty:
            return
        self.dirty.add(key)
        if key not in self.processing:
            self.fifo.append(key)

    @rule()
    def get(self):
        got = self.q.get(timeout=0)
        if not self.fifo:
            assert got is None
            return
        expected = self.fifo.pop(0)
        assert got == expected
        self.processing.add(got)
        self.dirty.discard(got)

    @precondition(lambda self: self.processing)
    @rule(data=st.data())
    def done(self, data):
        key = data.draw(st.sampled_from(sorted(self.processing)))
        self.q.done(key)
        self.processing.discard(key)
        if key in self.dirty:
            self.fifo.append(key)

    @invariant()
    def same_length_and_no_key_both_queued_and_processing(self):
        assert len(self.q) == len(self.fifo)
        assert not set(self.fifo) & self.processing
        assert len(set(self.fifo)) == len(self.fifo)


TestQueueModel = QueueModel.TestCase
TestQueueModel.settings = settings(max_examples=150, stateful_step_count=30, deadline=None)
