"""Discovery documents: /version, /api, /apis, /apis/<group>, /apis/<group>/<version>, /api/v1.

Clients (kubectl, Helm, the Python client's dynamic layer) read these to learn which groups,
versions, resources and verbs exist; kubesim answers from its resource registry.
"""

from __future__ import annotations

from . import resources
from .resources import RESOURCES

GIT_VERSIONS = {"1.7": "v1.7.16", "1.13": "v1.13.12", "1.28": "v1.28.15"}
GO_VERSIONS = {"1.7": "go1.8.3", "1.13": "go1.11.13", "1.28": "go1.22.8"}
BUILD_DATES = {"1.7": "2017-10-01T00:00:00Z", "1.13": "2019-10-15T12:02:12Z", "1.28": "2024-10-22T20:28:14Z"}


# The aggregator's group priorities (kube-aggregator apiVersionPriorities, 1.7 and 1.13 alike):
# /apis lists groups in this order, and each group's versions by their version priority.
GROUP_ORDER = (
    "extensions",
    "apps",
    "events.k8s.io",
    "authentication.k8s.io",
    "authorization.k8s.io",
    "autoscaling",
    "batch",
    "certificates.k8s.io",
    "networking.k8s.io",
    "policy",
    "rbac.authorization.k8s.io",
    "settings.k8s.io",
    "storage.k8s.io",
    "admissionregistration.k8s.io",
    "apiextensions.k8s.io",
    "scheduling.k8s.io",
    "coordination.k8s.io",
)
VERSION_ORDER = ("v1", "v1beta2", "v1beta1", "v2alpha1", "v1alpha1")
STATUS_VERBS = ["get", "patch", "update"]


def groups(k8s_version: str) -> dict[str, list[str]]:
    """group -> served versions, preferred first, in the aggregator's order."""
    gv = resources.group_versions(k8s_version)
    order = {g: i for i, g in enumerate(GROUP_ORDER)}
    return {g: sorted(gv[g], key=VERSION_ORDER.index) for g in sorted(gv, key=lambda g: order.get(g, 99))}


def api_group(g: str, k8s_version: str) -> dict:
    entries = [{"groupVersion": f"{g}/{v}", "version": v} for v in groups(k8s_version)[g]]
    return {"name": g, "versions": entries, "preferredVersion": entries[0]}


def _entry(name: str, r, kind: str, verbs, gvk=None) -> dict:
    """One metav1.APIResource in its Go field order (group/version only when they differ)."""
    e = {"name": name, "singularName": "", "namespaced": r.namespaced}
    if gvk is not None and (gvk[0], gvk[1]) != (r.group, r.version):
        e["group"], e["version"] = gvk[0], gvk[1]
    e["kind"] = kind
    e["verbs"] = sorted(verbs)
    return e


def resource_list(group: str, version: str, k8s_version: str = "1.13") -> dict:
    """The APIResourceList of a group/version: resources and their subresources sorted by path, as
    the installer registers them; verbs sorted."""
    out = []
    for r in RESOURCES:
        if r.group != group or r.version != version or k8s_version not in r.served:
            continue
        entry = _entry(r.name, r, r.kind, r.verbs)
        if r.short_names:
            entry["shortNames"] = list(r.short_names)
        if r.categories and k8s_version not in r.no_categories_in:
            entry["categories"] = list(r.categories)
        out.append(entry)
        if r.has_status:
            out.append(_entry(f"{r.name}/status", r, r.kind, STATUS_VERBS))
        if r.scale:
            out.append(_entry(f"{r.name}/scale", r, "Scale", STATUS_VERBS, r.scale))
        for sub in r.extra_subresources:
            out.append(_entry(f"{r.name}/{sub}", r, "Binding", ["create"]))
        for sub, kind, verbs, gvk in r.listed_subresources:
            out.append(_entry(f"{r.name}/{sub}", r, kind, verbs, gvk))
    out.sort(key=lambda e: e["name"])
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": f"{group}/{version}" if group else version,
        "resources": out,
    }


def document(path: str, k8s_version: str, host: str) -> dict | None:
    """The discovery document for ``path``, or None when ``path`` is not a discovery path."""
    if path == "/version":
        return {
            "major": "1",
            "minor": k8s_version.split(".")[1],
            "gitVersion": GIT_VERSIONS[k8s_version],
            "gitCommit": "kubesim",
            "gitTreeState": "clean",
            "buildDate": BUILD_DATES[k8s_version],
            "goVersion": GO_VERSIONS[k8s_version],
            "compiler": "gc",
            "platform": "linux/amd64",
        }
    if path == "/api":
        return {
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": host}],
        }
    gv = groups(k8s_version)
    if path == "/apis":
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [api_group(g, k8s_version) for g in gv]}
    segs = [s for s in path.split("/") if s]
    if len(segs) == 2 and segs[0] == "apis" and segs[1] in gv:
        return dict(api_group(segs[1], k8s_version), kind="APIGroup", apiVersion="v1")
    if segs == ["api", "v1"]:
        return resource_list("", "v1", k8s_version)
    if len(segs) == 3 and segs[0] == "apis" and segs[2] in gv.get(segs[1], []):
        return resource_list(segs[1], segs[2], k8s_version)
    return None
