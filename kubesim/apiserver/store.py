"""Versioned object storage with a bounded event history and per-watcher fan-out.

One global lock serialises writes (a global ``resourceVersion`` counter, like etcd's revision);
each write appends one :class:`Event` to its resource type's history (the watch cache: the
last ``history`` events per type) and offers it to every watcher of that
storage. Watchers get their own unbounded queue, so a slow watch stream never blocks a writer.
Stored objects are never mutated in place: every write stores a fresh dict.

Visibility (docs/initializers-1.7.md §2): a watcher's filter is applied to both the current and the
previous object of an event: current passes and previous not -> ADDED, both -> MODIFIED, only the
previous -> DELETED carrying the previous object. Uninitialized objects (``metadata.initializers``
present, even ``{}``) pass only when the watcher asked for ``includeUninitialized``.
"""

from __future__ import annotations

import collections
import copy
import queue
import threading
from typing import Callable

STOP = object()  # sentinel put into watcher queues when the server stops


def is_uninitialized(obj: dict) -> bool:
    return (obj.get("metadata") or {}).get("initializers") is not None


class Gone(Exception):
    """The requested resourceVersion is older than the retained history."""

    def __init__(self, requested: int, oldest: int):
        super().__init__(f"too old resource version: {requested} ({oldest})")
        self.requested, self.oldest = requested, oldest


class AlreadyExists(Exception):
    pass


class NotFound(Exception):
    pass


class Event:
    __slots__ = ("rv", "storage", "ns", "name", "obj", "prev")

    def __init__(self, rv, storage, ns, name, obj, prev):
        self.rv, self.storage, self.ns, self.name, self.obj, self.prev = rv, storage, ns, name, obj, prev


class Watcher:
    """One watch: a filter and a queue of ``(type, object)`` pairs, fed by the writers."""

    def __init__(
        self,
        storage: str,
        namespace: str | None,
        name: str | None,
        predicate: Callable[[dict], bool] | None,
        include_uninitialized: bool,
    ):
        self.storage, self.namespace, self.name = storage, namespace, name
        self.predicate = predicate
        self.include_uninitialized = include_uninitialized
        self.queue: queue.SimpleQueue = queue.SimpleQueue()

    def matches(self, obj: dict | None) -> bool:
        if obj is None:
            return False
        if not self.include_uninitialized and is_uninitialized(obj):
            return False
        return self.predicate is None or self.predicate(obj)

    def map_event(self, ev: Event):
        """Return ``(type, obj)`` as this watcher sees ``ev``, or None (§2 mapping)."""
        if self.namespace is not None and ev.ns != self.namespace:
            return None
        if self.name is not None and ev.name != self.name:
            return None
        cur = self.matches(ev.obj)
        prev = self.matches(ev.prev)
        if cur and not prev:
            return ("ADDED", ev.obj)
        if cur and prev:
            return ("MODIFIED", ev.obj)
        if prev and not cur:
            if ev.obj is None:  # a real deletion: prev already carries the deletion rv
                return ("DELETED", ev.prev)
            gone = copy.deepcopy(ev.prev)
            gone["metadata"]["resourceVersion"] = str(ev.rv)
            return ("DELETED", gone)
        return None

    def offer(self, ev: Event) -> None:
        mapped = self.map_event(ev)
        if mapped is not None:
            self.queue.put(mapped)

    def stop(self) -> None:
        self.queue.put(STOP)


DEFAULT_WATCH_CACHE_SIZE = 100  # kube-apiserver --default-watch-cache-size (1.7 and 1.13)


class Store:
    def __init__(self, history: int = DEFAULT_WATCH_CACHE_SIZE):
        """``history``: events kept *per resource type* (storage), like the API server's watch cache
        (``--default-watch-cache-size``, 100): a watch from a resourceVersion whose type has since
        dropped older events gets 410 and must relist."""
        self.lock = threading.RLock()
        self.rv = 0
        self.objects: dict[str, dict[tuple[str, str], dict]] = collections.defaultdict(dict)
        self.history_size = max(1, history)
        self.history: dict[str, collections.deque[Event]] = collections.defaultdict(
            lambda: collections.deque(maxlen=self.history_size)
        )
        self.evicted: dict[str, bool] = collections.defaultdict(bool)  # has the type's window moved on?
        self.watchers: dict[str, set[Watcher]] = collections.defaultdict(set)
        self.generation: dict[str, int] = collections.defaultdict(int)  # writes per storage
        self.write_hooks: list[Callable[[Event], None]] = []

    # ---- reads --------------------------------------------------------------------------
    def get(self, storage: str, ns: str, name: str) -> dict | None:
        return self.objects[storage].get((ns or "", name))

    def list(self, storage: str, ns: str | None = None) -> list[dict]:
        with self.lock:
            items = self.objects[storage]
            if ns is None:
                keys = sorted(items)
            else:
                keys = sorted(k for k in items if k[0] == ns)
            return [items[k] for k in keys], self.rv

    # ---- writes -------------------------------------------------------------------------
    def _emit(self, storage, ns, name, obj, prev) -> Event:
        ev = Event(self.rv, storage, ns, name, obj, prev)
        hist = self.history[storage]
        if len(hist) == hist.maxlen:
            self.evicted[storage] = True
        hist.append(ev)
        self.generation[storage] += 1
        for w in list(self.watchers.get(storage, ())):
            w.offer(ev)
        for hook in self.write_hooks:
            hook(ev)
        return ev

    def create(self, storage: str, obj: dict, on_created: Callable[[dict], None] | None = None) -> dict:
        """Store a new object (``obj`` is owned by the store afterwards); set its resourceVersion.

        ``on_created`` runs under the lock right after the write, so a caller can register a
        watcher that cannot miss the next event (blocking create)."""
        meta = obj["metadata"]
        key = (meta.get("namespace") or "", meta["name"])
        with self.lock:
            if key in self.objects[storage]:
                raise AlreadyExists(key)
            self.rv += 1
            meta["resourceVersion"] = str(self.rv)
            self.objects[storage][key] = obj
            if on_created:
                on_created(obj)
            self._emit(storage, key[0], key[1], obj, None)
            return obj

    def update(self, storage: str, obj: dict) -> tuple[dict, dict]:
        meta = obj["metadata"]
        key = (meta.get("namespace") or "", meta["name"])
        with self.lock:
            prev = self.objects[storage].get(key)
            if prev is None:
                raise NotFound(key)
            self.rv += 1
            meta["resourceVersion"] = str(self.rv)
            self.objects[storage][key] = obj
            self._emit(storage, key[0], key[1], obj, prev)
            return obj, prev

    def delete(self, storage: str, ns: str, name: str) -> dict:
        key = (ns or "", name)
        with self.lock:
            prev = self.objects[storage].pop(key, None)
            if prev is None:
                raise NotFound(key)
            self.rv += 1
            gone = copy.deepcopy(prev)
            gone["metadata"]["resourceVersion"] = str(self.rv)
            self._emit(storage, key[0], key[1], None, gone)
            return gone

    # ---- watch --------------------------------------------------------------------------
    def watch(self, watcher: Watcher, since: int | None) -> list[tuple[str, dict]]:
        """Register ``watcher`` and return its backlog.

        ``since is None`` (resourceVersion unset or "0"): synthetic ADDED events for every matching
        object, then live events. Otherwise every retained event after ``since``; raises
        :class:`Gone` when events after ``since`` have already left the window."""
        with self.lock:
            backlog: list[tuple[str, dict]] = []
            if since is None:
                for (ns, name), obj in sorted(self.objects[watcher.storage].items()):
                    if watcher.namespace is not None and ns != watcher.namespace:
                        continue
                    if watcher.name is not None and name != watcher.name:
                        continue
                    if watcher.matches(obj):
                        backlog.append(("ADDED", obj))
            else:
                hist = self.history[watcher.storage]
                # the watch cache's check: older than the oldest retained event of this type (once
                # the window has moved) -> "too old resource version: R (oldest-1)"
                if self.evicted[watcher.storage] and hist and hist[0].rv > since + 1 and since < self.rv:
                    raise Gone(since, hist[0].rv - 1)
                for ev in hist:
                    if ev.rv > since:
                        mapped = watcher.map_event(ev)
                        if mapped:
                            backlog.append(mapped)
            self.watchers[watcher.storage].add(watcher)
            return backlog

    def unwatch(self, watcher: Watcher) -> None:
        with self.lock:
            self.watchers[watcher.storage].discard(watcher)

    def stop_all(self) -> None:
        with self.lock:
            for ws in self.watchers.values():
                for w in ws:
                    w.stop()
