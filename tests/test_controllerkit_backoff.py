"""controllerkit.backoff: the one retry policy (capped exponential, jittered, Retry-After honoured)."""

import threading

import pytest

from controllerkit import errors
from controllerkit.backoff import Backoff, exponential, retry_after_of
from controllerkit.workqueue import WorkQueue, run_workers


def test_exponential_doubles_to_the_cap():
    assert [exponential(n, 0.5, 10) for n in range(7)] == [0.5, 1, 2, 4, 8, 10, 10]
    assert exponential(10_000, 1, 30) == 30  # no overflow for absurd attempts


@pytest.mark.parametrize("r,factor", [(0.0, 0.8), (0.5, 1.0), (0.999999, 1.2)])
def test_jitter_spreads_within_its_band_and_never_past_the_cap(r, factor):
    assert exponential(2, 1, 100, jitter=0.2, rand=lambda: r) == pytest.approx(4 * factor, rel=1e-5)
    assert exponential(20, 1, 100, jitter=0.2, rand=lambda: r) <= 100


def test_bad_parameters_are_refused():
    for kw in ({"initial": -1, "cap": 1}, {"initial": 2, "cap": 1}, {"initial": 1, "cap": 2, "jitter": 1.0}):
        with pytest.raises(ValueError):
            Backoff(**kw)


def test_backoff_counts_attempts_and_resets():
    b = Backoff(0.2, 2.0, jitter=0)
    assert [b.next() for _ in range(6)] == [0.2, 0.4, 0.8, 1.6, 2.0, 2.0]
    b.reset()
    assert b.next() == 0.2


def test_a_servers_retry_after_is_a_floor():
    b = Backoff(0.1, 1.0, jitter=0)
    assert b.next(retry_after=7) == 7  # longer than the cap: the server knows best
    assert b.next(retry_after=0.01) == 0.2  # shorter: the backoff still applies


def test_retry_after_comes_from_the_status_or_the_header():
    status = {
        "kind": "Status",
        "code": 429,
        "reason": "TooManyRequests",
        "message": "slow down",
        "details": {"retryAfterSeconds": 3},
    }
    assert retry_after_of(errors.from_response(429, status)) == 3
    plain = {"kind": "Status", "code": 429, "reason": "TooManyRequests", "message": "slow down"}
    assert retry_after_of(errors.from_response(429, plain, {"Retry-After": "5"})) == 5
    assert retry_after_of(errors.from_response(429, plain, {"Retry-After": "Fri, 04 Dec 2026 10:00:00 GMT"})) is None
    assert retry_after_of(errors.from_response(429, plain)) is None
    assert retry_after_of(ValueError("x")) is None


def test_a_failed_sync_with_retry_after_is_requeued_no_sooner(monkeypatch):
    q = WorkQueue("t", base_delay=0.001, max_delay=0.01)
    delays = []
    monkeypatch.setattr(q, "add_after", lambda key, delay: delays.append((key, delay)))
    stop = threading.Event()
    done = threading.Event()

    def sync(key):
        done.set()
        raise errors.from_response(
            429, {"kind": "Status", "code": 429, "reason": "TooManyRequests", "message": "m", "details": {"retryAfterSeconds": 2}}
        )

    q.add("k")
    run_workers(q, sync, workers=1, stop=stop)
    assert done.wait(10)
    from kubesim.polling import wait_for

    wait_for(lambda: delays, timeout=10, what="the failed key to be re-queued")
    stop.set()
    q.shutdown()
    assert delays and delays[0] == ("k", 2)
