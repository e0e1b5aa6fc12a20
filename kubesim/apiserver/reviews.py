"""authorization.k8s.io access reviews: SelfSubjectAccessReview (``kubectl auth can-i``, Helm),
SubjectAccessReview, LocalSubjectAccessReview and SelfSubjectRulesReview, answered from RBAC.

Like the real server they are create-only and never stored: the POST answers 201 with the request
object plus ``status``. The decision comes from the same authorizers as a request's: members of
``system:masters`` are allowed by the privileged-group authorizer (no reason), everyone else by RBAC,
whose reason on an allow names the binding (``RBAC: allowed by ClusterRoleBinding "x" of
ClusterRole "y" to Group "z"``, 1.13; 1.7's RBAC gave no reason) and is empty on a denial.
"""

from __future__ import annotations

import copy

from . import errors
from .rbac import User, _subject_applies, rule_allows
from .transport import read_body, send_json


# The bootstrap policy every authenticated user has (1.13 system:basic-user and system:discovery,
# bound to system:authenticated), which kubesim applies without storing the objects.
BASIC_USER_RULES = [
    {
        "verbs": ["create"],
        "apiGroups": ["authorization.k8s.io"],
        "resources": ["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
    }
]
DISCOVERY_URLS = [
    "/api",
    "/api/*",
    "/apis",
    "/apis/*",
    "/healthz",
    "/openapi",
    "/openapi/*",
    "/swagger-2.0.0.pb-v1",
    "/swagger.json",
    "/swaggerapi",
    "/swaggerapi/*",
    "/version",
    "/version/",
]
DISCOVERY_RULES = [{"verbs": ["get"], "nonResourceURLs": DISCOVERY_URLS}]


def open_to_everyone(rt) -> bool:
    """Self reviews are allowed to every user (bootstrap ClusterRole ``system:basic-user``, bound to
    ``system:authenticated``), which kubesim does not store as an object."""
    return rt.name in ("selfsubjectaccessreviews", "selfsubjectrulesreviews")


def _describe_subject(subject: dict, binding_ns: str) -> str:
    kind, name = subject.get("kind"), subject.get("name")
    if kind == "ServiceAccount":
        return f'ServiceAccount "{name}/{subject.get("namespace") or binding_ns}"'
    return f'{kind} "{name}"'


def rbac_reason(store, user: User, verb, group, resource, subresource, name, namespace) -> str | None:
    """The RBAC reason of an allow (None when RBAC does not allow), in the visit order of 1.13's
    authorizer: cluster role bindings first, then the namespace's role bindings."""
    objs = store.objects
    with store.lock:
        for crb in sorted(objs["clusterrolebindings"].values(), key=lambda o: o["metadata"]["name"]):
            subj = next((s for s in crb.get("subjects") or [] if _subject_applies(s, user, "")), None)
            if subj is None:
                continue
            ref = crb.get("roleRef") or {}
            role = objs["clusterroles"].get(("", ref.get("name", "")))
            for rule in (role or {}).get("rules") or []:
                if rule_allows(rule, verb, group, resource, subresource, name):
                    return (
                        f'RBAC: allowed by ClusterRoleBinding "{crb["metadata"]["name"]}" of ClusterRole '
                        f'"{ref.get("name")}" to {_describe_subject(subj, "")}'
                    )
        if namespace:
            for (ns, _), rb in sorted(objs["rolebindings"].items()):
                if ns != namespace:
                    continue
                subj = next((s for s in rb.get("subjects") or [] if _subject_applies(s, user, ns)), None)
                if subj is None:
                    continue
                ref = rb.get("roleRef") or {}
                if ref.get("kind") == "ClusterRole":
                    role = objs["clusterroles"].get(("", ref.get("name", "")))
                else:
                    role = objs["roles"].get((ns, ref.get("name", "")))
                for rule in (role or {}).get("rules") or []:
                    if rule_allows(rule, verb, group, resource, subresource, name):
                        return (
                            f'RBAC: allowed by RoleBinding "{rb["metadata"]["name"]}/{ns}" of '
                            f'{ref.get("kind")} "{ref.get("name")}" to {_describe_subject(subj, ns)}'
                        )
    return None


def decide(api, user: User, attrs: dict | None, non_resource: dict | None) -> dict:
    if "system:masters" in user.groups:
        return {"allowed": True}
    if non_resource is not None:
        # Discovery and health paths are open (system:discovery); other non-resource URLs need a rule.
        path = non_resource.get("path", "")
        open_paths = ("/api", "/apis", "/version", "/healthz", "/livez", "/readyz", "/openapi")
        ok = any(path == p or path.startswith(p + "/") for p in open_paths)
        return {"allowed": ok}
    a = attrs or {}
    verb, group, resource = a.get("verb", ""), a.get("group", ""), a.get("resource", "")
    sub, name, ns = a.get("subresource", ""), a.get("name", ""), a.get("namespace", "")
    reason = rbac_reason(api.store, user, verb, group, resource, sub, name, ns)
    if (
        reason is None
        and "system:authenticated" in user.groups
        and not sub
        and any(rule_allows(r, verb, group, resource, sub, name) for r in BASIC_USER_RULES)
    ):
        reason = (
            'RBAC: allowed by ClusterRoleBinding "system:basic-user" of ClusterRole "system:basic-user" '
            'to Group "system:authenticated"'
        )
    if reason is None:
        return {"allowed": False}
    return {"allowed": True, "reason": reason} if api.k8s_version != "1.7" else {"allowed": True}


def create(api, h, req, user: User) -> None:
    rt = req.rt
    body = read_body(h)
    if not isinstance(body, dict):
        raise errors.bad_request("the object provided is unrecognized: expected a JSON object")
    if body.get("apiVersion") not in (None, rt.api_version) or body.get("kind") not in (None, rt.kind):
        raise errors.bad_request(
            f"the API version in the data ({body.get('apiVersion')}) does not match the expected API version ({rt.api_version})"
        )
    out = copy.deepcopy(body)
    out["kind"], out["apiVersion"] = rt.kind, rt.api_version
    meta = out.get("metadata") if isinstance(out.get("metadata"), dict) else {}
    meta["creationTimestamp"] = None
    out["metadata"] = meta
    spec = out.get("spec") if isinstance(out.get("spec"), dict) else {}
    out["spec"] = spec
    attrs, nonres = spec.get("resourceAttributes"), spec.get("nonResourceAttributes")
    if rt.name == "selfsubjectrulesreviews":
        out["status"] = _rules(api, user, spec.get("namespace", ""))
        return send_json(h, 201, out)
    if (attrs is None) == (nonres is None):
        gk = type("GK", (), {"kind": rt.kind, "group": rt.group})
        msg = "exactly one of nonResourceAttributes or resourceAttributes must be specified"
        raise errors.invalid(gk, "", [FieldError("Invalid", "spec.resourceAttributes", msg, attrs)])
    subject = user
    if rt.name in ("subjectaccessreviews", "localsubjectaccessreviews"):
        subject = User(spec.get("user", ""), tuple(spec.get("groups") or ()))
        if rt.name == "localsubjectaccessreviews":
            if meta.get("namespace", req.namespace) != req.namespace or (attrs or {}).get("namespace") != req.namespace:
                raise errors.bad_request("spec.resourceAttributes.namespace must match metadata.namespace")
    out["status"] = decide(api, subject, attrs, nonres)
    send_json(h, 201, out)


def _rules(api, user: User, namespace: str) -> dict:
    rules = list(api.authorizer.rules_for(user, namespace))
    if "system:authenticated" in user.groups:
        rules += BASIC_USER_RULES + DISCOVERY_RULES
    res, nonres = [], []
    for r in rules:
        if r.get("nonResourceURLs"):
            nonres.append({"verbs": r.get("verbs") or [], "nonResourceURLs": r["nonResourceURLs"]})
        else:
            e = {"verbs": r.get("verbs") or [], "apiGroups": r.get("apiGroups") or [], "resources": r.get("resources") or []}
            if r.get("resourceNames"):
                e["resourceNames"] = r["resourceNames"]
            res.append(e)
    return {"resourceRules": res, "nonResourceRules": nonres, "incomplete": False}


from .errors import FieldError  # noqa: E402
