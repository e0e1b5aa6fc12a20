"""The ``scale`` subresource (``kubectl scale``, HPAs): a Scale view of a workload's replicas.

As the 1.13 ScaleREST of deployments, replicasets, statefulsets and replicationcontrollers: GET
builds the Scale from the object (metadata name/namespace/uid/resourceVersion/creationTimestamp,
``spec.replicas``, ``status.replicas`` and the selector); PUT and PATCH change only
``spec.replicas`` (a ``resourceVersion`` in the Scale is a precondition, 409 when stale). The body's
version is the one discovery names for the subresource: ``autoscaling/v1`` under ``apps/v1`` and
``v1`` (selector as a string), the group's own ``Scale`` under ``apps/v1beta1``, ``apps/v1beta2``
and ``extensions/v1beta1`` (selector as a map plus ``targetSelector``). Subresources skip the
Initializers checks (§3).
"""

from __future__ import annotations

import copy

from . import errors, patch as patchlib
from .transport import read_body, send_json
from .errors import APIError, FieldError


def selector_string(sel) -> str:
    """metav1.LabelSelectorAsSelector(sel).String() (requirements sorted by key)."""
    if not isinstance(sel, dict):
        return ""
    reqs = []
    for k, v in (sel.get("matchLabels") or {}).items():
        reqs.append((k, f"{k}={v}"))
    for r in sel.get("matchExpressions") or []:
        k, op, vals = r.get("key", ""), r.get("operator", ""), sorted(r.get("values") or [])
        text = {
            "In": f"{k} in ({','.join(vals)})",
            "NotIn": f"{k} notin ({','.join(vals)})",
            "Exists": k,
            "DoesNotExist": f"!{k}",
        }.get(op, k)
        reqs.append((k, text))
    return ",".join(t for _, t in sorted(reqs))


def _selector(rt, obj: dict):
    sel = (obj.get("spec") or {}).get("selector")
    if rt.storage == "replicationcontrollers":
        return {"matchLabels": dict(sel or {})}
    return sel


def scale_of(rt, obj: dict) -> dict:
    group, version, _ = rt.scale
    meta = obj["metadata"]
    prefix = "/api/v1" if not rt.group else f"/apis/{rt.group}/{rt.version}"
    ns = meta.get("namespace", "")
    out_meta = {
        "name": meta["name"],
        "namespace": ns,
        "selfLink": f"{prefix}/namespaces/{ns}/{rt.name}/{meta['name']}/scale",
        "uid": meta.get("uid"),
        "resourceVersion": meta.get("resourceVersion"),
        "creationTimestamp": meta.get("creationTimestamp"),
    }
    spec = {}
    replicas = (obj.get("spec") or {}).get("replicas")
    if replicas:
        spec["replicas"] = replicas
    sel = _selector(rt, obj)
    status = {"replicas": (obj.get("status") or {}).get("replicas", 0)}
    if group == "autoscaling":
        text = selector_string(sel)
        if text:
            status["selector"] = text
    else:
        if isinstance(sel, dict) and sel.get("matchLabels"):
            status["selector"] = dict(sel["matchLabels"])
        text = selector_string(sel)
        if text:
            status["targetSelector"] = text
    return {"kind": "Scale", "apiVersion": f"{group}/{version}", "metadata": out_meta, "spec": spec, "status": status}


def handle(api, h, req, user, exempt) -> None:
    rt = req.rt
    if req.verb == "get":
        obj = api.store.get(rt.storage, req.namespace, req.name)
        if obj is None:
            raise errors.not_found(rt, req.name)
        return send_json(h, 200, scale_of(rt, obj))
    if req.verb not in ("update", "patch"):
        raise errors.PlainError(405, "405: Method Not Allowed")
    body = read_body(h)
    ctype = (h.headers.get("Content-Type") or "").split(";")[0].strip()
    with api.store.lock:
        cur = api.store.get(rt.storage, req.namespace, req.name)
        if cur is None:
            raise errors.not_found(rt, req.name)
        base = scale_of(rt, cur)
        if req.verb == "patch":
            try:
                new_scale = patchlib.apply_patch(ctype, base, body)
            except patchlib.UnsupportedPatchType as e:
                raise APIError(415, "UnsupportedMediaType", str(e)) from None
            except patchlib.PatchError as e:
                raise APIError(422, "Invalid", str(e)) from None
        else:
            new_scale = body
        if not isinstance(new_scale, dict):
            raise errors.bad_request("the object provided is unrecognized: expected a JSON object")
        smeta = new_scale.get("metadata") if isinstance(new_scale.get("metadata"), dict) else {}
        if smeta.get("name") and smeta["name"] != req.name:
            raise errors.bad_request(f"the name of the object ({smeta['name']}) does not match the name on the URL ({req.name})")
        rv = smeta.get("resourceVersion")
        if rv and rv != cur["metadata"]["resourceVersion"]:
            raise errors.conflict(rt, req.name)
        if not exempt and req.verb == "update" and api.faults.roll("conflict"):
            raise errors.conflict(rt, req.name)
        replicas = (new_scale.get("spec") or {}).get("replicas", 0) if isinstance(new_scale.get("spec"), dict) else 0
        if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
            gk = type("GK", (), {"kind": "Scale", "group": rt.scale[0]})
            raise errors.invalid(
                gk, req.name, [FieldError("Invalid", "spec.replicas", "must be greater than or equal to 0", replicas)]
            )
        new = copy.deepcopy(cur)
        new.setdefault("spec", {})["replicas"] = replicas
        if rt.tracks_generation and new["spec"] != cur.get("spec"):
            new["metadata"]["generation"] = cur["metadata"].get("generation", 1) + 1
        stored, _ = api.store.update(rt.storage, new)
        api.write_count += 1
    send_json(h, 200, scale_of(rt, stored))
