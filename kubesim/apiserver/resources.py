"""The resources kubesim serves: one registry entry per (group, version, resource).

Several entries may share one *storage* (``apps/v1beta1`` and ``extensions/v1beta1`` deployments,
``rbac/v1beta1`` and ``rbac/v1``): one stored object, several views. Defaulting happens on input
with the request version's 1.7 defaults, exactly like decoding into a versioned type did; the view
only sets ``apiVersion``/``kind`` (and, in 1.7, mirrors init containers into annotations).
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass
from typing import Callable

INIT_BETA = "pod.beta.kubernetes.io/init-containers"
INIT_ALPHA = "pod.alpha.kubernetes.io/init-containers"

DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def validate_name(kind_of_name: str, name: str) -> str | None:
    """Return the 1.7 validation message for ``name``, or None when it is valid."""
    if kind_of_name == "label":
        if len(name) > 63:
            return "must be no more than 63 characters"
        if not DNS1123_LABEL.match(name):
            return (
                "a DNS-1123 label must consist of lower case alphanumeric characters or '-', and must "
                "start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex "
                "used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
            )
    elif kind_of_name == "dns1035":
        if len(name) > 63:
            return "must be no more than 63 characters"
        if not DNS1035_LABEL.match(name):
            return (
                "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with "
                "an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or "
                "'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')"
            )
    elif kind_of_name == "path":  # RBAC objects: any name that is a valid path segment
        if name in (".", "..") or "/" in name or "%" in name:
            return "may not contain '/' or '%' and may not be '.' or '..'"
    else:
        if len(name) > 253:
            return "must be no more than 253 characters"
        if not DNS1123_SUBDOMAIN.match(name):
            return (
                "a DNS-1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', "
                "and must start and end with an alphanumeric character (e.g. 'example.com', regex used "
                "for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
            )
    return None


# ---- defaults (1.7, k8s.io/client-go release-4.0 defaults.go) -------------------------------


def _default_container(c: dict) -> None:
    c.setdefault("terminationMessagePath", "/dev/termination-log")
    c.setdefault("terminationMessagePolicy", "File")
    if "imagePullPolicy" not in c:
        image = c.get("image", "")
        tag = image.rsplit("/", 1)[-1]
        c["imagePullPolicy"] = "Always" if (":" not in tag or tag.endswith(":latest")) and "@" not in image else "IfNotPresent"
    c.setdefault("resources", {})
    for p in c.get("ports") or []:
        if isinstance(p, dict):
            p.setdefault("protocol", "TCP")


def default_pod_spec(spec: dict) -> None:
    if not isinstance(spec, dict):
        return
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("securityContext", {})
    spec.setdefault("schedulerName", "default-scheduler")
    for key in ("containers", "initContainers"):
        for c in spec.get(key) or []:
            if isinstance(c, dict):
                _default_container(c)
    for v in spec.get("volumes") or []:
        if isinstance(v, dict):
            if "secret" in v and isinstance(v["secret"], dict):
                v["secret"].setdefault("defaultMode", 420)
            if "configMap" in v and isinstance(v["configMap"], dict):
                v["configMap"].setdefault("defaultMode", 420)
            if len([k for k in v if k != "name"]) == 0:
                v["emptyDir"] = {}


def _default_template_selector(spec: dict) -> None:
    labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
    if not spec.get("selector") and labels:
        spec["selector"] = {"matchLabels": dict(labels)}


def _default_template(spec: dict) -> None:
    tmpl = spec.get("template")
    if isinstance(tmpl, dict):
        default_pod_spec(tmpl.setdefault("spec", {}))


def _default_rolling_update(spec: dict, max_unavailable, max_surge) -> None:
    """A Deployment's ``strategy``: RollingUpdate unless set, with these numbers unless set."""
    strat = spec.setdefault("strategy", {})
    strat.setdefault("type", "RollingUpdate")
    if strat["type"] == "RollingUpdate":
        ru = strat.setdefault("rollingUpdate", {})
        ru.setdefault("maxUnavailable", max_unavailable)
        ru.setdefault("maxSurge", max_surge)


def _default_deployment(obj: dict, *, max_unavailable, max_surge, apps_only: dict) -> None:
    """The 1.7 Deployment defaults shared by both groups (docs/initializers-1.7.md §7); they differ only in the rolling-update
    numbers and in fields that only apps/v1beta1 defaults."""
    spec = obj.setdefault("spec", {})
    _default_template_selector(spec)
    if not obj["metadata"].get("labels"):
        labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels")
        if labels:
            obj["metadata"]["labels"] = dict(labels)
    spec.setdefault("replicas", 1)
    _default_rolling_update(spec, max_unavailable, max_surge)
    for key, value in apps_only.items():
        spec.setdefault(key, value)
    _default_template(spec)


def default_deployment_apps(obj: dict) -> None:
    _default_deployment(
        obj, max_unavailable="25%", max_surge="25%", apps_only={"revisionHistoryLimit": 2, "progressDeadlineSeconds": 600}
    )


def default_deployment_extensions(obj: dict) -> None:
    _default_deployment(obj, max_unavailable=1, max_surge=1, apps_only={})


def default_daemonset(obj: dict) -> None:
    spec = obj.setdefault("spec", {})
    _default_template_selector(spec)
    if not obj["metadata"].get("labels"):
        labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels")
        if labels:
            obj["metadata"]["labels"] = dict(labels)
    us = spec.setdefault("updateStrategy", {})
    us.setdefault("type", "OnDelete")
    if us["type"] == "RollingUpdate":
        us.setdefault("rollingUpdate", {}).setdefault("maxUnavailable", 1)
    spec.setdefault("templateGeneration", 1)
    spec.setdefault("revisionHistoryLimit", 10)
    _default_template(spec)


def default_pod(obj: dict) -> None:
    default_pod_spec(obj.setdefault("spec", {}))
    obj.setdefault("status", {}).setdefault("phase", "Pending")


def default_service(obj: dict) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("type", "ClusterIP")
    spec.setdefault("sessionAffinity", "None")
    for p in spec.get("ports") or []:
        if isinstance(p, dict):
            p.setdefault("protocol", "TCP")
            if "port" in p:
                p.setdefault("targetPort", p["port"])


def default_namespace(obj: dict) -> None:
    obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
    obj.setdefault("status", {}).setdefault("phase", "Active")


def default_secret(obj: dict) -> None:
    obj.setdefault("type", "Opaque")


# ---- 1.7 init-container annotation mirroring (docs/initializers-1.7.md §5, §7) ---------------


def pod_like_input(meta_and_spec: dict) -> str | None:
    """1.7 input conversion of a PodSpec holder (pod or pod template): the beta (else alpha)
    init-containers annotation, when present, *overrides* ``spec.initContainers``; both
    annotations are then dropped. Returns an error message if the annotation is not JSON."""
    meta = meta_and_spec.get("metadata") or {}
    ann = meta.get("annotations") or {}
    for key in (INIT_BETA, INIT_ALPHA):
        if key in ann:
            try:
                values = json.loads(ann[key])
            except ValueError as e:
                return f"metadata.annotations[{key}]: Invalid value: {ann[key]!r}: {e}"
            spec = meta_and_spec.setdefault("spec", {})
            if values:
                spec["initContainers"] = values
            else:
                spec.pop("initContainers", None)
            break
    if INIT_BETA in ann or INIT_ALPHA in ann:
        ann.pop(INIT_BETA, None)
        ann.pop(INIT_ALPHA, None)
        if not ann:
            meta.pop("annotations", None)
    return None


def pod_like_output(meta_and_spec: dict) -> None:
    """1.7 output conversion: mirror ``spec.initContainers`` into both annotations."""
    spec = meta_and_spec.get("spec") or {}
    inits = spec.get("initContainers")
    if inits:
        meta = meta_and_spec.setdefault("metadata", {})
        ann = meta.setdefault("annotations", {})
        value = json.dumps(inits, separators=(",", ":"))
        ann[INIT_BETA] = value
        ann[INIT_ALPHA] = value


# ---- the registry ---------------------------------------------------------------------------


@dataclass
class ResourceType:
    group: str
    version: str
    name: str  # plural resource name as in the URL
    kind: str
    namespaced: bool
    storage: str  # storage key shared by every view of the same objects
    name_rule: str = "subdomain"
    default: Callable[[dict], None] | None = None
    has_status: bool = False  # a status subresource; main-resource updates keep the old status
    tracks_generation: bool = False
    pod_like: str | None = None  # "pod" or "template": where the 1.7 init-container mirroring applies
    field_selectors: tuple[str, ...] = ("metadata.name", "metadata.namespace")
    short_names: tuple[str, ...] = ()
    verbs: tuple[str, ...] = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")
    extra_subresources: tuple[str, ...] = ()
    served: tuple[str, ...] = ("1.7", "1.13")  # the k8s versions whose API server serves this GVR
    categories: tuple[str, ...] = ()
    no_categories_in: tuple[str, ...] = ()  # k8s versions whose storage here says WithCategories(nil)
    default_113: Callable[[dict], None] | None = None  # 1.13's defaults when they differ from 1.7's
    scale: tuple[str, str, str] | None = None  # (group, version, kind) of the ``scale`` subresource's body
    initial_status: dict | None = None  # what the create strategy resets ``status`` to
    # discovery-only subresources the real server lists next to this resource: (name, kind, verbs, gv)
    listed_subresources: tuple = ()
    convert: object = None  # workloads.Conversion: per-version input/output differences, or None

    def apply_defaults(self, obj: dict, k8s_version: str) -> None:
        fn = self.default_113 if (k8s_version != "1.7" and self.default_113) else self.default
        if fn:
            fn(obj)
        if self.storage == "namespaces" and k8s_version not in ("1.7", "1.13"):
            # 1.21+: every namespace carries its name as a label (namespaceSelectors can match it)
            meta = obj.setdefault("metadata", {})
            if meta.get("name"):
                meta["labels"] = {**(meta.get("labels") or {}), "kubernetes.io/metadata.name": meta["name"]}

    def subresources(self) -> tuple[str, ...]:
        out = (("status",) if self.has_status else ()) + (("scale",) if self.scale else ())
        return out + self.extra_subresources

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        """``resource.group`` as the 1.7 error messages print it (``pods``, ``deployments.extensions``)."""
        return f"{self.name}.{self.group}" if self.group else self.name

    def view(self, obj: dict, k8s_version: str, in_list: bool = False) -> dict:
        """The object as this group/version shows it."""
        out = copy.deepcopy(obj)
        if in_list:
            out.pop("apiVersion", None)
            out.pop("kind", None)
            body = out
        else:
            body = {"kind": self.kind, "apiVersion": self.api_version}
            body.update((k, v) for k, v in out.items() if k not in ("kind", "apiVersion"))
        if k8s_version == "1.7" and self.pod_like:
            if self.pod_like == "pod":
                pod_like_output(body)
            else:
                tmpl = (body.get("spec") or {}).get("template")
                if isinstance(tmpl, dict):
                    pod_like_output(tmpl)
        if self.convert is not None:
            self.convert.output(body)
        meta = body.get("metadata") or {}
        if meta:
            ns = meta.get("namespace")
            prefix = "/api/v1" if not self.group else f"/apis/{self.group}/{self.version}"
            meta["selfLink"] = (
                f"{prefix}/namespaces/{ns}/{self.name}/{meta.get('name')}" if ns else f"{prefix}/{self.name}/{meta.get('name')}"
            )
        return body


POD_FIELDS = ("metadata.name", "metadata.namespace", "spec.nodeName", "spec.restartPolicy", "status.phase", "status.podIP")

EVENT_FIELDS = (
    "metadata.name",
    "metadata.namespace",
    "involvedObject.kind",
    "involvedObject.namespace",
    "involvedObject.name",
    "involvedObject.uid",
    "involvedObject.apiVersion",
    "involvedObject.resourceVersion",
    "involvedObject.fieldPath",
    "reason",
    "source",
    "type",
)

RESOURCES: list[ResourceType] = [
    ResourceType(
        "",
        "v1",
        "namespaces",
        "Namespace",
        False,
        "namespaces",
        name_rule="label",
        default=default_namespace,
        has_status=True,
        short_names=("ns",),
        field_selectors=("metadata.name", "status.phase"),
    ),
    ResourceType(
        "",
        "v1",
        "pods",
        "Pod",
        True,
        "pods",
        default=default_pod,
        has_status=True,
        pod_like="pod",
        field_selectors=POD_FIELDS,
        short_names=("po",),
        extra_subresources=("binding",),
    ),
    ResourceType("", "v1", "configmaps", "ConfigMap", True, "configmaps", short_names=("cm",)),
    ResourceType(
        "",
        "v1",
        "secrets",
        "Secret",
        True,
        "secrets",
        default=default_secret,
        field_selectors=("metadata.name", "metadata.namespace", "type"),
    ),
    ResourceType("", "v1", "serviceaccounts", "ServiceAccount", True, "serviceaccounts", short_names=("sa",)),
    ResourceType(
        "",
        "v1",
        "services",
        "Service",
        True,
        "services",
        name_rule="dns1035",
        default=default_service,
        has_status=True,
        short_names=("svc",),
    ),
    ResourceType("", "v1", "endpoints", "Endpoints", True, "endpoints", short_names=("ep",)),
    ResourceType("", "v1", "nodes", "Node", False, "nodes", has_status=True, short_names=("no",)),
    ResourceType(
        "", "v1", "events", "Event", True, "events", short_names=("ev",), field_selectors=EVENT_FIELDS
    ),  # kubectl describe lists events by involvedObject
    ResourceType(
        "apps",
        "v1beta1",
        "deployments",
        "Deployment",
        True,
        "deployments",
        default=default_deployment_apps,
        has_status=True,
        tracks_generation=True,
        pod_like="template",
        short_names=("deploy",),
    ),
    ResourceType(
        "extensions",
        "v1beta1",
        "deployments",
        "Deployment",
        True,
        "deployments",
        default=default_deployment_extensions,
        has_status=True,
        tracks_generation=True,
        pod_like="template",
        short_names=("deploy",),
    ),
    ResourceType(
        "extensions",
        "v1beta1",
        "daemonsets",
        "DaemonSet",
        True,
        "daemonsets",
        default=default_daemonset,
        has_status=True,
        tracks_generation=True,
        pod_like="template",
        short_names=("ds",),
    ),
    ResourceType(
        "admissionregistration.k8s.io",
        "v1alpha1",
        "initializerconfigurations",
        "InitializerConfiguration",
        False,
        "initializerconfigurations",
    ),
]
for _v in ("v1beta1", "v1"):
    RESOURCES += [
        ResourceType("rbac.authorization.k8s.io", _v, "roles", "Role", True, "roles", name_rule="path"),
        ResourceType("rbac.authorization.k8s.io", _v, "rolebindings", "RoleBinding", True, "rolebindings", name_rule="path"),
        ResourceType("rbac.authorization.k8s.io", _v, "clusterroles", "ClusterRole", False, "clusterroles", name_rule="path"),
        ResourceType(
            "rbac.authorization.k8s.io",
            _v,
            "clusterrolebindings",
            "ClusterRoleBinding",
            False,
            "clusterrolebindings",
            name_rule="path",
        ),
    ]

from . import workloads as _workloads  # noqa: E402  (its entries build on the ones above)

RESOURCES += _workloads.resource_types()
_workloads.assign_served(RESOURCES)
_workloads.assign_categories(RESOURCES)

# Every (group, version, resource) of either Kubernetes version; a server serves its own (served()).
BY_GVR: dict[tuple[str, str, str], ResourceType] = {(r.group, r.version, r.name): r for r in RESOURCES}
_SERVED: dict[str, dict] = {}


def served(k8s_version: str) -> dict[tuple[str, str, str], ResourceType]:
    """(group, version, resource) -> entry, for what a ``k8s_version`` API server serves."""
    if k8s_version not in _SERVED:
        _SERVED[k8s_version] = {k: r for k, r in BY_GVR.items() if k8s_version in r.served}
    return _SERVED[k8s_version]


def group_versions(k8s_version: str = "1.13") -> dict[str, list[str]]:
    """group -> versions served by ``k8s_version``, preferred version first."""
    out: dict[str, list[str]] = {}
    for r in RESOURCES:
        if r.group and k8s_version in r.served and r.version not in out.setdefault(r.group, []):
            out[r.group].append(r.version)
    return out
