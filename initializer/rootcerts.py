"""The proxy's CA bundle in every namespace where we inject: copies of the source ConfigMap.

An injected pod mounts the bundle from a ``configMap`` volume, and a pod can only mount ConfigMaps of
its own namespace. So before the initializer releases a deployment in namespace N it makes sure N
holds a copy of the source ConfigMap (the chart's ``<release>-tproxy-root-certs`` in the release
namespace), under the same name, with the same data (the way Istio keeps ``istio-ca-root-cert`` in
every namespace). When the source changes, the controller updates every copy.

Copies are found by name (GET), never by listing ConfigMaps: a list or watch of ConfigMaps would
expose every ConfigMap's data in the cluster. A copy carries ``COPY_OF_ANNOTATION`` naming its source;
a same-named ConfigMap without it (or copied from another source) is not ours and is never
overwritten: ``CopyRefused`` says so, and the deployment fails with that message.

Only the bundle (public certificates) is copied; the proxy's private key stays in its Secret, which
the initializer cannot read.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Optional

from controllerkit import errors
from controllerkit.kube import Client, resource_path

COPY_OF_ANNOTATION = "tproxy.initializer.kubernetes.io/root-certs-copy-of"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "tproxy-initializer"
MAX_ATTEMPTS = 4  # 409s from other replicas racing on the same copy, then the caller's retry takes over

CREATED, UPDATED, UNCHANGED = "created", "updated", "unchanged"


class CopyRefused(Exception):
    """The bundle cannot be provided in a namespace (forbidden, or the name is taken by a ConfigMap that
    is not our copy). Not retried: the message says what to fix. ``code``/``reason`` are those of the
    Status the deployment fails with."""

    def __init__(self, message: str, code: int, reason: str):
        super().__init__(message)
        self.code = code
        self.reason = reason


class RootCerts:
    """The source bundle as last read: its namespace/name and the data every copy must hold."""

    def __init__(self, namespace: str, name: str, data: dict[str, str], binary_data: dict[str, str]):
        self.namespace = namespace
        self.name = name
        self.data = data
        self.binary_data = binary_data

    @classmethod
    def from_configmap(cls, cm: dict) -> "RootCerts":
        meta = cm.get("metadata") or {}
        data = dict(cm.get("data") or {})
        binary = dict(cm.get("binaryData") or {})
        if not data and not binary:
            raise ValueError(f"ConfigMap {meta.get('namespace')}/{meta.get('name')} has no data")
        return cls(meta.get("namespace", ""), meta.get("name", ""), data, binary)

    @property
    def source(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def fingerprint(self) -> str:
        blob = json.dumps([self.data, self.binary_data], sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    def is_our_copy(self, cm: dict) -> bool:
        return ((cm.get("metadata") or {}).get("annotations") or {}).get(COPY_OF_ANNOTATION) == self.source

    def up_to_date(self, cm: dict) -> bool:
        return (cm.get("data") or {}) == self.data and (cm.get("binaryData") or {}) == self.binary_data

    def copy_for(self, namespace: str, existing: Optional[dict] = None) -> dict:
        """The copy to write in ``namespace`` (built on ``existing`` to keep its metadata and resourceVersion)."""
        meta: dict[str, Any] = dict((existing or {}).get("metadata") or {"name": self.name, "namespace": namespace})
        meta["labels"] = {**(meta.get("labels") or {}), MANAGED_BY_LABEL: MANAGED_BY}
        meta["annotations"] = {**(meta.get("annotations") or {}), COPY_OF_ANNOTATION: self.source}
        obj: dict[str, Any] = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": dict(self.data)}
        if self.binary_data:
            obj["binaryData"] = dict(self.binary_data)
        return obj


def _forbidden(certs: RootCerts, namespace: str, verb: str, exc: errors.ApiError) -> CopyRefused:
    return CopyRefused(
        f"cannot provide the proxy CA bundle in namespace {namespace}: {verb} of ConfigMap "
        f"{namespace}/{certs.name} is forbidden ({exc.message}); the initializer's service account needs "
        f"get, create and update on configmaps named {certs.name} in {namespace} (the chart's ClusterRole "
        f"grants them in every namespace)",
        403,
        "Forbidden",
    )


def ensure_copy(client: Client, certs: RootCerts, namespace: str) -> str:
    """Make ConfigMap ``namespace/<certs.name>`` our copy holding ``certs``' data.

    Returns ``created``, ``updated`` or ``unchanged``. Raises ``CopyRefused`` (forbidden, or the name is
    taken by a ConfigMap that is not our copy) and ``ApiError`` for anything worth retrying (a 409 that
    keeps coming back, a server error).
    """
    path = resource_path("v1", "configmaps", namespace, certs.name)
    collection = resource_path("v1", "configmaps", namespace)
    for _ in range(MAX_ATTEMPTS):
        verb = "get"
        try:
            try:
                current = client.get(path)
            except errors.NotFound:
                verb = "create"
                client.create(collection, certs.copy_for(namespace))
                return CREATED
            if not certs.is_our_copy(current):
                owner = ((current.get("metadata") or {}).get("annotations") or {}).get(COPY_OF_ANNOTATION)
                why = f"it is a copy of {owner}" if owner else f"it has no {COPY_OF_ANNOTATION} annotation"
                raise CopyRefused(
                    f"cannot provide the proxy CA bundle in namespace {namespace}: ConfigMap "
                    f"{namespace}/{certs.name} exists and is not a copy of {certs.source} ({why}); the "
                    f"initializer does not overwrite it: delete or rename it",
                    409,
                    "AlreadyExists",
                )
            if certs.up_to_date(current):
                return UNCHANGED
            verb = "update"
            client.replace(path, certs.copy_for(namespace, current))
            return UPDATED
        except errors.Forbidden as exc:
            raise _forbidden(certs, namespace, verb, exc) from None
        except (errors.AlreadyExists, errors.Conflict):
            continue  # another replica wrote it first: look again
    raise errors.Conflict(
        409, "Conflict", f"ConfigMap {namespace}/{certs.name}: still conflicting after {MAX_ATTEMPTS} attempts; will retry"
    )
