"""The read verbs: get, list (selectors, pagination, tables) and watch (a chunked stream of events
from the store's history and a watcher queue; 410 Gone/Expired for a too-old resourceVersion).
"""

from __future__ import annotations

import json
import queue
import time

from . import errors, logs_subresource, pagination, protobuf, selectors, tables
from .routing import Request, truthy
from .store import STOP, Gone, Watcher, is_uninitialized
from .transport import Streamed, peer_closed, send_json

DEFAULT_WATCH_TIMEOUT = 1800.0


class ReadVerbsMixin:
    """GET by name, LIST and WATCH."""

    def _verb_get(self, h, req: Request, user, exempt) -> None:
        if req.subresource == "log":
            return logs_subresource.serve(self, h, req)
        obj = self.store.get(req.rt.storage, req.namespace, req.name)
        if obj is None:
            raise errors.not_found(req.rt, req.name)
        # §2: GET by name always returns the object, initialized or not.
        if tables.wanted(h.headers.get("Accept"), self.k8s_version):
            return send_json(
                h,
                200,
                tables.table(
                    req.rt,
                    [req.rt.view(obj, self.k8s_version)],
                    {"resourceVersion": obj["metadata"].get("resourceVersion", "")},
                    req.query.get("includeObject", "Metadata"),
                ),
            )
        send_json(h, 200, req.rt.view(obj, self.k8s_version))

    def _predicate(self, req: Request):
        try:
            label = selectors.parse_label_selector(req.query.get("labelSelector"))
            field = selectors.parse_field_selector(req.query.get("fieldSelector"), req.rt.field_selectors)
        except selectors.SelectorError as e:
            raise errors.bad_request(str(e)) from None
        if not req.query.get("labelSelector") and not req.query.get("fieldSelector"):
            return None
        return lambda o: label((o.get("metadata") or {}).get("labels") or {}) and field(o)

    def _verb_list(self, h, req: Request, user, exempt) -> None:
        pred = self._predicate(req)
        include = truthy(req.query.get("includeUninitialized"))  # §2: LIST hides uninitialized
        items, rv = self.store.list(req.rt.storage, req.namespace if req.rt.namespaced and req.namespace else None)
        out = []
        for o in items:
            if not include and is_uninitialized(o):
                continue
            if pred is not None and not pred(o):
                continue
            out.append(req.rt.view(o, self.k8s_version, in_list=True))
        prefix = "/api/v1" if not req.rt.group else f"/apis/{req.rt.group}/{req.rt.version}"
        out, more = pagination.page(out, req.query, rv, self.k8s_version)
        list_meta = dict({"selfLink": prefix + "/" + req.rt.name, "resourceVersion": str(rv)}, **more)
        if tables.wanted(h.headers.get("Accept"), self.k8s_version):
            objs = [dict(o, kind=req.rt.kind, apiVersion=req.rt.api_version) for o in out]
            return send_json(h, 200, tables.table(req.rt, objs, list_meta, req.query.get("includeObject", "Metadata")))
        send_json(h, 200, {"kind": f"{req.rt.kind}List", "apiVersion": req.rt.api_version, "metadata": list_meta, "items": out})

    def _verb_watch(self, h, req: Request, user, exempt) -> None:
        rt = req.rt
        pred = self._predicate(req)
        name = req.name or None
        include = truthy(req.query.get("includeUninitialized"))
        rv_param = req.query.get("resourceVersion", "")
        since = None
        if rv_param not in ("", "0"):
            try:
                since = int(rv_param)
            except ValueError:
                raise errors.bad_request(f"invalid resource version: {rv_param}") from None
        timeout = DEFAULT_WATCH_TIMEOUT
        if req.query.get("timeoutSeconds"):
            try:
                timeout = float(req.query["timeoutSeconds"])
            except ValueError:
                raise errors.bad_request(f"invalid timeoutSeconds {req.query['timeoutSeconds']!r}") from None
        watcher = Watcher(rt.storage, req.namespace if rt.namespaced and req.namespace else None, name, pred, include)
        faults = None if exempt else self.faults
        h.kubesim_code = 200
        h.send_response(200)
        as_proto = getattr(h, "kubesim_proto", False)  # length-delimited protobuf WatchEvents
        h.send_header("Content-Type", protobuf.WATCH_MEDIA_TYPE if as_proto else "application/json")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()

        def chunk(data: bytes) -> None:
            h.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

        as_table = tables.wanted(h.headers.get("Accept"), self.k8s_version)

        def send_event(typ, obj):
            body = obj if typ == "ERROR" else rt.view(obj, self.k8s_version)
            if as_table and typ != "ERROR":
                body = tables.table(
                    rt,
                    [body],
                    {"resourceVersion": body["metadata"].get("resourceVersion", "")},
                    req.query.get("includeObject", "Metadata"),
                )
            if as_proto:
                return chunk(protobuf.watch_frame(typ, body))
            chunk(json.dumps({"type": typ, "object": body}, separators=(",", ":")).encode() + b"\n")

        try:
            try:
                if since is not None and faults is not None and faults.roll("gone"):
                    raise Gone(since, self.store.rv)
                backlog = self.store.watch(watcher, since)
            except Gone as e:
                send_event("ERROR", self._gone_status(e))
                return
            sent = 0
            deadline = time.monotonic() + timeout

            def cut() -> bool:
                if faults is None:
                    return False
                if faults.watch_cut_after and sent >= faults.watch_cut_after:
                    return True
                return faults.roll("watch_cut")

            for typ, obj in backlog:
                send_event(typ, obj)
                sent += 1
                if cut():
                    return
            while not self._stopping.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                try:
                    item = watcher.queue.get(timeout=min(remaining, 1.0))
                except queue.Empty:
                    if peer_closed(h.request):
                        return
                    continue
                if item is STOP:
                    return
                send_event(*item)
                sent += 1
                if cut():
                    return
        finally:
            self.store.unwatch(watcher)
            try:
                h.wfile.write(b"0\r\n\r\n")
            except OSError:
                pass
            h.close_connection = True
            raise Streamed()

    def _gone_status(self, e: Gone) -> dict:
        if self.k8s_version == "1.7":
            reason, msg = "Gone", f"too old resource version: {e.requested} ({e.oldest})"
        else:
            reason, msg = "Expired", f"too old resource version: {e.requested} ({e.oldest})"
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": msg,
            "reason": reason,
            "code": 410,
        }
