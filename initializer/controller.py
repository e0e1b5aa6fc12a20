"""The tproxy Initializer controller: informer -> work queue -> sync(key) -> one PUT.

Why this shape (and not the original's "AddFunc does everything"):

* Events only say "look at this key again". ``sync`` GETs the *current* object by name (GET
  returns uninitialized objects in 1.7), decides from it, and writes one PUT carrying the object's
  ``resourceVersion``. A 409 means someone else (another replica, the user) wrote first: re-read
  and decide again; the second pass sees the injection already done (or our entry gone) and does
  nothing, which is what makes several replicas safe without leader election.
* Add, update and resync events all enqueue, so an object where we are second in ``pending``
  is handled when the first initializer removes itself; a failed sync is re-queued with backoff.
* No config, no action: until the ConfigMap has been read and parsed, deployments wait (they stay
  pending; the create blocks, then times out) rather than being initialized without protection.
  ``ready()`` says why, for /readyz.
* The ConfigMap is watched through the 1.7 legacy watch-by-name path
  ``/api/v1/watch/namespaces/NS/configmaps/NAME``, so the controller needs only ``get`` and ``watch``
  on that one name (``resourceNames``); a collection watch would need list/watch on every ConfigMap.
* The proxy's CA bundle (``--root-certs-configmap``) is watched the same way, and a deployment is
  released only after its namespace holds an up-to-date copy of it (``rootcerts.ensure_copy``): a pod
  can mount ConfigMaps of its own namespace only. When the bundle cannot be provided there (forbidden,
  or the name is taken by a ConfigMap that is not our copy) the deployment fails with a result naming
  the cause. A change of the bundle updates the copy in every namespace that has injected deployments
  (found in the deployment informer's cache: no list of ConfigMaps or namespaces is needed).
"""

from __future__ import annotations

import calendar
import threading
import time
from typing import TYPE_CHECKING, Iterable, Optional, Self

import structlog

if TYPE_CHECKING:
    from controllerkit.informer import Informer

from controllerkit import errors
from controllerkit import optin
from controllerkit.informer import watch_named
from controllerkit.kube import Client, resource_path
from controllerkit.workqueue import WorkQueue, run_workers

from . import metrics
from .config import ConfigError, InjectionConfig, config_from_configmap
from .mutate import FAIL, IGNORE, INJECT, SKIP, Decision, decide, failure_status, is_annotated, pending_names
from .rootcerts import CopyRefused, RootCerts, ensure_copy

DEFAULT_ANNOTATION = optin.DEFAULT_ANNOTATION
DEFAULT_CONFIGMAP = "tproxy-initializer"
DEFAULT_INITIALIZER_NAME = "tproxy.initializer.kubernetes.io"
DEFAULT_NAMESPACE = "default"

DEPLOYMENTS_GV = "apps/v1beta1"
MAX_CONFLICT_RETRIES = 8

_OUTCOME = {INJECT: "initialized", SKIP: "skipped", FAIL: "failed"}


def _parse_ts(ts: str | None) -> Optional[float]:
    if not ts:
        return None
    try:
        return calendar.timegm(time.strptime(ts.rstrip("Z").split(".")[0], "%Y-%m-%dT%H:%M:%S"))
    except (ValueError, TypeError):
        return None


class _InformerLog:
    """Forwards the informer's log calls and remembers its last list/watch failure, so /readyz can say
    *why* the informer has not synced (e.g. a 403 on listing deployments) instead of just "not yet"."""

    def __init__(self, log):
        self._log = log
        self.last_error: Optional[str] = None

    def _note(self, event, kw):
        if event == "watch_failed":
            self.last_error = f"{kw.get('phase', 'watch')} failed: {kw.get('error')}"
        elif event == "listed":
            self.last_error = None

    def debug(self, event, **kw):
        self._log.debug(event, **kw)

    def info(self, event, **kw):
        self._note(event, kw)
        self._log.info(event, **kw)

    def warning(self, event, **kw):
        self._note(event, kw)
        self._log.warning(event, **kw)

    def error(self, event, **kw):
        self._note(event, kw)
        self._log.error(event, **kw)


class Controller:
    """One initializer replica. ``start()`` returns once its threads run; ``stop()`` ends them.

    In-process use (tests, benchmarks)::

        c = Controller.from_kubeconfig(path, workers=4, resync_period=5)
        c.start(); c.wait_ready(10); ...; c.stop()
    """

    def __init__(
        self,
        client: Client,
        *,
        initializer_name: str = DEFAULT_INITIALIZER_NAME,
        annotation: str = DEFAULT_ANNOTATION,
        configmap: str = DEFAULT_CONFIGMAP,
        config_namespace: str = DEFAULT_NAMESPACE,
        require_annotation: bool = False,
        exclude_namespaces: Iterable[str] = (),
        workers: int = 2,
        resync_period: float = 30.0,
        config_retry: float = 1.0,
        watch_timeout: int = 300,
        root_certs_configmap: str = "",
        root_certs_namespace: Optional[str] = None,
        logger=None,
    ):
        if workers < 1:
            raise ValueError("workers must be >= 1")
        self.client = client
        self.initializer_name = initializer_name
        self.annotation = annotation
        self.configmap = configmap
        self.config_namespace = config_namespace
        self.require_annotation = require_annotation
        self.exclude_namespaces = frozenset(n for n in exclude_namespaces if n)
        self.workers = workers
        self.resync_period = resync_period
        self.config_retry = config_retry
        self.watch_timeout = watch_timeout
        self.log = logger or structlog.get_logger("initializer")
        # The CA bundle to copy into every namespace where we inject ("" = off: the original behaviour,
        # the bundle must then exist in each namespace some other way).
        self.root_certs_configmap = root_certs_configmap
        self.root_certs_namespace = root_certs_namespace or config_namespace
        self._root_certs: Optional[RootCerts] = None
        self._root_certs_reason = f"{self._root_certs_ref()} not read yet"
        self._copies_wanted = threading.Event()
        self.copy_queue = WorkQueue("initializer-root-certs")

        self._config: Optional[InjectionConfig] = None
        self._config_reason = f"ConfigMap {config_namespace}/{configmap} not read yet"
        self._config_lock = threading.Lock()
        self._deferred: set[str] = set()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._watches: dict = {}  # ConfigMap ref -> open watch stream (closed by stop())
        self.queue = WorkQueue("initializer")
        self.informer: Optional[Informer] = None
        self._informer_log: Optional[_InformerLog] = None

    @classmethod
    def from_kubeconfig(cls, kubeconfig: Optional[str] = None, **kwargs) -> Self:
        """Build a controller from a kubeconfig path (``None``: $KUBECONFIG, else in-cluster)."""
        client = Client.from_config(kubeconfig)
        client.default_timeout = 10.0
        return cls(client, **kwargs)

    # -- config ----------------------------------------------------------------------------------
    @property
    def config(self) -> Optional[InjectionConfig]:
        return self._config

    def _cm_ref(self) -> str:
        return f"ConfigMap {self.config_namespace}/{self.configmap}"

    def _set_config_error(self, reason: str, message: str) -> None:
        metrics.CONFIG_ERRORS.labels(reason).inc()
        with self._config_lock:
            kept = self._config
            if kept is None:
                self._config_reason = message
        if kept is not None:
            self.log.error(
                "config_error_keeping_last_good",
                reason=reason,
                error=message,
                configmap=self._cm_ref(),
                fingerprint=kept.fingerprint,
            )
        else:
            self.log.error(
                "config_unavailable",
                reason=reason,
                error=message,
                configmap=self._cm_ref(),
                hint="deployments stay pending until a valid config is loaded",
            )

    def load_configmap(self, cm: dict) -> bool:
        """Parse and install a ConfigMap object; on error keep the last good config. True if installed."""
        try:
            cfg = config_from_configmap(cm)
        except ConfigError as exc:
            self._set_config_error("malformed", str(exc))
            return False
        with self._config_lock:
            old = self._config
            self._config = cfg
            self._config_reason = ""
            deferred, self._deferred = self._deferred, set()
        metrics.CONFIG_LOADED.set(1)
        if old is None or old.fingerprint != cfg.fingerprint:
            metrics.CONFIG_RELOADS.inc()
            self.log.info(
                "config_loaded",
                configmap=self._cm_ref(),
                fingerprint=cfg.fingerprint,
                resource_version=(cm.get("metadata") or {}).get("resourceVersion"),
                previous=old.fingerprint if old else None,
                init_containers=[c["name"] for c in cfg.containers],
                volumes=[v["name"] for v in cfg.volumes],
            )
        for key in deferred:
            self.queue.add(key)
        return True

    def _config_loop(self) -> None:
        self._watch_configmap(
            self.config_namespace,
            self.configmap,
            self.load_configmap,
            on_error=self._set_config_error,
            forbidden_hint=f"the initializer needs get and watch on this ConfigMap, e.g. a Role in "
            f"{self.config_namespace} with resourceNames [{self.configmap}]",
        )

    def _watch_configmap(self, namespace: str, name: str, on_object, *, on_error, forbidden_hint: str) -> None:
        """Follow one ConfigMap by name (controllerkit.informer.watch_named: GET, then watch by name;
        again after 410, a stream end or an error). By name, because the chart grants ``get`` and
        ``watch`` on exactly this ConfigMap (``resourceNames``), which cannot grant a list."""
        watch_named(
            self.client,
            "configmaps",
            namespace,
            name,
            on_object,
            on_error=on_error,
            forbidden_hint=forbidden_hint,
            stop=self._stop,
            retry_initial=self.config_retry,
            watch_timeout=self.watch_timeout,
            streams=self._watches,
            log=self.log,
        )

    # -- the proxy's CA bundle -------------------------------------------------------------------
    def _root_certs_ref(self) -> str:
        return f"ConfigMap {self.root_certs_namespace}/{self.root_certs_configmap}"

    @property
    def root_certs(self) -> Optional[RootCerts]:
        return self._root_certs

    def load_root_certs(self, cm: dict) -> bool:
        """Install a new version of the CA bundle; on a change, update every copy. True if installed."""
        try:
            certs = RootCerts.from_configmap(cm)
        except ValueError as exc:
            self._set_root_certs_error("malformed", str(exc))
            return False
        with self._config_lock:
            old = self._root_certs
            self._root_certs = certs
            self._root_certs_reason = ""
            deferred, self._deferred = self._deferred, set()
        metrics.ROOT_CERTS_LOADED.set(1)
        if old is None or old.fingerprint != certs.fingerprint:
            self.log.info(
                "root_certs_loaded",
                configmap=self._root_certs_ref(),
                fingerprint=certs.fingerprint,
                previous=old.fingerprint if old else None,
                resource_version=(cm.get("metadata") or {}).get("resourceVersion"),
            )
            self._copies_wanted.set()
        for key in deferred:
            self.queue.add(key)
        return True

    def _set_root_certs_error(self, reason: str, message: str) -> None:
        metrics.ROOT_CERTS_ERRORS.labels(reason).inc()
        with self._config_lock:
            kept_certs = self._root_certs
            if kept_certs is None:
                self._root_certs_reason = message
        if kept_certs is not None:
            self.log.error(
                "root_certs_error_keeping_last",
                reason=reason,
                error=message,
                configmap=self._root_certs_ref(),
                fingerprint=kept_certs.fingerprint,
            )
        else:
            self.log.error(
                "root_certs_unavailable",
                reason=reason,
                error=message,
                configmap=self._root_certs_ref(),
                hint="deployments to inject stay pending until the CA bundle is read",
            )

    def _root_certs_loop(self) -> None:
        self._watch_configmap(
            self.root_certs_namespace,
            self.root_certs_configmap,
            self.load_root_certs,
            on_error=self._set_root_certs_error,
            forbidden_hint=f"the initializer needs get and watch on this ConfigMap, e.g. a Role in "
            f"{self.root_certs_namespace} with resourceNames [{self.root_certs_configmap}]",
        )

    def copy_namespaces(self) -> set[str]:
        """Namespaces that need a copy: those of deployments in the informer's cache whose pod template
        carries our annotation (injected, or locked by hand), minus excluded ones and the source's own."""
        if self.informer is None:
            return set()
        out = set()
        for obj in self.informer.store.list(copy=False):
            ns = (obj.get("metadata") or {}).get("namespace", "")
            if (
                ns
                and ns not in self.exclude_namespaces
                and ns != self.root_certs_namespace
                and is_annotated((obj.get("spec") or {}).get("template") or {}, self.annotation)
            ):
                out.add(ns)
        return out

    def _copies_loop(self) -> None:
        """On a new bundle at once, and every resync period (a deleted copy comes back, a refused one is
        tried again), queue every namespace that needs a copy."""
        while not self._stop.is_set():
            self._copies_wanted.wait(self.resync_period)
            if self._stop.is_set():
                return
            if self._root_certs is None or self.informer is None or not self.informer.has_synced:
                # A pass was asked for before the deployments were listed (e.g. at start): keep the
                # request and look again shortly, not a whole resync period later.
                if self._stop.wait(0.2):
                    return
                continue
            self._copies_wanted.clear()
            for ns in sorted(self.copy_namespaces()):
                self.copy_queue.add(ns)

    def sync_copy(self, namespace: str) -> Optional[str]:
        """Bring the copy in ``namespace`` up to date (copy queue worker). Refusals are logged and
        counted, and tried again on the next pass; other errors are re-queued with backoff."""
        certs = self._root_certs
        if certs is None:
            return None
        try:
            outcome = ensure_copy(self.client, certs, namespace)
        except CopyRefused as exc:
            metrics.ROOT_CERTS_COPIES.labels("refused").inc()
            self.log.error("root_certs_copy_refused", namespace=namespace, error=str(exc))
            self._copy_refused(namespace, exc)
            return None
        except errors.ApiError as exc:
            if self._copy_target_gone(exc):
                return None
            metrics.ROOT_CERTS_COPIES.labels("error").inc()
            raise
        self._copy_done(namespace, certs, outcome)
        return outcome

    def _copy_refused(self, namespace: str, exc: CopyRefused) -> None:
        """Hook: a copy was refused (logged and counted already)."""

    def _copy_target_gone(self, exc: errors.ApiError) -> bool:
        """Hook: True when ``exc`` means there is nothing left to copy into (not counted, not retried)."""
        return False

    def _copy_done(self, namespace: str, certs: RootCerts, outcome: str) -> None:
        metrics.ROOT_CERTS_COPIES.labels(outcome).inc()
        if outcome != "unchanged":
            self.log.info(
                "root_certs_copy_" + outcome,
                namespace=namespace,
                configmap=certs.name,
                source=certs.source,
                fingerprint=certs.fingerprint,
            )

    # -- readiness -------------------------------------------------------------------------------
    def ready(self) -> tuple[bool, str]:
        """(ready, reason): ready when a valid config (and the CA bundle, when we copy it) is loaded and
        the deployment informer synced."""
        if self._config is None:
            return False, self._config_reason
        if self.root_certs_configmap and self._root_certs is None:
            return False, self._root_certs_reason
        if self.informer is None or not self.informer.has_synced:
            why = self._informer_log.last_error if self._informer_log is not None else None
            return False, "deployment informer has not synced yet" + (f": {why}" if why else "")
        return True, "ok"

    def wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ready()[0]:
                return True
            time.sleep(0.02)
        return self.ready()[0]

    # -- events ----------------------------------------------------------------------------------
    def _maybe_enqueue(self, obj: dict) -> None:
        if self.initializer_name in pending_names(obj):
            meta = obj.get("metadata") or {}
            self.queue.add(f"{meta.get('namespace', '')}/{meta.get('name', '')}")

    def _on_add(self, obj):
        self._maybe_enqueue(obj)

    def _on_update(self, old, new=None):
        self._maybe_enqueue(new if new is not None else old)

    def _on_delete(self, obj):
        pass

    # -- the sync --------------------------------------------------------------------------------
    def sync(self, key: str) -> Optional[Decision]:
        """Complete our part of ``key``'s initialization, or do nothing if it is not ours to do.

        Returns the decision that was written (``None`` when nothing was written).
        """
        cfg, certs = self._config, self._root_certs
        if cfg is None or (self.root_certs_configmap and certs is None):
            with self._config_lock:
                if self._config is None or (self.root_certs_configmap and self._root_certs is None):
                    self._deferred.add(key)
                    return None
                cfg, certs = self._config, self._root_certs
        ns, _, name = key.partition("/")
        copied = False
        path = resource_path(DEPLOYMENTS_GV, "deployments", ns, name)
        for attempt in range(MAX_CONFLICT_RETRIES):
            try:
                current = self.client.get(path)
            except errors.NotFound:
                return None
            decision = decide(
                current,
                cfg,
                initializer_name=self.initializer_name,
                annotation=self.annotation,
                require_annotation=self.require_annotation,
                exclude_namespaces=self.exclude_namespaces,
            )
            if decision.action == IGNORE:
                return None
            if decision.action == INJECT and certs is not None and not copied and ns != self.root_certs_namespace:
                # The pods will mount the bundle from their own namespace: it must be there before
                # they exist, i.e. before we release the deployment.
                try:
                    self._copy_done(ns, certs, ensure_copy(self.client, certs, ns))
                    copied = True
                except CopyRefused as exc:
                    metrics.ROOT_CERTS_COPIES.labels("refused").inc()
                    failed = self._fail(path, current, str(exc), code=exc.code, reason=exc.reason)
                    if failed is None:
                        continue
                    self._record(failed, current)
                    return failed
            assert decision.obj is not None  # every action but IGNORE (returned above) carries the object
            try:
                self.client.replace(path, decision.obj)
            except errors.Conflict:
                metrics.WRITE_CONFLICTS.inc()
                self.log.debug("write_conflict", namespace=ns, name=name, attempt=attempt + 1)
                continue
            except errors.NotFound:
                return None
            except errors.Invalid as exc:
                if decision.action == FAIL:
                    raise
                # The server refused the injected object (e.g. the config does not validate against
                # this deployment). Fail the create with the server's reason rather than retry forever.
                metrics.WRITE_ERRORS.labels("invalid").inc()
                failed = self._fail_after_invalid(path, current, exc)
                if failed is None:
                    continue
                decision = failed
            except errors.Forbidden as exc:
                metrics.WRITE_ERRORS.labels("forbidden").inc()
                self.log.error(
                    "write_forbidden",
                    namespace=ns,
                    name=name,
                    error=str(exc),
                    hint="the initializer needs update and initialize on deployments "
                    "(apps and extensions) in every namespace it initializes",
                )
                raise
            self._record(decision, current)
            return decision
        raise errors.Conflict(
            409, "Conflict", f"deployment {key}: still conflicting after {MAX_CONFLICT_RETRIES} attempts; will retry"
        )

    def _fail_after_invalid(self, path: str, current: dict, exc: errors.ApiError) -> Optional[Decision]:
        return self._fail(path, current, f"the API server rejected the injected deployment: {exc.message}")

    def _fail(self, path: str, current: dict, message: str, **status) -> Optional[Decision]:
        """Set ``initializers.result`` (the server deletes the object; the blocked create fails with it).
        ``None`` on a conflict: the caller re-reads and decides again."""
        failed = {**current, "metadata": dict(current["metadata"])}
        inits = dict(failed["metadata"].get("initializers") or {})
        inits["result"] = failure_status(message, **status)
        failed["metadata"]["initializers"] = inits
        try:
            self.client.replace(path, failed)
        except errors.Conflict:
            metrics.WRITE_CONFLICTS.inc()
            return None
        return Decision(FAIL, inits["result"]["message"], failed, tuple(pending_names(current)))

    def _record(self, decision: Decision, current: dict) -> None:
        meta = current.get("metadata") or {}
        outcome = _OUTCOME[decision.action]
        metrics.DEPLOYMENTS.labels(outcome).inc()
        created = _parse_ts(meta.get("creationTimestamp"))
        if created is not None:
            metrics.INIT_LATENCY.observe(max(0.0, time.time() - created))
        log = self.log.warning if decision.action == FAIL else self.log.info
        log(
            "deployment_" + outcome,
            namespace=meta.get("namespace"),
            name=meta.get("name"),
            uid=meta.get("uid"),
            outcome=outcome,
            reason=decision.reason,
            pending_after=list(decision.pending_after),
        )

    # -- lifecycle -------------------------------------------------------------------------------
    def _make_informer(self):
        from controllerkit.informer import Informer

        self._informer_log = _InformerLog(self.log)
        inf = Informer(
            self.client,
            resource_path(DEPLOYMENTS_GV, "deployments"),
            query={"includeUninitialized": "true"},
            resync_period=self.resync_period,
            logger=self._informer_log,
        )
        inf.add_handler(self._on_add, self._on_update, self._on_delete)
        return inf

    def start(self) -> "Controller":
        self.log.info(
            "starting",
            initializer_name=self.initializer_name,
            annotation=self.annotation,
            configmap=self._cm_ref(),
            require_annotation=self.require_annotation,
            exclude_namespaces=sorted(self.exclude_namespaces),
            workers=self.workers,
            root_certs=self._root_certs_ref() if self.root_certs_configmap else None,
        )
        t = threading.Thread(target=self._config_loop, name="initializer-config", daemon=True)
        t.start()
        self._threads.append(t)
        self.informer = informer = self._make_informer()
        informer.start()
        self._threads += run_workers(self.queue, self.sync, workers=self.workers, stop=self._stop, logger=self.log)
        if self.root_certs_configmap:
            for target, name in (
                (self._root_certs_loop, "initializer-root-certs"),
                (self._copies_loop, "initializer-root-certs-copies"),
            ):
                t = threading.Thread(target=target, name=name, daemon=True)
                t.start()
                self._threads.append(t)
            self._threads += run_workers(self.copy_queue, self.sync_copy, workers=1, stop=self._stop, logger=self.log)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self.queue.shutdown()
        if self.informer is not None:
            self.informer.stop()
        self._copies_wanted.set()
        self.copy_queue.shutdown()
        for stream in list(self._watches.values()):
            stream.close()
        for t in self._threads:
            t.join(timeout)
        self.log.info("stopped")
