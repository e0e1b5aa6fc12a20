"""``GET /api/v1/namespaces/{ns}/pods/{name}/log``: container logs, as ``kubectl logs`` reads them.

A real API server proxies this to the pod's kubelet; kubesim asks the netns kubelet's log files
through ``APIServer.log_source`` (set by ``SimCluster``: ``(pod, container) -> path``). Query
parameters as in 1.7/1.13: ``container``, ``tailLines``, ``limitBytes``, ``follow``, ``previous``.
Errors are the kubelet's, relayed as 400 Status: no container name for a multi-container pod, an
unknown container, a container that has not started, no previous instance.

Limitation: the netns kubelet appends a restarted container's output to the same file, so
``previous=true`` (allowed once the container has restarted) returns the whole file.
"""

from __future__ import annotations

import os
import time

from . import errors
from .errors import APIError
from .transport import peer_closed

FOLLOW_POLL = 0.2


def _bad(message: str) -> APIError:
    return APIError(400, "BadRequest", message)


def _container(pod: dict, name: str | None) -> str:
    spec = pod.get("spec") or {}
    names = [c.get("name") for c in spec.get("containers") or []]
    inits = [c.get("name") for c in spec.get("initContainers") or []]
    pod_name = pod["metadata"]["name"]
    if not name:
        if len(names) == 1:
            return names[0]
        raise _bad(
            f"a container name must be specified for pod {pod_name}, choose one of: "
            f"[{' '.join(names)}]" + (f" or one of the init containers: [{' '.join(inits)}]" if inits else "")
        )
    if name not in names + inits:
        raise _bad(f"container {name} is not valid for pod {pod_name}")
    return name


def _int_param(query: dict, key: str) -> int | None:
    v = query.get(key)
    if v in (None, ""):
        return None
    try:
        n = int(v)
    except ValueError:
        raise _bad(f"{key}: Invalid value: {v!r}: must be an integer") from None
    if n < 0 or (key == "limitBytes" and n == 0):
        raise _bad(
            f'PodLogOptions "" is invalid: {key}: Invalid value: {n}: must be greater than '
            f"{'0' if key == 'limitBytes' else 'or equal to 0'}"
        )
    return n


def serve(api, h, req) -> None:
    """Answer a pods/log GET on handler ``h`` (text/plain; chunked while following)."""
    pod = api.store.get("pods", req.namespace, req.name)
    if pod is None:
        raise errors.not_found(req.rt, req.name)
    q = req.query
    container = _container(pod, q.get("container"))
    tail = _int_param(q, "tailLines")
    limit = _int_param(q, "limitBytes")
    follow = q.get("follow", "").lower() in ("1", "true")
    statuses = {
        c.get("name"): c
        for c in ((pod.get("status") or {}).get("containerStatuses") or [])
        + ((pod.get("status") or {}).get("initContainerStatuses") or [])
    }
    st = statuses.get(container) or {}
    if q.get("previous", "").lower() in ("1", "true") and not st.get("restartCount"):
        raise _bad(f'previous terminated container "{container}" in pod "{req.name}" not found')
    path = api.log_source(pod, container) if api.log_source else None
    if path is None or not os.path.exists(path):
        reason = ((st.get("state") or {}).get("waiting") or {}).get("reason") or "ContainerCreating"
        raise _bad(f'container "{container}" in pod "{req.name}" is waiting to start: {reason}')
    with open(path, "rb") as f:
        data = f.read()
    offset = len(data)  # where following resumes: what was read, not the size later (appends in between)
    if tail is not None:
        lines = data.splitlines(keepends=True)
        data = b"".join(lines[-tail:]) if tail else b""
    if limit is not None:
        data = data[:limit]
    h.kubesim_code = 200
    h.send_response(200)
    h.send_header("Content-Type", "text/plain")
    if not follow:
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)
        return
    h.send_header("Transfer-Encoding", "chunked")
    h.end_headers()
    sent = len(data)

    def chunk(b: bytes) -> None:
        h.wfile.write(b"%x\r\n%s\r\n" % (len(b), b))
        h.wfile.flush()

    try:
        if data:
            chunk(data)
        uid = pod["metadata"].get("uid")
        while not api._stopping.is_set():
            if limit is not None and sent >= limit:
                break
            cur = api.store.get("pods", req.namespace, req.name)
            if cur is None or cur["metadata"].get("uid") != uid:
                break  # the pod is gone: a real kubelet ends the stream too
            size = os.path.getsize(path) if os.path.exists(path) else offset
            if size > offset:
                with open(path, "rb") as f:
                    f.seek(offset)
                    more = f.read(size - offset)
                offset = size
                if limit is not None:
                    more = more[: limit - sent]
                sent += len(more)
                chunk(more)
            else:
                if peer_closed(h.request):
                    break
                time.sleep(FOLLOW_POLL)
    except OSError:
        pass
    finally:
        try:
            h.wfile.write(b"0\r\n\r\n")
        except OSError:
            pass
        h.close_connection = True
