"""The ``status`` a real server returns for a freshly created object.

A versioned type's ``status`` is a struct, not a pointer, so the API server always encodes it: a new
Deployment comes back with ``"status": {}``, a Service with ``{"loadBalancer": {}}``, a DaemonSet with
its four required counters at 0 (they have no ``omitempty``). Clients that read ``status`` fields
(``kubectl rollout status``, Helm's readiness checks, printers) see these defaults until a controller
writes the status subresource. Pods and Namespaces get their phase from their own defaulting.
"""
from __future__ import annotations

STATUS = {
    "deployments": lambda: {},
    "daemonsets": lambda: {"currentNumberScheduled": 0, "numberMisscheduled": 0, "desiredNumberScheduled": 0,
                           "numberReady": 0},
    "services": lambda: {"loadBalancer": {}},
    "nodes": lambda: {"daemonEndpoints": {"kubeletEndpoint": {"Port": 0}}, "nodeInfo": {
        "machineID": "", "systemUUID": "", "bootID": "", "kernelVersion": "", "osImage": "",
        "containerRuntimeVersion": "", "kubeletVersion": "", "kubeProxyVersion": "", "operatingSystem": "",
        "architecture": ""}},
}


def apply(rt, obj: dict) -> None:
    """Fill the create-time status of ``obj`` (kept when the client sent one, as the status subresource
    owns it afterwards)."""
    make = STATUS.get(rt.storage)
    if make is None:
        return
    status = obj.get("status")
    if not isinstance(status, dict):
        obj["status"] = make()
        return
    for k, v in make().items():
        status.setdefault(k, v)
