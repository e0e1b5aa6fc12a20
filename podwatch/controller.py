"""The podwatch controller: keep the node's capture rules equal to the locked pods on this node.

Level-triggered, whole-state (kube-proxy's shape, not the original's per-pod handlers): an
informer watches the pods of this node (``fieldSelector=spec.nodeName=NODE``); every event only
marks the state dirty; one sync loop renders the complete desired rule set and applies it with one
``iptables-restore --noflush`` per table and family (:mod:`podwatch.rules`). Bursts are coalesced
(at most one sync per ``min_sync_interval``), a periodic full sync (``resync_period``) repairs drift
such as a deleted jump or a hand-flushed chain, and a failed sync is retried with backoff.

A per-key work queue adds nothing here: the unit of work is the whole node, so the "queue" is a
single dirty flag.

No window on restart: nothing is applied before the informer's first list completes, so the first
sync already contains every live locked pod; it replaces the chains' contents in one transaction,
dropping rules of pods deleted while podwatch was down. Shutdown leaves the rules in place.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

from prometheus_client import Counter, Gauge, Histogram

from controllerkit.backoff import Backoff

from . import identity, rules

RULES = Gauge("tproxy_podwatch_rules_programmed", "Rules in podwatch's chains after the last successful sync", ["family"])
PODS = Gauge("tproxy_podwatch_locked_pods", "Locked pod IPs on this node in the desired state", ["family"])
SYNC_SECONDS = Histogram(
    "tproxy_podwatch_sync_duration_seconds",
    "Duration of one full rule sync",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
SYNC_FAILURES = Counter("tproxy_podwatch_sync_failures_total", "Rule syncs that failed", ["family"])
LATENCY = Histogram(
    "tproxy_podwatch_programming_latency_seconds",
    "From a locked pod IP first seen to its rules applied",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
IDENTITY_WRITES = Counter("tproxy_podwatch_identity_writes_total", "Identity file rewrites")


#: seconds a force-deleted locked pod keeps its rules: Kubernetes' default terminationGracePeriodSeconds
#: (30) plus the kubelet's margin to kill what is left
DEPARTED_GRACE = 35.0


class PodWatch:
    def __init__(
        self,
        *,
        node: str,
        annotation: str,
        host_port: int,
        namespace: str = "",
        identity_file: str = "",
        runner: rules.Runner | None = None,
        min_sync_interval: float = 0.1,
        resync_period: float = 30.0,
        logger=None,
        clock: Callable[[], float] = time.monotonic,
        backend: str = rules.DEFAULT_BACKEND,
        departed_grace: float = DEPARTED_GRACE,
        ports_file: str = "",
    ):
        self.node, self.annotation, self.host_port = node, annotation, host_port
        # the proxy workers' port range (proxy/workers.py writes it; rules.read_ports_file)
        self.ports_file = ports_file
        self._ports_problem: str | None = None
        self.namespace = namespace
        self.identity = identity.IdentityFile(identity_file, node)
        self.runner, self.backend = runner, backend  # backend: chosen once at start (never mixed)
        self.syncer = rules.Syncer(host_port, runner, backend)
        self.min_sync_interval, self.resync_period = min_sync_interval, resync_period
        self.log = logger
        self.clock = clock
        self.informer = None
        self._dirty = threading.Event()
        self._stop = threading.Event()
        self._first_seen: dict[tuple[str, str], float] = {}  # (ip, ns/name) -> first seen
        self._seen_lock = threading.Lock()  # informer thread notes, sync thread reads and prunes
        self._programmed: set[tuple[str, str]] = set()
        # uids of pods seen locked: they stay locked until the pod object is gone or terminated,
        # even if someone removes the annotation (sync thread only)
        self._locked_uids: set[str] = set()
        self._kept_warned: set[str] = set()
        # locked pods whose object vanished without a graceful deletion (a force delete): their
        # containers may still run for a grace period, so their rules stay until then, unless another
        # pod takes the address first (sync thread only). uid -> (the pod's LockedPods, expiry)
        self.departed_grace = departed_grace
        self._last_locked: dict[str, list[rules.LockedPod]] = {}
        self._departed: dict[str, tuple[list[rules.LockedPod], float]] = {}
        self._graceful: set[str] = set()  # uids seen with a deletionTimestamp (not force-deleted)
        self._identity_pods: list[rules.LockedPod] = []  # desired() minus departed pods (identity file)
        self._remembered = False
        self.synced_once = threading.Event()
        self.last_error: str = ""

    # -- events ---------------------------------------------------------------------------------
    def _note(self, pod: dict) -> None:
        now = self.clock()
        with self._seen_lock:
            for p in rules.locked_pods([pod], self.annotation, namespace=self.namespace or None):
                self._first_seen.setdefault((p.ip, p.key), now)
        self._dirty.set()

    def on_add(self, pod: dict) -> None:
        self._note(pod)

    def on_update(self, old: dict, new: dict) -> None:
        self._note_terminating(new)
        self._note(new)

    def on_delete(self, pod: dict) -> None:
        self._note_terminating(pod)  # the last state of a graceful delete carries its deletionTimestamp
        self._dirty.set()

    def _note_terminating(self, pod: dict) -> None:
        meta = pod.get("metadata") or {}
        if meta.get("deletionTimestamp") and meta.get("uid"):
            with self._seen_lock:
                self._graceful.add(meta["uid"])

    def attach(self, informer) -> None:
        self.informer = informer
        informer.add_handler(self.on_add, self.on_update, self.on_delete)

    # -- sync -----------------------------------------------------------------------------------
    def _remember_programmed(self, pods: list[dict]) -> None:
        """Once, before the first sync after start-up: pods whose redirect rules are already on the
        node (from before a restart) were locked, so they stay locked even if their annotation was
        removed while podwatch was down. Matched by IP *and* ns/name."""
        self._remembered = True
        programmed: set[tuple[str, str]] = set()
        for fam in rules.FAMILIES:
            try:
                programmed |= rules.read_programmed(fam, self.runner, backend=self.backend)
            except rules.IptablesError as e:
                self.log.warning("read_programmed_failed", family=fam, error=str(e))
        for pod in pods:
            meta = pod.get("metadata") or {}
            key = f"{meta.get('namespace', '')}/{meta.get('name', '')}"
            if meta.get("uid") and any((ip, key) in programmed for ip in rules.pod_ips(pod)):
                self._locked_uids.add(meta["uid"])

    def desired(self) -> list[rules.LockedPod]:
        pods: list[dict] = self.informer.store.list() if self.informer is not None else []
        if not self._remembered:
            self._remember_programmed(pods)
        ns = self.namespace or None
        locked = rules.locked_pods(pods, self.annotation, namespace=ns, also_uids=self._locked_uids)
        by_annotation = {(pod.get("metadata") or {}).get("uid") for pod in pods if rules.annotated(pod, self.annotation)}
        kept = {p.uid: p for p in locked if p.uid and p.uid not in by_annotation}
        for uid in kept.keys() - self._kept_warned:
            self.log.warning(
                "annotation_removed_kept_locked",
                pod=kept[uid].key,
                uid=uid,
                annotation=self.annotation,
                message="a locked pod lost its annotation; its rules stay until the pod is gone",
            )
        self._kept_warned = set(kept)
        # forget pods that are gone or terminated (a uid is never reused)
        self._locked_uids = {p.uid for p in locked if p.uid}
        # the identity file names only pods whose object exists: a departed pod keeps its rules (its
        # containers may still run) but not its identity, so an address reused before the departed
        # pod's rules expire is nobody's (the proxy's default scope), never the old pod's
        self._identity_pods = locked
        return locked + self._retained_departed(pods, locked)

    def _retained_departed(self, pods: list[dict], locked: list[rules.LockedPod]) -> list[rules.LockedPod]:
        """Rules for locked pods whose object disappeared while they were running.

        A graceful delete keeps the object (with ``deletionTimestamp``) until the kubelet has
        stopped the containers, and ``locked_pods`` keeps its rules meanwhile. A force delete
        (``--grace-period=0 --force``) or an emulator without graceful deletion removes the object
        at once while the containers may still run: dropping the redirect and guard then would let
        the pod's own lock (which allows tcp 80/443, expecting the node's redirect) send them out
        unfiltered. So such a pod keeps its rules for ``departed_grace`` seconds, unless another pod
        takes its address first. A pod that ended (Succeeded/Failed) has no processes left: its
        rules go at once."""
        now = self.clock()
        metas = [pod.get("metadata") or {} for pod in pods]
        present: set[str] = {m["uid"] for m in metas if m.get("uid")}
        # seen terminating: a graceful delete, whose object outlives the containers
        terminating: set[str] = {m["uid"] for m in metas if m.get("uid") and m.get("deletionTimestamp")}
        with self._seen_lock:
            graceful = self._graceful | terminating
        current: dict[str, list[rules.LockedPod]] = {}
        for p in locked:
            if p.uid:
                current.setdefault(p.uid, []).append(p)
        for uid, lps in self._last_locked.items():
            if uid not in present and uid not in self._departed and uid not in graceful and self.departed_grace > 0:
                self._departed[uid] = (lps, now + self.departed_grace)
                self.log.warning(
                    "locked_pod_vanished_keeping_rules",
                    pod=lps[0].key,
                    uid=uid,
                    seconds=self.departed_grace,
                    message="the pod object is gone without a graceful deletion; its rules stay "
                    "while its containers may still run",
                )
        self._last_locked = current
        with self._seen_lock:  # forget the uids of objects that are gone (a uid is never reused)
            self._graceful = (self._graceful | terminating) & present
        taken = {ip for pod in pods for ip in rules.pod_ips(pod)}
        kept: list[rules.LockedPod] = []
        for uid, (lps, expiry) in list(self._departed.items()):
            if now >= expiry or uid in present or any(p.ip in taken for p in lps):
                del self._departed[uid]
                continue
            kept.extend(lps)
        return kept

    def _proxy_ports(self) -> int | str:
        """The redirect's port range from the proxy's ports file; the host port alone (its first
        worker) while the file is missing or unusable, logged once per distinct problem."""
        ports, problem = rules.read_ports_file(self.ports_file, self.host_port)
        if problem != self._ports_problem:
            self._ports_problem = problem
            if problem and self.log:
                self.log.warning("proxy_ports_unusable", problem=problem, redirecting_to=self.host_port)
            elif self.log:
                self.log.info("proxy_ports", ports=str(ports))
        return ports

    def sync_once(self, force: bool = True) -> bool:
        """One sync (``force``: rewrite every family even if unchanged). True when all needed applied."""
        pods = self.desired()
        now = self.clock()
        with self._seen_lock:
            for p in pods:
                self._first_seen.setdefault((p.ip, p.key), now)
            first_seen = dict(self._first_seen)
        try:
            if self.identity.update(self._identity_pods):
                IDENTITY_WRITES.inc()
                self.log.info("identity_written", path=self.identity.path, pods=len(pods))
        except OSError as e:
            self.log.error("identity_write_failed", path=self.identity.path, error=str(e))
        if self.ports_file:
            self.syncer.host_port = self._proxy_ports()
        start = time.perf_counter()
        result = self.syncer.sync(pods, force=force)
        duration = time.perf_counter() - start
        SYNC_SECONDS.observe(duration)
        families_needed = {p.family for p in pods}
        ok = True
        done = self.clock()
        for fam in rules.FAMILIES:
            PODS.labels(fam).set(sum(1 for p in pods if p.family == fam))
            err = result.failed.get(fam)
            if err is None:
                RULES.labels(fam).set(result.rules.get(fam, 0))
                for p in pods:
                    k = (p.ip, p.key)
                    if p.family == fam and k not in self._programmed:
                        LATENCY.observe(max(0.0, done - first_seen.get(k, done)))
                        self._programmed.add(k)
                continue
            needed = fam in families_needed
            level = "error" if needed else "warning"
            getattr(self.log, level)(
                "sync_failed", family=fam, table=err.table, error=str(err), offending_lines=err.lines, pods_in_family=needed
            )
            if needed or fam == "ipv4":
                SYNC_FAILURES.labels(fam).inc()
                ok = False
                self.last_error = f"{fam}: {err}"
        live = {(p.ip, p.key) for p in pods}
        self._programmed &= live
        with self._seen_lock:  # keep what events noted during this sync (pods not in this round yet)
            self._first_seen = {k: v for k, v in self._first_seen.items() if k in live or v > now}
        self.log.info(
            "synced",
            ok=ok,
            forced=force,
            pods=len(pods),
            rules=result.rules,
            skipped=result.skipped or None,
            incremental=result.incremental or None,
            duration_ms=round(duration * 1000, 2),
        )
        if ok:
            self.last_error = ""
            self.synced_once.set()
        return ok

    def run(self) -> None:
        """Sync loop (call after the informer has synced). Returns when :meth:`stop` is called."""
        retry = Backoff(0.5, 10.0, jitter=0)  # after a failed sync: 0.5 s doubling to 10 s
        backoff = 0.0
        last = last_full = -1e9
        force = True  # the first sync after start-up rewrites everything
        while not self._stop.is_set():
            deadline = last + backoff if backoff else last_full + self.resync_period
            if self._departed:  # a force-deleted pod's rules go when its grace period ends
                deadline = min(deadline, min(expiry for _, expiry in self._departed.values()))
            woken = self._dirty.wait(timeout=max(0.0, deadline - self.clock()))
            if self._stop.is_set():
                break
            # a retry after a failure and the periodic resync rewrite everything (drift repair),
            # even under constant churn of events
            force = force or not woken or self.clock() - last_full >= self.resync_period
            gap = last + self.min_sync_interval - self.clock()
            if gap > 0 and self._stop.wait(gap):
                break
            self._dirty.clear()
            last = self.clock()
            try:
                ok = self.sync_once(force=force)
            except Exception as e:  # noqa: BLE001 - a bug must not stop the node's repairs
                self.log.exception("sync_crashed", error=str(e))
                ok = False
            if ok and force:
                last_full = last
            force = not ok
            if ok:
                retry.reset()
            backoff = 0.0 if ok else retry.next()

    def stop(self) -> None:
        self._stop.set()
        self._dirty.set()

    def ready(self):
        if not self.synced_once.is_set():
            return False, self.last_error or "waiting for the first successful rule sync"
        return True, "ok"
