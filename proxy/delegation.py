"""Namespace policies (delegation): the fixed-name ConfigMaps in the namespaces, watched, judged
against the ceiling, and published to the addon as ``{namespace: Scope}``.

Why a fixed name (``delegation.configMap``, default ``tproxy-egress``) and not a label: RBAC can
restrict ``get``, ``list`` and ``watch`` by ``resourceNames`` but not by label, so with a fixed name
the proxy's ClusterRole reads those ConfigMaps and no others (on Kubernetes 1.11+, where a
``fieldSelector=metadata.name=`` list or watch is authorised by name; chart/README.md says what
older servers allow). A label would need read access to every ConfigMap of the cluster, and a
namespace could not keep a labelled ConfigMap the proxy must not read.

The watch is a controllerkit :class:`~controllerkit.informer.Informer` on
``/api/v1/configmaps?fieldSelector=metadata.name=<name>`` (all namespaces), on its own thread. Each
add/update is judged once per resourceVersion (proxy/delegated.py):

* good: it replaces the namespace's scope (``namespace_policy_loaded``);
* bad (no ``policy.yaml``, does not parse, breaks the ceiling): ``namespace_policy_rejected`` with the
  reason in the log, ``tproxy_namespace_policy_rejections_total{namespace,cause}``, and a Warning
  Event ``PolicyRejected`` on the ConfigMap; the namespace keeps its last good policy (or none:
  its pods get the file's scopes and the default);
* deleted: the namespace's scope goes.

When the policy file changes (its ceiling, its scopes), every ConfigMap is judged again against it:
one that the new ceiling forbids loses its scope (a last good policy that breaks today's ceiling is
not kept). The published dict is replaced, never mutated, so the event loop reads it without a lock.
"""

from __future__ import annotations

import datetime
import socket
import threading
from typing import Callable

import structlog
from controllerkit.errors import AlreadyExists

from proxy import delegated
from proxy.policy import PolicyError
from proxy.scopes import Scope, ScopedPolicy

log = structlog.get_logger()

EVENT_REASON = "PolicyRejected"
COMPONENT = "tproxy-proxy"


def _cause(error: str) -> str:
    return "ceiling" if ": ceiling: " in error else "parse"


class NamespacePolicies:
    """Judges namespace ConfigMaps and publishes the good ones with ``publish({ns: Scope})``.

    ``events``: a callable posting an Event (``events(configmap, message)``), or None where the
    cluster offers none. Thread-safe: the informer's thread calls :meth:`on_add` and the others,
    the event loop calls :meth:`repolicy`."""

    def __init__(
        self,
        policy: ScopedPolicy,
        publish: Callable[[dict[str, Scope]], None],
        metrics,
        events: Callable[[dict, str], None] | None = None,
    ):
        self.policy = policy
        self.publish = publish
        self.metrics = metrics
        self.events = events
        self._lock = threading.Lock()
        self._objects: dict[str, dict] = {}  # namespace -> the ConfigMap as last seen
        self._judged: dict[str, str] = {}  # namespace -> resourceVersion last judged
        self._scopes: dict[str, Scope] = {}  # namespace -> last good scope

    # -- informer handlers ----------------------------------------------------------------------
    def on_add(self, cm: dict) -> None:
        self._judge(cm)

    def on_update(self, _old: dict, cm: dict) -> None:
        self._judge(cm)

    def on_delete(self, cm: dict) -> None:
        ns = (cm.get("metadata") or {}).get("namespace", "")
        with self._lock:
            self._objects.pop(ns, None)
            self._judged.pop(ns, None)
            gone = self._scopes.pop(ns, None)
            self._publish()
        if gone is not None:
            log.info("namespace_policy_removed", namespace=ns)

    def repolicy(self, policy: ScopedPolicy) -> None:
        """The policy file changed: judge every known ConfigMap again against it."""
        with self._lock:
            self.policy = policy
            objects = list(self._objects.values())
            self._judged.clear()
        for cm in objects:
            self._judge(cm, keep_last_good=False)

    # -- judging --------------------------------------------------------------------------------
    def _judge(self, cm: dict, keep_last_good: bool = True) -> None:
        meta = cm.get("metadata") or {}
        ns, name, rv = meta.get("namespace", ""), meta.get("name", ""), meta.get("resourceVersion", "")
        if not ns:
            return
        with self._lock:
            self._objects[ns] = cm
            if rv and self._judged.get(ns) == rv:  # a resync: judged already
                return
            self._judged[ns] = rv
            policy = self.policy
        origin = f"configmap {ns}/{name}"
        try:
            data = cm.get("data") or {}
            scope = delegated.parse(data.get(delegated.DATA_KEY) if isinstance(data, dict) else None, ns, policy, origin)
        except PolicyError as e:
            self._reject(cm, ns, str(e), keep_last_good)
            return
        with self._lock:
            if policy is not self.policy:  # the file changed meanwhile: repolicy judges it again
                return
            self._scopes[ns] = scope
            self._publish()
        log.info(
            "namespace_policy_loaded",
            namespace=ns,
            configmap=name,
            resource_version=rv,
            mode=scope.mode,
            rules=len(scope.policy.rules),
        )

    def _reject(self, cm: dict, ns: str, error: str, keep_last_good: bool) -> None:
        with self._lock:
            if not keep_last_good:
                self._scopes.pop(ns, None)
                self._publish()
            kept = self._scopes.get(ns)
        cause = _cause(error)
        self.metrics.namespace_rejections.labels(self.metrics.namespace_label(ns), cause).inc()
        log.error(
            "namespace_policy_rejected",
            namespace=ns,
            configmap=(cm.get("metadata") or {}).get("name"),
            resource_version=(cm.get("metadata") or {}).get("resourceVersion"),
            cause=cause,
            error=error,
            kept="last good" if kept is not None else "none (the file's scopes and default apply)",
        )
        if self.events is not None:
            try:
                self.events(
                    cm,
                    f"rejected by tproxy ({cause}): {error}; "
                    + ("the last good policy stays in force" if kept is not None else "the namespace has no policy of its own"),
                )
            except Exception as e:  # noqa: BLE001 - an event is a courtesy; never fail the judging
                log.warning("namespace_policy_event_failed", namespace=ns, error=str(e))

    def _publish(self) -> None:  # with the lock held
        scopes = dict(self._scopes)
        self.metrics.namespace_policies.set(len(scopes))
        self.publish(scopes)


def event_poster(client, node: str = "") -> Callable[[dict, str], None]:
    """``post(configmap, message)``: a Warning Event ``PolicyRejected`` on the ConfigMap, named
    after it, its resourceVersion and this node (every node's proxy judges the same ConfigMap;
    one Event per proxy and version, a repeat is a 409 and ignored)."""
    host = node or socket.gethostname()

    def post(cm: dict, message: str) -> None:
        meta = cm.get("metadata") or {}
        ns, name = meta.get("namespace", ""), meta.get("name", "")
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{name}.{meta.get('resourceVersion', '0')}.{host}".lower()[:253], "namespace": ns},
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "namespace": ns,
                "name": name,
                "uid": meta.get("uid", ""),
                "resourceVersion": meta.get("resourceVersion", ""),
            },
            "reason": EVENT_REASON,
            "message": message[:1024],
            "type": "Warning",
            "count": 1,
            "source": {"component": COMPONENT, "host": host},
            "firstTimestamp": now,
            "lastTimestamp": now,
        }
        try:
            client.create(f"/api/v1/namespaces/{ns}/events", event)
        except AlreadyExists:
            pass

    return post


class ConfigMapWatch:
    """The informer feeding :class:`NamespacePolicies` for one ConfigMap name (own thread)."""

    def __init__(self, name: str, judge: NamespacePolicies, kubeconfig: str = "", node: str = "", client=None):
        from controllerkit.kube import Client

        self.name = name
        self.client = client if client is not None else Client.from_config(kubeconfig or None)
        from controllerkit.informer import Informer

        self.informer = Informer(
            self.client,
            "/api/v1/configmaps",
            query={"fieldSelector": f"metadata.name={name}"},
            name=f"tproxy-namespace-policies-{name}",
        )
        self.informer.add_handler(judge.on_add, judge.on_update, judge.on_delete)
        if judge.events is None:
            judge.events = event_poster(self.client, node)

    def start(self) -> None:
        self.informer.start()
        log.info("namespace_policies_watching", configmap=self.name, path="/api/v1/configmaps")

    def stop(self) -> None:
        self.informer.stop(timeout=2.0)
