"""Server-side ``Table`` output (``kubectl get``) as a 1.13 server prints it.

kubectl asks for ``Accept: application/json;as=Table;v=v1;g=meta.k8s.io,
application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json``. A 1.13 server knows
``meta.k8s.io/v1beta1`` Tables (v1 came in 1.15) and answers with the columns of its internal
printers (pkg/printers/internalversion, 1.13); each row carries the object's metadata as a
``PartialObjectMetadata`` (``includeObject=Metadata``, the default), or the whole object with
``includeObject=Object``. A 1.7 server had no server-side printing: kubectl then shows NAME and AGE.
"""

from __future__ import annotations

import datetime

from . import protobuf

NAME = {
    "name": "Name",
    "type": "string",
    "format": "name",
    "priority": 0,
    "description": "Name must be unique within a namespace. Is required when creating resources, although "
    "some resources may allow a client to request the generation of an appropriate name "
    "automatically. Name is primarily intended for creation idempotence and configuration "
    "definition. Cannot be updated. More info: http://kubernetes.io/docs/user-guide/identifiers#names",
}


def _col(name, type_="string", priority=0, description=""):
    return {"name": name, "type": type_, "format": "", "priority": priority, "description": description}


def age(ts: str | None, now: datetime.datetime | None = None) -> str:
    """duration.HumanDuration of the object's age, as the printers show it (``<unknown>`` without one)."""
    if not ts:
        return "<unknown>"
    try:
        t = datetime.datetime.strptime(ts, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)
    except ValueError:
        return "<unknown>"
    s = int(((now or datetime.datetime.now(datetime.timezone.utc)) - t).total_seconds())
    if s < 0:
        return "<invalid>"
    if s < 60 * 2:
        return f"{s}s"
    m = s // 60
    if m < 10:
        return f"{m}m{s % 60}s" if s % 60 else f"{m}m"
    if m < 60 * 3:
        return f"{m}m"
    h = m // 60
    if h < 8:
        return f"{h}h{m % 60}m" if m % 60 else f"{h}h"
    if h < 48:
        return f"{h}h"
    d = h // 24
    if h < 24 * 8:
        return f"{d}d{h % 24}h" if h % 24 else f"{d}d"
    if d < 365 * 2:
        return f"{d}d"
    return f"{d // 365}y{d % 365}d" if d < 365 * 8 else f"{d // 365}y"


def _containers(obj):
    spec = ((obj.get("spec") or {}).get("template") or {}).get("spec") or {}
    cs = spec.get("containers") or []
    return ",".join(c.get("name", "") for c in cs), ",".join(c.get("image", "") for c in cs)


def _selector(obj):
    sel = (obj.get("spec") or {}).get("selector") or {}
    parts = [f"{k}={v}" for k, v in sorted((sel.get("matchLabels") or {}).items())]
    for e in sel.get("matchExpressions") or []:
        op, vals = e.get("operator"), ",".join(e.get("values") or [])
        parts.append(
            {
                "In": f"{e.get('key')} in ({vals})",
                "NotIn": f"{e.get('key')} notin ({vals})",
                "Exists": e.get("key"),
                "DoesNotExist": f"!{e.get('key')}",
            }.get(op, "")
        )
    return ",".join(parts) or "<none>"


def _pod_row(o):
    st = o.get("status") or {}
    cs = st.get("containerStatuses") or []
    total = len((o.get("spec") or {}).get("containers") or [])
    ready = sum(1 for c in cs if c.get("ready"))
    restarts = sum(c.get("restartCount", 0) for c in cs)
    reason = st.get("reason") or st.get("phase") or "Unknown"
    for i, c in enumerate(st.get("initContainerStatuses") or []):
        state = c.get("state") or {}
        if (state.get("terminated") or {}).get("exitCode") == 0:
            continue
        if "waiting" in state and state["waiting"].get("reason") not in (None, "", "PodInitializing"):
            reason = "Init:" + state["waiting"]["reason"]
        else:
            reason = f"Init:{i}/{len((o.get('spec') or {}).get('initContainers') or [])}"
        break
    else:
        for c in reversed(cs):
            state = c.get("state") or {}
            if (state.get("waiting") or {}).get("reason"):
                reason = state["waiting"]["reason"]
            elif (state.get("terminated") or {}).get("reason"):
                reason = state["terminated"]["reason"]
    if (o.get("metadata") or {}).get("deletionTimestamp"):
        reason = "Terminating"
    return [f"{ready}/{total}", reason, restarts], [
        st.get("podIP") or "<none>",
        (o.get("spec") or {}).get("nodeName") or "<none>",
        "<none>",
    ]


def _deploy_row(o):
    spec, st = o.get("spec") or {}, o.get("status") or {}
    cont, img = _containers(o)
    return (
        [f"{st.get('readyReplicas', 0)}/{spec.get('replicas', 0)}", st.get("updatedReplicas", 0), st.get("availableReplicas", 0)],
        [cont, img, _selector(o)],
    )


def _ds_row(o):
    spec, st = o.get("spec") or {}, o.get("status") or {}
    ns = (((spec.get("template") or {}).get("spec") or {}).get("nodeSelector")) or {}
    cont, img = _containers(o)
    return (
        [
            st.get("desiredNumberScheduled", 0),
            st.get("currentNumberScheduled", 0),
            st.get("numberReady", 0),
            st.get("updatedNumberScheduled", 0),
            st.get("numberAvailable", 0),
            ",".join(f"{k}={v}" for k, v in sorted(ns.items())) or "<none>",
        ],
        [cont, img, _selector(o)],
    )


def _svc_row(o):
    spec = o.get("spec") or {}
    ports = ",".join(
        f"{p.get('port')}{'/' + p.get('protocol', 'TCP')}"
        if not p.get("nodePort")
        else f"{p.get('port')}:{p.get('nodePort')}/{p.get('protocol', 'TCP')}"
        for p in spec.get("ports") or []
    )
    sel = ",".join(f"{k}={v}" for k, v in sorted((spec.get("selector") or {}).items())) or "<none>"
    ext = ",".join(spec.get("externalIPs") or []) or "<none>"
    return [spec.get("type", "ClusterIP"), spec.get("clusterIP") or "<none>", ext, ports or "<none>"], [sel]


# resource storage -> (columns before AGE, wide columns, row function -> (cells, wide cells))
PRINTERS = {
    "pods": (
        [_col("Ready"), _col("Status"), _col("Restarts", "integer")],
        [_col("IP", priority=1), _col("Node", priority=1), _col("Nominated Node", priority=1)],
        _pod_row,
    ),
    "deployments": (
        [_col("Ready"), _col("Up-to-date", "integer"), _col("Available", "integer")],
        [_col("Containers", priority=1), _col("Images", priority=1), _col("Selector", priority=1)],
        _deploy_row,
    ),
    "daemonsets": (
        [
            _col("Desired", "integer"),
            _col("Current", "integer"),
            _col("Ready", "integer"),
            _col("Up-to-date", "integer"),
            _col("Available", "integer"),
            _col("Node Selector"),
        ],
        [_col("Containers", priority=1), _col("Images", priority=1), _col("Selector", priority=1)],
        _ds_row,
    ),
    "services": (
        [_col("Type"), _col("Cluster-IP"), _col("External-IP"), _col("Port(s)")],
        [_col("Selector", priority=1)],
        _svc_row,
    ),
    "configmaps": ([_col("Data", "integer")], [], lambda o: ([len(o.get("data") or {}) + len(o.get("binaryData") or {})], [])),
    "secrets": ([_col("Type"), _col("Data", "integer")], [], lambda o: ([o.get("type", ""), len(o.get("data") or {})], [])),
    "serviceaccounts": ([_col("Secrets", "integer")], [], lambda o: ([len(o.get("secrets") or [])], [])),
    "namespaces": ([_col("Status")], [], lambda o: ([(o.get("status") or {}).get("phase", "")], [])),
    "nodes": (
        [
            _col("Status"),
            _col("Roles"),
        ],
        [],
        lambda o: (
            [
                "Ready"
                if any(
                    c.get("type") == "Ready" and c.get("status") == "True"
                    for c in (o.get("status") or {}).get("conditions") or []
                )
                else "NotReady",
                "<none>",
            ],
            [],
        ),
    ),
    "endpoints": (
        [_col("Endpoints")],
        [],
        lambda o: (
            [
                ",".join(
                    f"{a.get('ip')}:{p.get('port')}"
                    for s in o.get("subsets") or []
                    for a in s.get("addresses") or []
                    for p in s.get("ports") or []
                )
                or "<none>"
            ],
            [],
        ),
    ),
}


def wanted(accept: str | None, k8s_version: str) -> bool:
    """True when the client's first acceptable answer is a Table this server version knows."""
    if k8s_version == "1.7":
        return False
    for _media, params in protobuf.accepted(accept):
        if params.get("as") == "Table":
            if params.get("g") == "meta.k8s.io" and params.get("v") == "v1beta1":
                return True
            continue
        if params.get("as"):
            continue
        return False
    return False


def _partial(rt, obj):
    return {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1beta1", "metadata": obj.get("metadata") or {}}


def table(rt, objs: list[dict], list_meta: dict, include: str = "Metadata") -> dict:
    """A meta.k8s.io/v1beta1 Table of ``objs`` (viewed objects, with kind/apiVersion)."""
    before, wide, row_fn = PRINTERS.get(rt.storage, ([], [], lambda o: ([], [])))
    cols = (
        [NAME]
        + before
        + [_col("Age", description="CreationTimestamp is a timestamp representing the server time when this object was created.")]
        + wide
    )
    rows = []
    for o in objs:
        cells, extra = row_fn(o)
        meta = o.get("metadata") or {}
        row = {"cells": [meta.get("name", "")] + list(cells) + [age(meta.get("creationTimestamp"))] + list(extra)}
        if include == "Object":
            row["object"] = o
        elif include != "None":
            row["object"] = _partial(rt, o)
        rows.append(row)
    return {"kind": "Table", "apiVersion": "meta.k8s.io/v1beta1", "metadata": list_meta, "columnDefinitions": cols, "rows": rows}
