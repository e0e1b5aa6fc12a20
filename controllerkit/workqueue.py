"""A de-duplicating, rate-limited work queue of keys, with client-go's semantics.

Why: events only say "look at this key again". Ten events for one object while a worker is busy
should become one more sync, not ten; a key must never be synced by two workers at once (they would
race on the same object); and a failed sync must come back later, with growing delay, never be
silently dropped. This is client-go's ``workqueue.RateLimitingInterface`` in ~150 lines:

* ``add(k)``: queued once however often it is added (the *dirty* set);
* while ``k`` is being processed (between ``get`` and ``done``) adding it again only marks it dirty;
  ``done(k)`` re-queues it, so the newest state is always synced after the current pass;
* ``add_rate_limited(k)``: re-add after ``base_delay * 2**failures`` (capped at ``max_delay``);
  ``forget(k)`` resets the failure count after a successful sync.
"""

from __future__ import annotations

from .backoff import exponential, retry_after_of

import collections
import heapq
import itertools
import threading
import time
from typing import Callable, Hashable

from prometheus_client import Counter, Gauge, Histogram

__all__ = ["WorkQueue", "run_workers"]

_DEPTH = Gauge("workqueue_depth", "Keys waiting to be processed", ["name"])
_ADDS = Counter("workqueue_adds_total", "Keys added (after de-duplication)", ["name"])
_RETRIES = Counter("workqueue_retries_total", "Rate-limited re-adds after a failed sync", ["name"])
_SYNC_SECONDS = Histogram("workqueue_work_duration_seconds", "Time spent in sync(key)", ["name"])
_SYNC_ERRORS = Counter("workqueue_sync_errors_total", "sync(key) calls that raised", ["name"])


class WorkQueue:
    """Thread-safe de-duplicating queue of hashable keys (see module docstring)."""

    def __init__(self, name: str = "", *, base_delay: float = 0.005, max_delay: float = 30.0):
        if base_delay <= 0 or max_delay < base_delay:
            raise ValueError("need 0 < base_delay <= max_delay")
        self.name = name
        self.base_delay = base_delay
        self.max_delay = max_delay
        lock = threading.Lock()
        self._cond = threading.Condition(lock)  # workers waiting in get()
        self._delay_cond = threading.Condition(lock)  # the delayed-add thread (separate: no lost wakeups)
        self._queue: collections.deque = collections.deque()
        self._dirty: set = set()
        self._processing: set = set()
        self._failures: dict = {}
        self._shutting_down = False
        # delayed adds: heap of (ready_at, seq, key); _waiting[key] = earliest ready_at
        self._heap: list = []
        self._waiting: dict = {}
        self._seq = itertools.count()
        self._delay_thread: threading.Thread | None = None
        self._metric_name = name or "default"

    # -- basic queue ---------------------------------------------------------------------------
    def add(self, key: Hashable) -> None:
        """Queue ``key`` unless it is already queued; if it is being processed, re-queue it on ``done``."""
        with self._cond:
            self._add_locked(key)

    def _add_locked(self, key) -> None:
        if self._shutting_down or key in self._dirty:
            return
        self._dirty.add(key)
        _ADDS.labels(self._metric_name).inc()
        if key in self._processing:
            return
        self._queue.append(key)
        _DEPTH.labels(self._metric_name).set(len(self._queue))
        self._cond.notify()

    def get(self, timeout: float | None = None):
        """Next key, marked as processing (call ``done(key)`` after). ``None`` on shutdown or timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._queue and not self._shutting_down:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._cond.wait(remaining)
            if self._shutting_down:
                return None
            key = self._queue.popleft()
            _DEPTH.labels(self._metric_name).set(len(self._queue))
            self._processing.add(key)
            self._dirty.discard(key)
            return key

    def done(self, key) -> None:
        """Finish processing ``key``; if it was added meanwhile, it goes back in the queue now."""
        with self._cond:
            self._processing.discard(key)
            if key in self._dirty:
                self._queue.append(key)
                _DEPTH.labels(self._metric_name).set(len(self._queue))
                self._cond.notify()

    def shutdown(self) -> None:
        """Stop handing out keys: every ``get`` (waiting or future) returns ``None``."""
        with self._cond:
            self._shutting_down = True
            self._cond.notify_all()
            self._delay_cond.notify_all()

    @property
    def shutting_down(self) -> bool:
        return self._shutting_down

    def __len__(self) -> int:
        with self._cond:
            return len(self._queue)

    # -- delayed and rate-limited adds -----------------------------------------------------------
    def add_after(self, key, delay: float) -> None:
        """Add ``key`` after ``delay`` seconds (at the earliest of several pending delayed adds)."""
        if delay <= 0:
            self.add(key)
            return
        ready_at = time.monotonic() + delay
        with self._cond:
            if self._shutting_down:
                return
            current = self._waiting.get(key)
            if current is not None and current <= ready_at:
                return
            self._waiting[key] = ready_at
            heapq.heappush(self._heap, (ready_at, next(self._seq), key))
            if self._delay_thread is None:
                self._delay_thread = threading.Thread(target=self._delay_loop, name=f"workqueue-delay-{self.name}", daemon=True)
                self._delay_thread.start()
            self._delay_cond.notify()

    def _delay_loop(self) -> None:
        with self._cond:
            while not self._shutting_down:
                now = time.monotonic()
                while self._heap and self._heap[0][0] <= now:
                    ready_at, _, key = heapq.heappop(self._heap)
                    if self._waiting.get(key) == ready_at:  # else superseded by an earlier add_after
                        del self._waiting[key]
                        self._add_locked(key)
                timeout = (self._heap[0][0] - now) if self._heap else None
                self._delay_cond.wait(timeout)

    def when(self, key) -> float:
        """Delay for the next retry of ``key`` (and count the failure): base * 2**n, capped."""
        with self._cond:
            n = self._failures.get(key, 0)
            self._failures[key] = n + 1
        return exponential(n, self.base_delay, self.max_delay)  # client-go's: no jitter

    def add_rate_limited(self, key, retry_after: float | None = None) -> None:
        """Re-add ``key`` after its per-key exponential backoff (a failed sync), and no sooner than
        ``retry_after`` seconds when the server asked for that (a 429's Retry-After)."""
        _RETRIES.labels(self._metric_name).inc()
        delay = self.when(key)
        if retry_after is not None and retry_after > delay:
            delay = retry_after
        self.add_after(key, delay)

    def forget(self, key) -> None:
        """Reset ``key``'s failure count (call after a successful sync)."""
        with self._cond:
            self._failures.pop(key, None)

    def num_requeues(self, key) -> int:
        with self._cond:
            return self._failures.get(key, 0)


def run_workers(
    queue: WorkQueue, sync: Callable[[str], object], *, workers: int = 1, stop: threading.Event, logger=None, on_error=None
) -> list[threading.Thread]:
    """Start ``workers`` daemon threads that run ``sync(key)`` for each queued key until ``stop`` is set
    (or the queue is shut down).

    A sync that returns forgets the key's failures; one that raises is logged with the key and the
    error and re-added rate-limited. ``on_error(key, exc)`` is called first; if it returns ``False``
    (exactly) the key is forgotten instead of retried: the caller's explicit decision (logged), for
    errors it knows to be permanent and has already reported.
    """
    if workers < 1:
        raise ValueError("workers must be >= 1")

    def loop() -> None:
        while not stop.is_set():
            key = queue.get(timeout=0.2)
            if key is None:
                if queue.shutting_down:
                    return
                continue
            started = time.monotonic()
            try:
                sync(key)
            except Exception as exc:  # noqa: BLE001 - every failure is retried, never dropped
                _SYNC_ERRORS.labels(queue._metric_name).inc()
                retry = True
                if on_error is not None:
                    try:
                        retry = on_error(key, exc) is not False
                    except Exception as cb_exc:  # noqa: BLE001
                        if logger is not None:
                            logger.error("on_error_failed", key=key, error=str(cb_exc))
                if logger is not None:
                    logger.warning(
                        "sync_failed",
                        queue=queue.name,
                        key=key,
                        error=str(exc),
                        error_type=type(exc).__name__,
                        retries=queue.num_requeues(key),
                        requeue=retry,
                    )
                if retry:
                    queue.add_rate_limited(key, retry_after_of(exc))
                else:
                    queue.forget(key)
            else:
                queue.forget(key)
            finally:
                _SYNC_SECONDS.labels(queue._metric_name).observe(time.monotonic() - started)
                queue.done(key)

    threads = []
    for i in range(workers):
        t = threading.Thread(target=loop, name=f"worker-{queue.name or 'q'}-{i}", daemon=True)
        t.start()
        threads.append(t)
    return threads
