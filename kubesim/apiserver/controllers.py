"""The built-in controllers the emulator runs synchronously: bootstrap objects (cluster-admin,
the default namespaces), the ServiceAccount controller (a ``default`` SA per namespace), the
token controller (a token Secret per SA) and the cleanup after namespace and SA deletion.
"""

from __future__ import annotations

import copy

from .resources import BY_GVR, RESOURCES, ResourceType

_TOKEN_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # k8s utilrand alphanums


class ControllersMixin:
    """Objects the server creates and deletes on its own."""

    def _bootstrap(self) -> None:
        cr = BY_GVR[("rbac.authorization.k8s.io", "v1beta1", "clusterroles")]
        crb = BY_GVR[("rbac.authorization.k8s.io", "v1beta1", "clusterrolebindings")]
        self._create_internal(
            cr,
            {
                "metadata": {"name": "cluster-admin", "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}},
                "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}, {"nonResourceURLs": ["*"], "verbs": ["*"]}],
            },
        )
        self._create_internal(
            crb,
            {
                "metadata": {"name": "cluster-admin", "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
                "subjects": [{"kind": "Group", "name": "system:masters", "apiGroup": "rbac.authorization.k8s.io"}],
            },
        )
        ns = BY_GVR[("", "v1", "namespaces")]
        for name in ("default", "kube-system", "kube-public"):
            self._create_internal(ns, {"metadata": {"name": name}})

    def _random_suffix(self, n: int = 5) -> str:
        with self._name_lock:
            return "".join(self._name_rng.choice(_TOKEN_ALPHABET) for _ in range(n))

    def _after_create(self, rt: ResourceType, obj: dict) -> None:
        """Controllers that react to creations: the ServiceAccount controller (a ``default`` SA in
        every new namespace) and the token controller (a token Secret for every new SA)."""
        if rt.storage == "namespaces":
            self._create_internal(
                BY_GVR[("", "v1", "serviceaccounts")], {"metadata": {"name": "default", "namespace": obj["metadata"]["name"]}}
            )
        elif rt.storage == "serviceaccounts" and not obj.get("secrets"):
            self._issue_token_secret(obj)

    def _after_delete(self, rt: ResourceType, obj: dict) -> None:
        if rt.storage == "namespaces":
            ns = obj["metadata"]["name"]
            with self.store.lock:
                for r in {r.storage for r in RESOURCES if r.namespaced}:
                    items, _ = self.store.list(r, ns)
                    for item in items:
                        self.store.delete(r, ns, item["metadata"]["name"])
        elif rt.storage == "serviceaccounts":
            ns, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
            with self.store.lock:
                items, _ = self.store.list("secrets", ns)
                for sec in items:
                    ann = sec["metadata"].get("annotations") or {}
                    if (
                        sec.get("type") == "kubernetes.io/service-account-token"
                        and ann.get("kubernetes.io/service-account.name") == name
                    ):
                        self.store.delete("secrets", ns, sec["metadata"]["name"])

    def _create_internal(self, rt: ResourceType, obj: dict) -> dict:
        obj = copy.deepcopy(obj)
        obj.setdefault("metadata", {})
        self._fill_new_meta(rt, obj)
        rt.apply_defaults(obj, self.k8s_version)
        stored = self.store.create(rt.storage, obj)
        self._after_create(rt, stored)
        return stored
