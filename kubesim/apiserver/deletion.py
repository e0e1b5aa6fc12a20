"""The delete verbs: DELETE (UID preconditions, a pod's graceful deletion) and DeleteCollection."""

from __future__ import annotations

import copy
import datetime
import json

from . import errors, protobuf
from .errors import APIError
from .routing import Request
from .transport import send_json


class DeleteVerbsMixin:
    """DELETE and DeleteCollection."""

    def _verb_delete(self, h, req: Request, user, exempt) -> None:
        rt = req.rt
        if req.subresource:
            raise APIError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
        raw = getattr(h, "raw_body", b"")
        try:
            if raw.strip() and (h.headers.get("Content-Type") or "").split(";")[0].strip() == protobuf.MEDIA_TYPE:
                opts = protobuf.decode_object(raw)[2]  # DeleteOptions from a typed client
            else:
                opts = json.loads(raw) if raw.strip() else {}
        except ValueError as e:
            raise errors.bad_request(f"json parse error: {e}") from None
        with self.store.lock:
            cur = self.store.get(rt.storage, req.namespace, req.name)
            if cur is None:
                raise errors.not_found(rt, req.name)
            uid = ((opts or {}).get("preconditions") or {}).get("uid") if isinstance(opts, dict) else None
            if uid and uid != cur["metadata"].get("uid"):
                raise APIError(
                    409,
                    "Conflict",
                    f"Precondition failed: UID in precondition: {uid}, UID in object meta: {cur['metadata'].get('uid')}",
                    {"name": req.name, "kind": rt.name},
                )
            if rt.storage == "pods":
                graceful = self._graceful_pod_delete(cur, opts, req)
                if graceful is not None:
                    send_json(h, 200, rt.view(graceful, self.k8s_version))
                    return
            gone = self.store.delete(rt.storage, req.namespace, req.name)
            self.write_count += 1
            self._after_delete(rt, gone)
        details = {"name": req.name, "kind": rt.name, "uid": cur["metadata"].get("uid")}
        if rt.group:
            details["group"] = rt.group
        send_json(
            h,
            200,
            {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Success",
                "details": errors.status_details(details),
            },
        )

    def _graceful_pod_delete(self, cur: dict, opts, req: Request) -> dict | None:
        """A pod's graceful deletion, as the real pod strategy does it (call with the store locked).

        A scheduled, running pod is not removed at once: it gets ``deletionTimestamp`` (now + the
        grace period) and ``deletionGracePeriodSeconds``, and stays until its kubelet has stopped the
        containers and deletes it again with grace 0. The grace period is the request's
        ``gracePeriodSeconds`` (DeleteOptions or query), else the pod's
        ``terminationGracePeriodSeconds`` (default 30); an unscheduled or finished pod, or grace 0,
        is deleted at once (returns None). A second delete can only shorten the grace period."""
        grace = None
        if isinstance(opts, dict) and opts.get("gracePeriodSeconds") is not None:
            grace = opts.get("gracePeriodSeconds")
        elif req.query.get("gracePeriodSeconds") not in (None, ""):
            grace = req.query.get("gracePeriodSeconds")
        spec, meta = cur.get("spec") or {}, cur["metadata"]
        if grace is None:
            grace = spec.get("terminationGracePeriodSeconds", 30)
        try:
            grace = int(grace)
        except (TypeError, ValueError):
            raise errors.bad_request(f"gracePeriodSeconds: {grace!r} is not an integer") from None
        if grace <= 0 or not spec.get("nodeName") or (cur.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            return None
        current = meta.get("deletionGracePeriodSeconds")
        if meta.get("deletionTimestamp") and current is not None and int(current) <= grace:
            return cur  # already terminating, no sooner than asked
        new = copy.deepcopy(cur)
        stamp = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=grace)
        new["metadata"]["deletionTimestamp"] = stamp.strftime("%Y-%m-%dT%H:%M:%SZ")
        new["metadata"]["deletionGracePeriodSeconds"] = grace
        stored, _prev = self.store.update("pods", new)
        self.write_count += 1
        return stored

    def _verb_deletecollection(self, h, req: Request, user, exempt) -> None:
        rt = req.rt
        pred = self._predicate(req)
        deleted = []
        with self.store.lock:
            items, _ = self.store.list(rt.storage, req.namespace if rt.namespaced and req.namespace else None)
            for o in items:  # §2: DeleteCollection includes uninitialized objects
                if pred is not None and not pred(o):
                    continue
                m = o["metadata"]
                gone = self.store.delete(rt.storage, m.get("namespace", ""), m["name"])
                self._after_delete(rt, gone)
                deleted.append(rt.view(gone, self.k8s_version, in_list=True))
        send_json(
            h,
            200,
            {
                "kind": f"{rt.kind}List",
                "apiVersion": rt.api_version,
                "metadata": {"resourceVersion": str(self.store.rv)},
                "items": deleted,
            },
        )
