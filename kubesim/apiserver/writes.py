"""The write verbs: create (with the Initializers wait and cluster-IP allocation), pods/binding,
update and patch (one GuaranteedUpdate path). Both admit the object in :mod:`.admit`.
"""

from __future__ import annotations

import copy

from . import errors, patch as patchlib, reviews, webhooks, workloads
from .errors import APIError, FieldError
from .rbac import User
from .resources import BY_GVR
from .routing import Request, truthy
from .store import AlreadyExists, Watcher
from .transport import read_body, send_json


class WriteVerbsMixin:
    """POST, PUT and PATCH."""

    def _verb_create(self, h, req: Request, user, exempt) -> None:
        rt = req.rt
        if req.subresource == "binding":
            return self._create_binding(h, req)
        if rt.storage.startswith("review:"):
            return reviews.create(self, h, req, user)
        body = read_body(h)
        obj = self._decode(rt, body, req)
        meta = obj["metadata"]
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + self._random_suffix()
        if rt.namespaced and self.store.get("namespaces", "", req.namespace) is None:
            raise errors.namespace_not_found(req.namespace)
        self._admit_create(rt, req, user, obj)
        self._fill_new_meta(rt, obj)
        workloads.prepare_create(rt, obj, self.k8s_version)
        name = meta["name"]
        uninitialized = meta.get("initializers") is not None
        if self.k8s_version == "1.7":
            include = req.query.get("includeUninitialized") == "1"  # §1b: only the literal "1"
        else:
            include = truthy(req.query.get("includeUninitialized"))
        if self._dry_run(req):  # admitted and validated, not stored
            if self.store.get(rt.storage, req.namespace if rt.namespaced else "", name) is not None:
                raise errors.already_exists(rt, name)
            send_json(h, 201, rt.view(obj, self.k8s_version))
            return
        waiter = None
        if uninitialized and not include:
            waiter = Watcher(rt.storage, meta.get("namespace") or "", name, None, True)

        def register(_obj):
            if waiter is not None:
                self.store.watchers[rt.storage].add(waiter)

        try:
            with self.store.lock:  # allocation and write in one critical section
                if rt.storage == "services" and self.store.get("services", req.namespace, name) is None:
                    self._allocate_cluster_ip(rt, obj)
                stored = self.store.create(rt.storage, obj, on_created=register)
        except AlreadyExists:
            raise errors.already_exists(rt, name) from None
        self.write_count += 1
        self._after_create(rt, stored)
        if waiter is None:
            send_json(h, 202 if uninitialized else 201, rt.view(stored, self.k8s_version))
            return
        self._waiting_creates += 1
        try:
            result = self._wait_initialized(rt, waiter, name, req.query.get("timeout", ""))
        finally:
            self._waiting_creates -= 1
            self.store.unwatch(waiter)
        send_json(h, 201, rt.view(result, self.k8s_version))

    def _create_binding(self, h, req: Request) -> None:
        body = read_body(h)
        target = (body or {}).get("target") or {}
        node = target.get("name")
        if not node:
            raise errors.invalid(BY_GVR[("", "v1", "pods")], req.name, [FieldError("Required", "target.name", "")])
        with self.store.lock:
            cur = self.store.get("pods", req.namespace, req.name)
            if cur is None:
                raise errors.not_found(req.rt, req.name)
            if (cur.get("spec") or {}).get("nodeName"):
                raise APIError(
                    409,
                    "Conflict",
                    f'Operation cannot be fulfilled on pods/binding "{req.name}": '
                    f'pod {req.name} is already assigned to node "{cur["spec"]["nodeName"]}"',
                )
            new = copy.deepcopy(cur)
            new["spec"]["nodeName"] = node
            self.store.update("pods", new)
        send_json(h, 201, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201})

    def _verb_update(self, h, req: Request, user, exempt) -> None:
        body = read_body(h)
        obj = self._decode(req.rt, body, req)
        if obj["metadata"].get("name") and obj["metadata"]["name"] != req.name:
            raise errors.bad_request(
                f"the name of the object ({obj['metadata']['name']}) does not match the name on the URL ({req.name})"
            )
        obj["metadata"]["name"] = req.name
        if not exempt and self.faults.roll("conflict"):
            raise errors.conflict(req.rt, req.name)
        out, code = self._update(req, user, lambda cur: obj, precondition=True)
        send_json(h, code, req.rt.view(out, self.k8s_version))

    def _verb_patch(self, h, req: Request, user, exempt) -> None:
        ctype = (h.headers.get("Content-Type") or "").split(";")[0].strip()
        body = read_body(h)
        rt = req.rt

        def apply(cur: dict) -> dict:
            base = rt.view(cur, self.k8s_version)
            pmk = self.k8s_version != "1.7"
            try:
                patched = patchlib.apply_patch(ctype, base, body, lambda p: patchlib.default_merge_key(p, pending_merge_key=pmk))
            except patchlib.UnsupportedPatchType as e:
                raise APIError(415, "UnsupportedMediaType", str(e)) from None
            except patchlib.PatchError as e:
                raise APIError(422, "Invalid", str(e)) from None
            if not isinstance(patched, dict):
                raise APIError(422, "Invalid", "the patch produced something that is not an object")
            new = self._decode(rt, patched, req)
            if new["metadata"].get("name") != req.name:
                raise errors.bad_request("the name of the object cannot be changed by a patch")
            return new

        def apply_with_fault(cur: dict) -> dict:
            new = apply(cur)
            # A patch carrying metadata.resourceVersion is an optimistic-lock precondition: the only
            # kind of PATCH a real server answers 409, so the only kind the conflict fault hits.
            if _patch_sets_resource_version(body) and not exempt and self.faults.roll("conflict"):
                raise errors.conflict(rt, req.name)
            return new

        out, code = self._update(req, user, apply_with_fault, precondition=True)
        send_json(h, code, rt.view(out, self.k8s_version))

    def _update(self, req: Request, user: User, build, precondition: bool) -> tuple[dict, int]:
        """GuaranteedUpdate, with the mutating webhooks called outside the store lock (webhooks.py)."""
        dry_run = self._dry_run(req)
        if self.webhooks is None or req.rt.group.startswith("admissionregistration.") or not self.webhooks.configured():
            return self._update_locked(req, user, build, precondition, dry_run)
        return webhooks.guaranteed_update(self, req, user, build, precondition, dry_run)

    def _update_locked(
        self, req: Request, user: User, build, precondition: bool, dry_run: bool = False, mutate=None
    ) -> tuple[dict, int]:
        """GuaranteedUpdate: read, build the new object, admit, validate, write (under the lock);
        ``dry_run``: everything but the write."""
        rt = req.rt
        with self.store.lock:
            cur = self.store.get(rt.storage, req.namespace, req.name)
            if cur is None:
                raise errors.not_found(rt, req.name)
            new = build(cur)
            meta = new["metadata"]
            rv = meta.get("resourceVersion")
            if precondition and rv and rv != cur["metadata"]["resourceVersion"]:
                raise errors.conflict(rt, req.name)
            for k in ("uid", "creationTimestamp"):
                meta[k] = cur["metadata"].get(k)
            for k in ("deletionTimestamp", "deletionGracePeriodSeconds"):  # set by a delete only
                if k in cur["metadata"]:
                    meta[k] = cur["metadata"][k]
                else:
                    meta.pop(k, None)
            if rt.namespaced:
                meta["namespace"] = req.namespace
            if req.subresource == "status":
                status = new.get("status")
                new = copy.deepcopy(cur)
                if status is not None:
                    new["status"] = status
                else:
                    new.pop("status", None)
                meta = new["metadata"]
            else:
                if rt.has_status:
                    if "status" in cur:
                        new["status"] = copy.deepcopy(cur["status"])
                    else:
                        new.pop("status", None)
                self._admit_update(rt, req, user, new, cur, mutate)
            if rt.storage == "services" and isinstance(new.get("spec"), dict) and not new["spec"].get("clusterIP"):
                ip = (cur.get("spec") or {}).get("clusterIP")
                if ip:
                    new["spec"]["clusterIP"] = ip  # allocated once, carried over
            if rt.storage == "daemonsets" and isinstance(new.get("spec"), dict):
                old_t = (cur.get("spec") or {}).get("templateGeneration", 1)
                new["spec"]["templateGeneration"] = old_t + (
                    1 if new["spec"].get("template") != (cur.get("spec") or {}).get("template") else 0
                )
            if rt.tracks_generation:
                gen = cur["metadata"].get("generation", 1)
                meta["generation"] = gen + 1 if new.get("spec") != cur.get("spec") else gen
            else:
                meta.pop("generation", None)
            if dry_run:
                return new, 200
            stored, _ = self.store.update(rt.storage, new)
            self.write_count += 1
            inits = meta.get("initializers")
            if inits is not None and inits.get("result") is not None:
                # §4: persisted, then deleted at once; the PUT still returns 200 with the object.
                self.store.delete(rt.storage, req.namespace, req.name)
                self._after_delete(rt, stored)
            return stored, 200


def _patch_sets_resource_version(body) -> bool:
    if isinstance(body, dict):
        return bool((body.get("metadata") or {}).get("resourceVersion")) if isinstance(body.get("metadata"), dict) else False
    if isinstance(body, list):
        return any(isinstance(op, dict) and op.get("path") == "/metadata/resourceVersion" for op in body)
    return False
