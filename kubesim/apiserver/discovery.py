"""Discovery documents: /version, /api, /apis, /apis/<group>, /apis/<group>/<version>, /api/v1.

Clients (kubectl, Helm, the Python client's dynamic layer) read these to learn which groups,
versions, resources and verbs exist; kubesim answers from its resource registry.
"""
from __future__ import annotations

from . import resources
from .resources import RESOURCES

GIT_VERSIONS = {"1.7": "v1.7.16", "1.13": "v1.13.12"}


def groups(k8s_version: str) -> dict[str, list[str]]:
    """group -> served versions, preferred first (rbac prefers v1beta1 in 1.7, v1 in 1.13)."""
    gv = resources.group_versions()
    if k8s_version == "1.7":
        gv["rbac.authorization.k8s.io"] = ["v1beta1", "v1"]
    return gv


def api_group(g: str, k8s_version: str) -> dict:
    entries = [{"groupVersion": f"{g}/{v}", "version": v} for v in groups(k8s_version)[g]]
    return {"name": g, "versions": entries, "preferredVersion": entries[0]}


def resource_list(group: str, version: str) -> dict:
    out = []
    for r in RESOURCES:
        if r.group != group or r.version != version:
            continue
        entry = {"name": r.name, "singularName": "", "namespaced": r.namespaced, "kind": r.kind,
                 "verbs": list(r.verbs)}
        if r.short_names:
            entry["shortNames"] = list(r.short_names)
        out.append(entry)
        if r.has_status:
            out.append({"name": f"{r.name}/status", "singularName": "", "namespaced": r.namespaced,
                        "kind": r.kind, "verbs": ["get", "patch", "update"]})
        for sub in r.extra_subresources:
            out.append({"name": f"{r.name}/{sub}", "singularName": "", "namespaced": r.namespaced,
                        "kind": "Binding", "verbs": ["create"]})
    return {"kind": "APIResourceList", "apiVersion": "v1",
            "groupVersion": f"{group}/{version}" if group else version, "resources": out}


def document(path: str, k8s_version: str, host: str) -> dict | None:
    """The discovery document for ``path``, or None when ``path`` is not a discovery path."""
    if path == "/version":
        return {"major": "1", "minor": k8s_version.split(".")[1], "gitVersion": GIT_VERSIONS[k8s_version],
                "gitCommit": "kubesim", "gitTreeState": "clean", "buildDate": "2017-10-01T00:00:00Z",
                "goVersion": "go1.8.3" if k8s_version == "1.7" else "go1.11.13",
                "compiler": "gc", "platform": "linux/amd64"}
    if path == "/api":
        return {"kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": host}]}
    gv = groups(k8s_version)
    if path == "/apis":
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [api_group(g, k8s_version) for g in gv]}
    segs = [s for s in path.split("/") if s]
    if len(segs) == 2 and segs[0] == "apis" and segs[1] in gv:
        return dict(api_group(segs[1], k8s_version), kind="APIGroup", apiVersion="v1")
    if segs == ["api", "v1"]:
        return resource_list("", "v1")
    if len(segs) == 3 and segs[0] == "apis" and segs[2] in gv.get(segs[1], []):
        return resource_list(segs[1], segs[2])
    return None
