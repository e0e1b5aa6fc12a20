"""List+watch informer with a cache, in the manner of client-go's reflector + shared informer.

Why: a controller must see every change to the objects it owns, survive watch drops and compacted
history, and never act on a half-known world. The informer

1. lists the collection (with the caller's query, e.g. ``includeUninitialized=true`` or
   ``fieldSelector=spec.nodeName=n1``) and replaces its :class:`Store`, emitting add/update/delete
   for the difference (so a relist after a gap still reports deletions it missed);
2. watches from the list's resourceVersion with the same query, tracking the newest
   resourceVersion of every event (BOOKMARKs included);
3. relists on ``410 Gone`` (as an ``ERROR`` event or as the HTTP status); reconnects after any other
   failure with capped, jittered exponential backoff; re-watches at once when the server ends a
   watch normally (``timeoutSeconds``, randomised 5-10 min like client-go);
4. calls ``on_update(obj, obj)`` for every cached object each ``resync_period``, so level-triggered
   controllers repair drift even without events.

Handlers run on the informer's thread, one at a time, and get deep copies: they may mutate what they
get without corrupting the cache (the original tutorial's informer mutated its cached objects). A
handler that raises is logged and the informer carries on. Handlers should be quick: enqueue a key
(see :mod:`controllerkit.workqueue`), do the work in ``sync(key)``.
"""

from __future__ import annotations

import builtins
import copy
from copy import deepcopy as _deepcopy
import random
import threading
import time
from typing import Callable

from prometheus_client import Counter, Gauge

from .backoff import exponential, retry_after_of
from .errors import Gone, is_retryable
from .kube import Client, WatchStream
from .log import get_logger

__all__ = ["key_of", "Store", "Informer"]

_EVENTS = Counter("informer_events_total", "Watch events received", ["informer", "type"])
_LISTS = Counter("informer_lists_total", "Full lists (initial list and relists)", ["informer"])
_ERRORS = Counter("informer_watch_errors_total", "List/watch failures by kind", ["informer", "error"])
_HANDLER_ERRORS = Counter("informer_handler_errors_total", "Event handlers that raised", ["informer"])
_SYNCED = Gauge("informer_synced", "1 once the informer's first list has completed", ["informer"])


def key_of(obj: dict) -> str:
    """``"namespace/name"``, or ``"name"`` for a cluster-scoped object (client-go's MetaNamespaceKeyFunc)."""
    md = obj.get("metadata") or {}
    name = md.get("name")
    if not name:
        raise ValueError("object has no metadata.name")
    ns = md.get("namespace")
    return f"{ns}/{name}" if ns else name


def _rv(obj: dict) -> str | None:
    return (obj.get("metadata") or {}).get("resourceVersion")


class Store:
    """Thread-safe cache keyed by :func:`key_of`. ``get`` and ``list`` return deep copies, so callers
    may mutate what they get (e.g. to build an update) without touching the cache."""

    def __init__(self):
        self._lock = threading.Lock()
        self._items: dict[str, dict] = {}

    def get(self, key: str) -> dict | None:
        with self._lock:
            obj = self._items.get(key)
            return copy.deepcopy(obj) if obj is not None else None

    def list(self, *, copy: bool = True) -> list[dict]:
        """All cached objects. ``copy=False`` skips the deep copies (for hot read-only paths such as a
        full resync over thousands of pods): the caller must then never mutate what it gets."""
        with self._lock:
            if not copy:
                return list(self._items.values())
            return [_deepcopy(o) for o in self._items.values()]

    def keys(self) -> builtins.list[str]:  # `list` here is the method above
        with self._lock:
            return list(self._items)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return key in self._items

    # internal: the informer's writes (store their own copies)
    def _set(self, key: str, obj: dict) -> dict | None:
        with self._lock:
            old = self._items.get(key)
            self._items[key] = obj
            return old

    def _pop(self, key: str) -> dict | None:
        with self._lock:
            return self._items.pop(key, None)

    def _replace(self, items: dict[str, dict]) -> dict[str, dict]:
        with self._lock:
            old, self._items = self._items, items
            return old


class Informer:
    """See module docstring. ``name`` labels logs and metrics (default: the path)."""

    def __init__(
        self,
        client: Client,
        path: str,
        *,
        query: dict | None = None,
        resync_period: float = 30.0,
        name: str = "",
        logger=None,
        backoff_initial: float = 0.2,
        backoff_max: float = 30.0,
        watch_timeout: tuple[float, float] = (300.0, 600.0),
    ):
        self.client = client
        self.path = path
        self.query = dict(query or {})
        self.resync_period = resync_period
        self.name = name or path
        self.log = logger if logger is not None else get_logger(informer=self.name)
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self._watch_progressed = False  # did the current watch deliver events before it failed?
        self.watch_timeout = watch_timeout
        self.store = Store()
        self.last_resource_version: str | None = None
        self._handlers: list[tuple[Callable | None, Callable | None, Callable | None]] = []
        self._dispatch_lock = threading.RLock()
        self._stop = threading.Event()
        self._synced = threading.Event()
        self._stream: WatchStream | None = None
        self._thread: threading.Thread | None = None
        self._resync_thread: threading.Thread | None = None

    # -- public ---------------------------------------------------------------------------------------
    @property
    def has_synced(self) -> bool:
        return self._synced.is_set()

    def add_handler(self, on_add=None, on_update=None, on_delete=None) -> None:
        """Register callbacks: ``on_add(obj)``, ``on_update(old, new)``, ``on_delete(obj)``.

        Handlers added after the informer synced get ``on_add`` for every cached object at once (as in
        client-go), so late registration misses nothing."""
        with self._dispatch_lock:
            self._handlers.append((on_add, on_update, on_delete))
            if self.has_synced and on_add is not None:
                for obj in self.store.list():
                    self._call(on_add, obj)

    def start(self) -> threading.Thread:
        if self._thread is not None:
            return self._thread
        self._thread = threading.Thread(target=self._run, name=f"informer-{self.name}", daemon=True)
        self._thread.start()
        if self.resync_period and self.resync_period > 0:
            self._resync_thread = threading.Thread(target=self._resync_loop, name=f"resync-{self.name}", daemon=True)
            self._resync_thread.start()
        return self._thread

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        stream = self._stream
        if stream is not None:
            stream.close()
        for t in (self._thread, self._resync_thread):
            if t is not None and t is not threading.current_thread():
                t.join(timeout)

    def wait_for_sync(self, timeout: float) -> bool:
        return self._synced.wait(timeout)

    # -- loop ----------------------------------------------------------------------------------------
    def _run(self) -> None:
        need_list = True
        failures = 0
        gone_streak = 0
        while not self._stop.is_set():
            try:
                if need_list:
                    self._list()
                    need_list = False
                got_events = self._watch()
                failures = 0
                gone_streak = 0
                if not got_events and not self._stop.is_set():
                    # The server ended a watch without sending anything: normal at timeoutSeconds,
                    # but a server that does it instantly must not turn this into a busy loop.
                    self._stop.wait(min(self.backoff_initial, 1.0))
            except Gone as exc:
                _ERRORS.labels(self.name, "Gone").inc()
                self.log.info("watch_gone_relisting", path=self.path, resource_version=self.last_resource_version, error=str(exc))
                need_list = True
                gone_streak += 1
                if gone_streak > 1:  # a relist that is immediately too old again: slow down
                    self._stop.wait(self._backoff(gone_streak - 2))
            except Exception as exc:  # noqa: BLE001 - an informer never dies of a bad stream
                if self._stop.is_set():
                    break
                _ERRORS.labels(self.name, type(exc).__name__).inc()
                if not need_list and self._watch_progressed:
                    # A watch that delivered events and was then cut: the server is up, resume from the
                    # newest resourceVersion at once (like client-go); back off only on repeated failure.
                    self._watch_progressed = False
                    failures = 0
                    delay = 0.0
                else:
                    delay = self._backoff(failures)
                    failures += 1
                asked = retry_after_of(exc)  # a 429 (or 503) that says how long to wait is obeyed
                if asked is not None and asked > delay:
                    delay = asked
                level = self.log.warning if is_retryable(exc) else self.log.error
                level(
                    "watch_failed",
                    path=self.path,
                    phase="list" if need_list else "watch",
                    error=str(exc),
                    error_type=type(exc).__name__,
                    retry_in=round(delay, 3),
                    attempt=failures,
                )
                self._stop.wait(delay)
        self._stream = None

    def _backoff(self, attempt: int) -> float:
        """Capped exponential backoff with +/-20 % jitter, so many informers do not reconnect in lockstep."""
        return exponential(attempt, self.backoff_initial, self.backoff_max, jitter=0.2)

    def _list(self) -> None:
        result = self.client.list(self.path, **self.query)
        _LISTS.labels(self.name).inc()
        items = result.get("items") or []
        kind = result.get("kind") or ""
        api_version = result.get("apiVersion")
        fresh: dict[str, dict] = {}
        for obj in items:
            # list items come without kind/apiVersion; fill them so callers can write objects back
            if kind.endswith("List") and "kind" not in obj and kind != "List":
                obj["kind"] = kind[: -len("List")]
            if api_version and "apiVersion" not in obj and kind != "List":
                obj["apiVersion"] = api_version
            try:
                fresh[key_of(obj)] = obj
            except ValueError:
                self.log.warning("list_item_without_name", path=self.path)
        rv = (result.get("metadata") or {}).get("resourceVersion")
        with self._dispatch_lock:
            old = self.store._replace(fresh)
            self.last_resource_version = rv
            for key, obj in fresh.items():
                before = old.get(key)
                if before is None:
                    self._emit("add", obj)
                elif _rv(before) != _rv(obj):
                    self._emit("update", before, obj)
            for key, obj in old.items():
                if key not in fresh:
                    self._emit("delete", obj)
        self.log.info("listed", path=self.path, items=len(fresh), resource_version=rv)
        if not self._synced.is_set():
            self._synced.set()
            _SYNCED.labels(self.name).set(1)

    def _watch(self) -> bool:
        lo, hi = self.watch_timeout
        timeout = int(random.uniform(lo, hi)) or 1
        stream = self.client.open_watch(
            self.path, resource_version=self.last_resource_version, timeout_seconds=timeout, **self.query
        )
        self._stream = stream
        got = False
        self._watch_progressed = False
        try:
            if self._stop.is_set():
                return got
            for etype, obj in stream:
                got = self._watch_progressed = True
                _EVENTS.labels(self.name, etype).inc()
                self._apply(etype, obj)
                if self._stop.is_set():
                    break
        finally:
            self._stream = None
            stream.close()
        return got

    def _apply(self, etype: str, obj: dict) -> None:
        rv = _rv(obj)
        with self._dispatch_lock:
            if rv:
                self.last_resource_version = rv
            if etype == "BOOKMARK":
                return
            try:
                key = key_of(obj)
            except ValueError:
                self.log.warning("event_without_name", type=etype)
                return
            if etype in ("ADDED", "MODIFIED"):
                old = self.store._set(key, obj)
                if old is None:
                    self._emit("add", obj)
                else:
                    self._emit("update", old, obj)
            elif etype == "DELETED":
                old = self.store._pop(key)
                self._emit("delete", obj if obj.get("metadata") or old is None else old)

    def _emit(self, what: str, *objs: dict) -> None:
        index = {"add": 0, "update": 1, "delete": 2}[what]
        for handler in list(self._handlers):
            fn = handler[index]
            if fn is not None:
                self._call(fn, *objs)

    def _call(self, fn: Callable, *objs: dict) -> None:
        try:
            fn(*(copy.deepcopy(o) for o in objs))
        except Exception as exc:  # noqa: BLE001 - a handler bug must not stop the informer
            _HANDLER_ERRORS.labels(self.name).inc()
            key = None
            try:
                key = key_of(objs[-1])
            except (ValueError, AttributeError, IndexError):
                pass
            self.log.error(
                "handler_failed",
                handler=getattr(fn, "__qualname__", repr(fn)),
                key=key,
                error=str(exc),
                error_type=type(exc).__name__,
            )

    def _resync_loop(self) -> None:
        while not self._stop.wait(self.resync_period):
            if not self.has_synced:
                continue
            with self._dispatch_lock:
                objs = self.store.list()
                for obj in objs:
                    for _, on_update, _ in list(self._handlers):
                        if on_update is not None:
                            self._call(on_update, obj, obj)
            self.log.debug("resynced", path=self.path, items=len(objs))


def watch_named(
    client: Client,
    resource: str,
    namespace: str,
    name: str,
    on_object,
    *,
    on_error,
    stop,
    forbidden_hint: str = "",
    retry_initial: float = 1.0,
    retry_cap: float = 10.0,
    watch_timeout: int = 300,
    streams: dict | None = None,
    log=None,
) -> None:
    """Follow ONE object by name until ``stop`` is set: GET it, then watch it by name from that
    resourceVersion; GET again after ``410 Gone``, a stream end or an error.

    The single-object form of the informer's cycle, for objects a controller may only read by name
    (RBAC ``resourceNames`` can grant ``get`` and a by-name ``watch``, never a ``list``), such as the
    initializer's own ConfigMaps. ``on_object(obj)`` gets every version; ``on_error(reason, message)``
    each failure (reason: ``missing``, ``forbidden``, ``error``). Retries use the shared backoff
    (no jitter: one object, one client) and honour a server's Retry-After; a stream the server ends
    at once is not re-opened in a busy loop. ``streams[ref]`` holds the open watch so that another
    thread can close it to stop at once.
    """
    from . import errors
    from .backoff import Backoff, retry_after_of
    from .kube import resource_path

    log = log or get_logger(component="informer")
    streams = streams if streams is not None else {}
    kind = {"configmaps": "ConfigMap", "secrets": "Secret"}.get(resource, resource)
    ref = f"{kind} {namespace}/{name}"
    get_path = resource_path("v1", resource, namespace, name)
    watch_path = f"/api/v1/watch/namespaces/{namespace}/{resource}/{name}"
    retry = Backoff(retry_initial, max(retry_cap, retry_initial), jitter=0)
    delay = retry.next()
    gone_streak = 0
    while not stop.is_set():
        try:
            obj = client.get(get_path)
            on_object(obj)
            rv = (obj.get("metadata") or {}).get("resourceVersion")
            retry.reset()
            delay = retry.next()
            opened = time.monotonic()
            stream = client.open_watch(watch_path, resource_version=rv, timeout_seconds=watch_timeout)
            streams[ref] = stream
            with stream:
                if stop.is_set():
                    return
                for etype, event_obj in stream:
                    gone_streak = 0
                    if etype in ("ADDED", "MODIFIED"):
                        on_object(event_obj)
                    elif etype == "DELETED":
                        on_error("missing", f"{ref} was deleted")
            # The stream ended (server timeout or a cut): GET and watch again, at once unless the
            # server keeps ending watches immediately (then do not spin).
            gone_streak = 0
            if time.monotonic() - opened < 1.0 and stop.wait(retry_initial):
                return
            continue
        except errors.NotFound as exc:
            on_error("missing", f"{ref} not found: {exc.message}")
        except errors.Forbidden as exc:
            on_error("forbidden", f"{ref}: {exc} ({forbidden_hint})" if forbidden_hint else f"{ref}: {exc}")
        except errors.Gone as exc:
            gone_streak += 1
            if gone_streak == 1:
                continue  # resourceVersion too old: GET again at once
            # a fresh GET's resourceVersion is too old again: back off instead of spinning GET+watch
            log.warning("watch_gone_again", object=ref, error=str(exc), attempt=gone_streak, retry_in=delay)
        except (errors.ApiError, errors.StreamError, OSError) as exc:
            if stop.is_set():
                return
            on_error("error", f"{ref}: {exc}")
            asked = retry_after_of(exc)
            if asked is not None and asked > delay:
                delay = asked
        finally:
            streams.pop(ref, None)
        if stop.wait(delay):
            return
        delay = retry.next()
