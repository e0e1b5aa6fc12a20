"""The netns kubelet: deployment + daemonset controller and kubelet for one simulated node.

It plays three roles of a real cluster, as far as the tutorial needs them:

- **deployment and replicaset controllers** (:mod:`kubesim.kubelet.replicasets`) — watch deployments
  *without* ``includeUninitialized`` (like every real controller: a deployment that an Initializer holds
  is invisible until initialized, which is exactly what makes the tutorial's injection work); a
  Deployment owns one ReplicaSet per template (``<name>-<pod-template-hash>``), the ReplicaSet owns
  ``replicas`` pods, all created through the API. A template change replaces the pods (Recreate), a
  scale-down deletes the newest first, a deleted Deployment's ReplicaSets and pods are deleted.
- **daemonset controller** — one pod per daemonset on this node, owned by the DaemonSet.
- **kubelet** — pods bound to this node (``spec.nodeName``; unscheduled pods are bound here) get a
  :class:`~kubesim.kubelet.runtime.PodRuntime`; a pod that disappears from the API is stopped and its
  network namespace deleted.

Everything is driven by informers (list + watch); a single reconcile loop runs on every event and once a
second, so bursts coalesce.
"""

from __future__ import annotations

import copy
import os
import random
import threading
import time

from controllerkit.errors import AlreadyExists, ApiError, Conflict, NotFound
from controllerkit.informer import Informer
from controllerkit.kube import Client, resource_path
from controllerkit.log import get_logger

from kubesim.kubelet import preflight
from kubesim.kubelet.images import ImageIndex
from kubesim.kubelet.replicasets import APIPaths, DeploymentControllers
from kubesim.kubelet.replicasets import template_hash as template_hash  # re-exported for callers
from kubesim.kubelet.runtime import PodRuntime
from kubesim.topology import NODE_IP, Topology

PODS = "/api/v1/pods"

#: where the simulated internet's CA must be trusted inside every container ("a public CA")
SYSTEM_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


def _suffix(n: int = 5) -> str:
    return "".join(random.choice("bcdfghjklmnpqrstvwxz2456789") for _ in range(n))


def _owner_uid(pod: dict) -> tuple[str, str] | None:
    for ref in pod["metadata"].get("ownerReferences") or []:
        if ref.get("controller") and ref.get("kind") == "DaemonSet":
            return ref["kind"], ref["uid"]
    return None


def trust_bundle(run_dir: str, extra_ca_files: list[str]) -> tuple[str | None, list[str]]:
    """System CAs + the simulated internet's CA in one file, and the paths to bind it over.

    Both the Debian system bundle (curl, the example app) and certifi's bundle (Python clients,
    mitmproxy's upstream verification) are covered: the simulated internet is then as trusted as the
    real one is on a real node — no component needs a test-only flag.
    """
    if not extra_ca_files:
        return None, []
    parts = []
    with open(SYSTEM_BUNDLE, "rb") as f:
        parts.append(f.read())
    for p in extra_ca_files:
        with open(p, "rb") as f:
            parts.append(f.read())
    path = os.path.join(run_dir, "trust-bundle.pem")
    with open(path, "wb") as f:
        f.write(b"\n".join(parts))
    paths = [SYSTEM_BUNDLE]
    try:
        import certifi

        paths.append(certifi.where())
    except ImportError:
        pass
    return path, paths


class Kubelet:
    """``Kubelet(client, topology, node_name=..., run_dir=...)``; ``start()`` / ``stop()``."""

    def __init__(
        self,
        client: Client,
        topology: Topology,
        *,
        run_dir: str,
        node_name: str | None = None,
        extra_ca_files: list[str] | None = None,
        backoff_initial: float = 1.0,
        backoff_cap: float = 10.0,
        max_grace: float = 5.0,
        volume_refresh: float = 1.0,
        resync_period: float = 30.0,
        logger=None,
        runtime: str = "emulate",
    ):
        self.client = client
        self.topology = topology
        if runtime not in ("emulate", "podman"):
            raise ValueError(f"kubelet: unknown runtime {runtime!r} (emulate or podman)")
        #: emulate: each Dockerfile's entrypoint on the host's Python; podman: the real images
        self.runtime = runtime
        self.node_name = node_name or topology.node_name
        self.run_dir = os.path.abspath(run_dir)
        self.hostfs = os.path.join(self.run_dir, "hostfs")
        os.makedirs(self.hostfs, exist_ok=True)
        self.backoff_initial, self.backoff_cap = backoff_initial, backoff_cap
        self.max_grace = max_grace
        self.volume_refresh = volume_refresh
        self.images = ImageIndex()
        self.ca_bundle, self.trust_paths = trust_bundle(self.run_dir, extra_ca_files or [])
        self.log = logger or get_logger(component="kubelet", node=self.node_name)
        self.resync_period = resync_period
        self.paths = APIPaths(apps_v1=False)  # chosen by start() from the server's discovery
        self.informers: list[Informer] = []
        self.runtimes: dict[str, PodRuntime] = {}
        self._finishing: set[str] = set()  # uids whose graceful deletion is being finished
        self._kick = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._created: dict[str, dict[str, float]] = {}  # owner uid/hash -> {pod name: forget-after}

    def _make_informers(self) -> None:
        """Informers on the workload API versions this server serves (apps/v1 from 1.9 on)."""
        try:
            self.client.get("/apis/apps/v1")
            apps_v1 = True
        except ApiError:
            apps_v1 = False
        self.paths = p = APIPaths(apps_v1)
        self.controllers = DeploymentControllers(self.client, p, self._create_pod, self._delete_pod, self.log)
        rp = self.resync_period
        self.deployments = Informer(
            self.client, p.collection(p.deployments_gv, "deployments"), resync_period=rp, name="kubelet-deployments"
        )
        self.replicasets = Informer(
            self.client, p.collection(p.replicasets_gv, "replicasets"), resync_period=rp, name="kubelet-replicasets"
        )
        self.daemonsets = Informer(
            self.client, p.collection(p.daemonsets_gv, "daemonsets"), resync_period=rp, name="kubelet-daemonsets"
        )
        self.pods = Informer(self.client, PODS, resync_period=rp, name="kubelet-pods")
        self.informers = [self.deployments, self.replicasets, self.daemonsets, self.pods]
        for inf in self.informers:
            inf.add_handler(lambda *_: self._kick.set(), lambda *_: self._kick.set(), lambda *_: self._kick.set())

    def image_id(self, image: str) -> str:
        img = self.images.resolve(image)
        return f"kubesim://{img.dockerfile}" if img.local else f"host://{img.name}"

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self, sync_timeout: float = 20.0) -> "Kubelet":
        # one probe container first: a machine that cannot run a non-root container says so here,
        # instead of as crash-looping pods (kubesim.kubelet.preflight)
        preflight.check(self.topology.node.name, self.run_dir)
        self._register_node()
        self._make_informers()
        for inf in self.informers:
            inf.start()
        for inf in self.informers:
            if not inf.wait_for_sync(sync_timeout):
                raise RuntimeError(
                    f"kubelet: informer {inf.name} did not sync within {sync_timeout}s "
                    f"(is the API server at {self.client.host} reachable?)"
                )
        self._thread = threading.Thread(target=self._loop, name="kubelet-reconcile", daemon=True)
        self._thread.start()
        self.log.info("kubelet started", run_dir=self.run_dir)
        return self

    def stop(self) -> None:
        """Stop every pod (processes killed, namespaces deleted); objects stay in the API."""
        self._stop.set()
        self._kick.set()
        if self._thread:
            self._thread.join(10)
        for inf in self.informers:
            inf.stop(2)
        rts = list(self.runtimes.values())
        self.runtimes.clear()
        for rt in rts:
            rt.stop()
        for rt in rts:
            rt.join(15)

    def _register_node(self) -> None:
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.node_name, "labels": {"kubernetes.io/hostname": self.node_name}},
            "status": {
                "addresses": [{"type": "InternalIP", "address": NODE_IP}, {"type": "Hostname", "address": self.node_name}],
                "conditions": [{"type": "Ready", "status": "True"}],
            },
        }
        try:
            self.client.create(resource_path("v1", "nodes"), node)
        except AlreadyExists:
            pass
        except ApiError as e:
            self.log.warning("registering the node failed", error=str(e))

    # -- reconcile ---------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.is_set():
            self._kick.wait(1.0)
            self._kick.clear()
            if self._stop.is_set():
                return
            try:
                self.reconcile()
            except Exception as e:  # noqa: BLE001 - keep reconciling
                self.log.error("reconcile failed", error=repr(e))

    def reconcile(self) -> None:
        pods = self.pods.store.list()
        self.controllers.sync(self.deployments.store.list(), self.replicasets.store.list(), pods)
        owners: dict[str, dict] = {}
        for ds in self.daemonsets.store.list():
            owners[ds["metadata"]["uid"]] = ds
            self._sync_owner(ds, "DaemonSet", pods, 1)
        # garbage collection: pods whose controlling DaemonSet is gone
        for p in pods:
            owner = _owner_uid(p)
            if owner and owner[1] not in owners:
                self._delete_pod(p, "owner deleted")
        self._sync_runtimes(pods)

    def _sync_owner(self, obj: dict, kind: str, pods: list[dict], replicas: int) -> None:
        """The daemonset controller (one pod of the current template on this node)."""
        meta = obj["metadata"]
        uid = meta["uid"]
        template = copy.deepcopy((obj.get("spec") or {}).get("template") or {})
        h = template_hash(template, encoded=self.paths.apps_v1)
        mine = [p for p in pods if (_owner_uid(p) or ("", ""))[1] == uid]
        current = [p for p in mine if (p["metadata"].get("labels") or {}).get("pod-template-hash") == h]
        for p in mine:
            if p not in current:
                self._delete_pod(p, "template changed")
        current.sort(key=lambda p: p["metadata"].get("creationTimestamp", ""))
        for p in current[replicas:]:
            self._delete_pod(p, "scaled down")
        # pods created moments ago may not be in the informer yet: count them for a while
        inflight = self._created.setdefault(f"{uid}/{h}", {})
        names = {p["metadata"]["name"] for p in mine}
        nowt = time.monotonic()
        for n in list(inflight):
            if n in names or inflight[n] < nowt:
                del inflight[n]
        missing = replicas - len(current) - len(inflight)
        for _ in range(max(0, missing)):
            name = self._create_pod(obj, kind, template, h, self.paths.owner_gv)
            if name:
                inflight[name] = time.monotonic() + 10
        self._update_owner_status(obj, current[:replicas])

    def _update_owner_status(self, obj: dict, pods: list[dict]) -> None:
        """Report the counts on the DaemonSet (``kubectl get``, rollout waits and Helm read them)."""
        ready = sum(
            1
            for p in pods
            if any(
                c.get("type") == "Ready" and c.get("status") == "True" for c in (p.get("status") or {}).get("conditions") or []
            )
        )
        meta = obj["metadata"]
        want = {
            "currentNumberScheduled": len(pods),
            "desiredNumberScheduled": 1,
            "numberMisscheduled": 0,
            "numberReady": ready,
            "updatedNumberScheduled": len(pods),
            "numberAvailable": ready,
            "observedGeneration": meta.get("generation", 1),
        }
        p = self.paths
        path = p.collection(p.daemonsets_gv, "daemonsets", meta.get("namespace", "default")) + f"/{meta['name']}/status"
        cur = obj.get("status") or {}
        if all(cur.get(k) == v for k, v in want.items()):
            return
        new = copy.deepcopy(obj)
        new["status"] = {**cur, **want}
        try:
            self.client.replace(path, new)
        except ApiError:
            pass  # a newer version exists; the next reconcile (it triggers one) retries

    def _create_pod(self, owner: dict, kind: str, template: dict, h: str, owner_gv: str) -> str | None:
        """Create one pod of ``owner`` (a ReplicaSet or DaemonSet) through the API; its name, or None."""
        meta = owner["metadata"]
        ns = meta.get("namespace", "default")
        tmeta = template.get("metadata") or {}
        labels = dict(tmeta.get("labels") or {})
        labels["pod-template-hash"] = h
        name = f"{meta['name']}-{_suffix()}"
        spec = copy.deepcopy(template.get("spec") or {})
        spec["nodeName"] = self.node_name
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": ns,
                "labels": labels,
                "annotations": dict(tmeta.get("annotations") or {}),
                "ownerReferences": [
                    {
                        "apiVersion": owner_gv,
                        "kind": kind,
                        "name": meta["name"],
                        "uid": meta["uid"],
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            "spec": spec,
        }
        if not pod["metadata"]["annotations"]:
            del pod["metadata"]["annotations"]
        try:
            self.client.create(resource_path("v1", "pods", ns), pod)
            self.log.info("pod created", pod=f"{ns}/{name}", owner=f"{kind}/{meta['name']}")
            return name
        except ApiError as e:
            self.log.warning("creating a pod failed", owner=f"{ns}/{meta['name']}", error=str(e))
            return None

    def _delete_pod(self, pod: dict, why: str) -> None:
        meta = pod["metadata"]
        try:
            self.client.delete(resource_path("v1", "pods", meta.get("namespace", "default"), meta["name"]))
            self.log.info("pod deleted", pod=f"{meta.get('namespace')}/{meta['name']}", reason=why)
        except NotFound:
            pass
        except ApiError as e:
            self.log.warning("deleting a pod failed", pod=meta["name"], error=str(e))

    def _sync_runtimes(self, pods: list[dict]) -> None:
        wanted = {}
        for p in pods:
            spec = p.get("spec") or {}
            node = spec.get("nodeName")
            if not node:
                self._bind(p)
                continue
            if node != self.node_name:
                continue
            if (p.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                continue
            if p["metadata"].get("deletionTimestamp"):
                self._finish_deletion(p)  # a graceful delete: stop it, then remove the object
                continue
            wanted[p["metadata"]["uid"]] = p
        for uid, rt in list(self.runtimes.items()):
            if uid not in wanted and uid not in self._finishing:
                rt.stop()
                del self.runtimes[uid]
                threading.Thread(target=rt.join, daemon=True).start()
        for uid, p in wanted.items():
            if uid not in self.runtimes:
                rt = PodRuntime(self, p)
                self.runtimes[uid] = rt
                rt.start()

    def _finish_deletion(self, pod: dict) -> None:
        """The kubelet's half of a graceful delete: stop the pod's containers (SIGTERM, then SIGKILL
        after the grace period), then delete the object with grace 0. Until then the pod object stays,
        with its ``deletionTimestamp``, so a controller watching it (podwatch) keeps its rules while
        its processes may still run."""
        meta = pod["metadata"]
        uid = meta["uid"]
        if uid in self._finishing:
            return
        self._finishing.add(uid)
        rt = self.runtimes.get(uid)

        def finish():
            try:
                if rt is not None:
                    rt.stop()
                    rt.join()
                self.runtimes.pop(uid, None)
                path = resource_path("v1", "pods", meta.get("namespace", "default"), meta["name"])
                try:
                    self.client.delete(
                        path,
                        body={
                            "kind": "DeleteOptions",
                            "apiVersion": "v1",
                            "gracePeriodSeconds": 0,
                            "preconditions": {"uid": uid},
                        },
                    )
                except (NotFound, Conflict):
                    pass
                except ApiError as e:
                    self.log.warning("finishing a pod's deletion failed", pod=meta["name"], error=str(e))
            finally:
                self._finishing.discard(uid)
                self._kick.set()

        threading.Thread(target=finish, name=f"delete {meta['name']}", daemon=True).start()

    def _bind(self, pod: dict) -> None:
        """The scheduler's job, done here for a one-node cluster: set ``spec.nodeName``."""
        meta = pod["metadata"]
        ns = meta.get("namespace", "default")
        binding = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": meta["name"], "namespace": ns},
            "target": {"apiVersion": "v1", "kind": "Node", "name": self.node_name},
        }
        try:
            self.client.create(resource_path("v1", "pods", ns, meta["name"], "binding"), binding)
            return
        except ApiError:
            pass
        try:
            cur = self.client.get(resource_path("v1", "pods", ns, meta["name"]))
            cur["spec"]["nodeName"] = self.node_name
            self.client.replace(resource_path("v1", "pods", ns, meta["name"]), cur)
        except ApiError as e:
            self.log.warning("binding a pod failed", pod=f"{ns}/{meta['name']}", error=str(e))
