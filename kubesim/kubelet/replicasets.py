"""The deployment and replicaset controllers of the netns kubelet, as kube-controller-manager runs them.

A Deployment owns ReplicaSets, a ReplicaSet owns Pods (``ownerReferences`` with ``controller: true``),
all created through the API — so every Pod create passes the API server's admission (Initializers in
1.7, the mutating admission webhooks in later versions), as on a real cluster:

- **deployment controller** — the ReplicaSet of the Deployment's current template is named
  ``<deployment>-<pod-template-hash>``, carries the hash as label and selector term, and the
  ``deployment.kubernetes.io/revision`` / ``desired-replicas`` / ``max-replicas`` annotations; it is
  scaled to ``spec.replicas`` and every older ReplicaSet to 0 (a template change replaces the pods, as
  ``Recreate`` does); old ReplicaSets beyond ``revisionHistoryLimit`` are deleted. The Deployment's
  status (replicas, updated/ready/available/unavailable counts, the ``Available`` and ``Progressing``
  conditions, ``observedGeneration``) is what ``kubectl rollout status`` and ``helm install --wait`` read.
- **replicaset controller** — keeps ``spec.replicas`` pods (scale-down deletes the newest first) and
  reports ``replicas``/``fullyLabeledReplicas``/``readyReplicas``/``availableReplicas``/
  ``observedGeneration``.
- **garbage collector** — a ReplicaSet whose Deployment is gone, and a Pod whose ReplicaSet is gone,
  are deleted (background propagation).

The API versions follow the server: ``apps/v1`` where it is served (1.9+), else 1.7's
``apps/v1beta1`` Deployments and ``extensions/v1beta1`` ReplicaSets and DaemonSets. The hash is 1.7's
decimal FNV-style number there and the safe-encoded form of it from 1.8 on (``5c98db65d4``-like).
"""

from __future__ import annotations

import copy
import hashlib
import json
import time

from controllerkit.errors import AlreadyExists, ApiError, NotFound

REVISION = "deployment.kubernetes.io/revision"
DESIRED = "deployment.kubernetes.io/desired-replicas"
MAX_REPLICAS = "deployment.kubernetes.io/max-replicas"
_SAFE = "bcdfghjklmnpqrstvwxz2456789"  # k8s.io/apimachinery/pkg/util/rand alphanums


def template_hash(template: dict, encoded: bool = False) -> str:
    """A stable hash of a pod template: decimal (1.7's pod-template-hash), or safe-encoded (1.8+)."""
    digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()
    decimal = str(int(digest[:8], 16))
    return "".join(_SAFE[ord(ch) % len(_SAFE)] for ch in decimal) if encoded else decimal


def controller_of(obj: dict) -> tuple[str, str] | None:
    """(kind, uid) of the object's controlling owner, or None."""
    for ref in obj["metadata"].get("ownerReferences") or []:
        if ref.get("controller"):
            return ref.get("kind", ""), ref.get("uid", "")
    return None


def is_ready(pod: dict) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in (pod.get("status") or {}).get("conditions") or [])


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class APIPaths:
    """Where the workloads live on this server (``apps/v1`` when served, else the 1.7 groups)."""

    def __init__(self, apps_v1: bool):
        self.apps_v1 = apps_v1
        self.deployments_gv = "apps/v1" if apps_v1 else "apps/v1beta1"
        self.replicasets_gv = "apps/v1" if apps_v1 else "extensions/v1beta1"
        self.daemonsets_gv = "apps/v1" if apps_v1 else "extensions/v1beta1"
        #: the ownerReference apiVersion the controllers write (1.7's controllers wrote extensions/v1beta1)
        self.owner_gv = "apps/v1" if apps_v1 else "extensions/v1beta1"

    def collection(self, gv: str, plural: str, ns: str | None = None) -> str:
        base = f"/apis/{gv}"
        return f"{base}/namespaces/{ns}/{plural}" if ns else f"{base}/{plural}"


class DeploymentControllers:
    """The deployment + replicaset controllers; ``sync(deployments, replicasets, pods)`` once per reconcile.

    ``create_pod(owner, kind, template, hash)`` and ``delete_pod(pod, why)`` are the kubelet's."""

    def __init__(self, client, paths: APIPaths, create_pod, delete_pod, log):
        self.client = client
        self.paths = paths
        self.create_pod = create_pod
        self.delete_pod = delete_pod
        self.log = log
        self._created: dict[str, dict[str, float]] = {}  # rs uid -> {pod name: forget-after}
        self._rs_created: dict[str, float] = {}  # ns/rs name -> forget-after

    # -- deployments ------------------------------------------------------------------------
    def sync(self, deployments: list[dict], replicasets: list[dict], pods: list[dict]) -> None:
        by_uid = {d["metadata"]["uid"]: d for d in deployments}
        for rs in replicasets:  # garbage collection: a ReplicaSet whose Deployment is gone
            owner = controller_of(rs)
            if owner and owner[0] == "Deployment" and owner[1] not in by_uid:
                self._delete_rs(rs, "deployment deleted")
        for d in deployments:
            mine = [rs for rs in replicasets if (controller_of(rs) or ("", ""))[1] == d["metadata"]["uid"]]
            self._sync_deployment(d, mine, pods)
        rs_uids = {rs["metadata"]["uid"] for rs in replicasets}
        for rs in replicasets:
            self._sync_replicaset(rs, pods)
        for p in pods:  # garbage collection: a Pod whose ReplicaSet is gone
            owner = controller_of(p)
            if owner and owner[0] == "ReplicaSet" and owner[1] not in rs_uids and not self._recent_rs(p):
                self.delete_pod(p, "replicaset deleted")

    def _recent_rs(self, pod: dict) -> bool:
        """A ReplicaSet created moments ago may reach the pod informer before the replicaset one."""
        ref = next(r for r in pod["metadata"]["ownerReferences"] if r.get("controller"))
        return self._rs_created.get(f"{pod['metadata'].get('namespace')}/{ref.get('name')}", 0) > time.monotonic()

    def _sync_deployment(self, d: dict, mine: list[dict], pods: list[dict]) -> None:
        spec = d.get("spec") or {}
        replicas = int(spec.get("replicas", 1) or 0)
        template = copy.deepcopy(spec.get("template") or {})
        h = template_hash(template, encoded=self.paths.apps_v1)
        new = next((rs for rs in mine if (rs["metadata"].get("labels") or {}).get("pod-template-hash") == h), None)
        revisions = [int((rs["metadata"].get("annotations") or {}).get(REVISION, "0") or 0) for rs in mine]
        if new is None:
            new = self._create_rs(d, template, h, replicas, max(revisions, default=0) + 1)
        elif (new.get("spec") or {}).get("replicas") != replicas or self._stale_revision(new, revisions):
            self._scale_rs(new, replicas, max(revisions, default=0) + (1 if self._stale_revision(new, revisions) else 0))
        old = [rs for rs in mine if new is None or rs["metadata"]["uid"] != new["metadata"]["uid"]]
        for rs in old:
            if (rs.get("spec") or {}).get("replicas"):
                self._scale_rs(rs, 0, None)
        limit = spec.get("revisionHistoryLimit")
        if isinstance(limit, int):
            idle = sorted(
                (rs for rs in old if not (rs.get("status") or {}).get("replicas")),
                key=lambda rs: int((rs["metadata"].get("annotations") or {}).get(REVISION, "0") or 0),
            )
            for rs in idle[: max(0, len(idle) - limit)]:
                self._delete_rs(rs, "beyond revisionHistoryLimit")
        self._deployment_status(d, new, mine, pods, replicas)

    @staticmethod
    def _stale_revision(rs: dict, revisions: list[int]) -> bool:
        """A rollback to an old template makes its ReplicaSet the newest revision again."""
        mine = int((rs["metadata"].get("annotations") or {}).get(REVISION, "0") or 0)
        return mine < max(revisions, default=0) and (rs.get("spec") or {}).get("replicas") == 0

    def _create_rs(self, d: dict, template: dict, h: str, replicas: int, revision: int) -> dict | None:
        meta, spec = d["metadata"], d.get("spec") or {}
        ns = meta.get("namespace", "default")
        name = f"{meta['name']}-{h}"
        tmeta = template.setdefault("metadata", {})
        tmeta["labels"] = {**(tmeta.get("labels") or {}), "pod-template-hash": h}
        selector = copy.deepcopy(spec.get("selector") or {"matchLabels": dict(tmeta["labels"])})
        selector.setdefault("matchLabels", {})["pod-template-hash"] = h
        rs = {
            "apiVersion": self.paths.replicasets_gv,
            "kind": "ReplicaSet",
            "metadata": {
                "name": name,
                "namespace": ns,
                "labels": dict(tmeta["labels"]),
                "annotations": {
                    REVISION: str(revision),
                    DESIRED: str(replicas),
                    MAX_REPLICAS: str(replicas + self._surge(spec, replicas)),
                },
                "ownerReferences": [
                    {
                        "apiVersion": self.paths.owner_gv,
                        "kind": "Deployment",
                        "name": meta["name"],
                        "uid": meta["uid"],
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            "spec": {
                "replicas": replicas,
                "minReadySeconds": spec.get("minReadySeconds", 0),
                "selector": selector,
                "template": template,
            },
        }
        if not rs["spec"]["minReadySeconds"]:
            del rs["spec"]["minReadySeconds"]
        try:
            out = self.client.create(self.paths.collection(self.paths.replicasets_gv, "replicasets", ns), rs)
            self._rs_created[f"{ns}/{name}"] = time.monotonic() + 10
            self.log.info("replicaset created", replicaset=f"{ns}/{name}", deployment=meta["name"])
            return out
        except AlreadyExists:
            return None  # the informer has not seen it yet; the next reconcile adopts it
        except ApiError as e:
            self.log.warning("creating a replicaset failed", deployment=f"{ns}/{meta['name']}", error=str(e))
            return None

    @staticmethod
    def _surge(spec: dict, replicas: int) -> int:
        ru = (spec.get("strategy") or {}).get("rollingUpdate") or {}
        v = ru.get("maxSurge", 0) if (spec.get("strategy") or {}).get("type") == "RollingUpdate" else 0
        if isinstance(v, str) and v.endswith("%"):
            return -(-replicas * int(v[:-1]) // 100)  # rounded up, as intstr.GetValueFromIntOrPercent
        return int(v or 0)

    @staticmethod
    def _unavailable(spec: dict, replicas: int) -> int:
        strategy = spec.get("strategy") or {}
        if strategy.get("type") != "RollingUpdate":
            return 0
        v = (strategy.get("rollingUpdate") or {}).get("maxUnavailable", 0)
        if isinstance(v, str) and v.endswith("%"):
            return replicas * int(v[:-1]) // 100  # rounded down
        return min(int(v or 0), replicas)

    def _scale_rs(self, rs: dict, replicas: int, revision: int | None) -> None:
        meta = rs["metadata"]
        new = copy.deepcopy(rs)
        new["spec"]["replicas"] = replicas
        ann = new["metadata"].setdefault("annotations", {})
        if revision is not None:
            ann[REVISION] = str(revision)
            ann[DESIRED] = str(replicas)
        path = self.paths.collection(self.paths.replicasets_gv, "replicasets", meta.get("namespace")) + "/" + meta["name"]
        try:
            self.client.replace(path, new)
        except ApiError:
            pass  # a newer version exists; the update event triggers the next reconcile

    def _delete_rs(self, rs: dict, why: str) -> None:
        meta = rs["metadata"]
        path = self.paths.collection(self.paths.replicasets_gv, "replicasets", meta.get("namespace")) + "/" + meta["name"]
        try:
            self.client.delete(path)
            self.log.info("replicaset deleted", replicaset=f"{meta.get('namespace')}/{meta['name']}", reason=why)
        except NotFound:
            pass
        except ApiError as e:
            self.log.warning("deleting a replicaset failed", replicaset=meta["name"], error=str(e))

    def _deployment_status(self, d: dict, new: dict | None, mine: list[dict], pods: list[dict], replicas: int) -> None:
        meta, spec = d["metadata"], d.get("spec") or {}
        uids = {rs["metadata"]["uid"] for rs in mine}
        owned = [p for p in pods if (controller_of(p) or ("", ""))[1] in uids and not p["metadata"].get("deletionTimestamp")]
        new_uid = new["metadata"]["uid"] if new else None
        updated = [p for p in owned if (controller_of(p) or ("", ""))[1] == new_uid]
        ready = sum(1 for p in owned if is_ready(p))
        want = {
            "observedGeneration": meta.get("generation", 1),
            "replicas": len(owned),
            "updatedReplicas": len(updated),
            "readyReplicas": ready,
            "availableReplicas": ready,
            "unavailableReplicas": max(0, replicas - ready),
        }
        for k in ("replicas", "updatedReplicas", "readyReplicas", "availableReplicas", "unavailableReplicas"):
            if not want[k]:
                del want[k]  # omitempty, as the real status is written
        cur = d.get("status") or {}
        available = ready >= replicas - self._unavailable(spec, replicas)
        done = new is not None and len(updated) == replicas and len(owned) == replicas and ready >= replicas
        conds = {c.get("type"): c for c in cur.get("conditions") or []}
        avail = (
            ("True", "MinimumReplicasAvailable", "Deployment has minimum availability.")
            if available
            else ("False", "MinimumReplicasUnavailable", "Deployment does not have minimum availability.")
        )
        rs_name = new["metadata"]["name"] if new else meta["name"]
        prog = (
            ("True", "NewReplicaSetAvailable", f'ReplicaSet "{rs_name}" has successfully progressed.')
            if done
            else ("True", "ReplicaSetUpdated", f'ReplicaSet "{rs_name}" is progressing.')
        )
        conditions = [
            self._condition(conds.get("Available"), "Available", *avail),
            self._condition(conds.get("Progressing"), "Progressing", *prog),
        ]
        want["conditions"] = conditions
        keys = set(want) | {"replicas", "updatedReplicas", "readyReplicas", "availableReplicas", "unavailableReplicas"}
        if all(cur.get(k) == want.get(k) for k in keys):
            return
        new_obj = copy.deepcopy(d)
        new_obj["status"] = {**{k: v for k, v in cur.items() if k not in keys}, **want}
        path = (
            self.paths.collection(self.paths.deployments_gv, "deployments", meta.get("namespace", "default"))
            + f"/{meta['name']}/status"
        )
        try:
            self.client.replace(path, new_obj)
        except ApiError:
            pass

    @staticmethod
    def _condition(cur: dict | None, typ: str, status: str, reason: str, message: str) -> dict:
        if cur and (cur.get("status"), cur.get("reason"), cur.get("message")) == (status, reason, message):
            return cur
        now = _now()
        changed = not cur or cur.get("status") != status
        return {
            "type": typ,
            "status": status,
            "lastUpdateTime": now,
            "lastTransitionTime": now if changed else cur.get("lastTransitionTime", now),
            "reason": reason,
            "message": message,
        }

    # -- replicasets ------------------------------------------------------------------------
    def _sync_replicaset(self, rs: dict, pods: list[dict]) -> None:
        meta, spec = rs["metadata"], rs.get("spec") or {}
        uid = meta["uid"]
        replicas = int(spec.get("replicas", 1) or 0)
        template = copy.deepcopy(spec.get("template") or {})
        h = ((template.get("metadata") or {}).get("labels") or {}).get("pod-template-hash", "")
        mine = [p for p in pods if (controller_of(p) or ("", ""))[1] == uid]
        live = sorted(
            (p for p in mine if not p["metadata"].get("deletionTimestamp")),
            key=lambda p: p["metadata"].get("creationTimestamp", ""),
        )
        for p in live[replicas:]:
            self.delete_pod(p, "scaled down")
        inflight = self._created.setdefault(uid, {})
        names = {p["metadata"]["name"] for p in mine}
        nowt = time.monotonic()
        for n in list(inflight):
            if n in names or inflight[n] < nowt:
                del inflight[n]
        for _ in range(max(0, replicas - len(live) - len(inflight))):
            name = self.create_pod(rs, "ReplicaSet", template, h, self.paths.replicasets_gv)
            if name:
                inflight[name] = nowt + 10
        kept = live[:replicas]
        ready = sum(1 for p in kept if is_ready(p))
        want = {
            "replicas": len(kept),
            "fullyLabeledReplicas": len(kept),
            "readyReplicas": ready,
            "availableReplicas": ready,
            "observedGeneration": meta.get("generation", 1),
        }
        for k in ("fullyLabeledReplicas", "readyReplicas", "availableReplicas"):
            if not want[k]:
                del want[k]
        cur = rs.get("status") or {}
        keys = set(want) | {"fullyLabeledReplicas", "readyReplicas", "availableReplicas"}
        if all(cur.get(k) == want.get(k) for k in keys):
            return
        new = copy.deepcopy(rs)
        new["status"] = {**{k: v for k, v in cur.items() if k not in keys}, **want}
        path = (
            self.paths.collection(self.paths.replicasets_gv, "replicasets", meta.get("namespace", "default"))
            + f"/{meta['name']}/status"
        )
        try:
            self.client.replace(path, new)
        except ApiError:
            pass
