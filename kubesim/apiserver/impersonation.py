"""User impersonation (``kubectl --as``/``--as-group``, Helm's ``--kube-as-user``): the apiserver's
WithImpersonation filter.

Each ``Impersonate-User``/``Impersonate-Group`` header is authorized for the *authenticated* user with
verb ``impersonate`` on ``users``, ``groups`` or, for ``system:serviceaccount:<ns>:<name>``,
``serviceaccounts`` in ``<ns>`` (a denial is the usual 403 Status); the request then runs as the
impersonated user. Without ``Impersonate-Group`` a service account gets its service-account groups,
and every non-anonymous user ``system:authenticated``. Groups without a user are a 400.
"""

from __future__ import annotations

from . import errors
from .rbac import User, forbidden_message

SA_PREFIX = "system:serviceaccount:"


def apply(api, headers, user: User) -> User:
    name = headers.get("Impersonate-User")
    groups = headers.get_all("Impersonate-Group") or []
    if not name:
        if groups:
            raise errors.bad_request(f"requested {groups} without impersonating a user")
        return user
    checks = []
    if name.startswith(SA_PREFIX) and name.count(":") == 3:
        ns, sa = name[len(SA_PREFIX) :].split(":", 1)
        checks.append(("serviceaccounts", sa, ns))
        default_groups = ["system:serviceaccounts", f"system:serviceaccounts:{ns}"]
    else:
        checks.append(("users", name, ""))
        default_groups = []
    checks += [("groups", g, "") for g in groups]
    for resource, obj_name, ns in checks:
        if not api.authorizer.allowed(user, "impersonate", "", resource, "", obj_name, ns):
            message = forbidden_message(api.k8s_version, user, "impersonate", "", resource, "", obj_name, ns)
            raise errors.forbidden(resource, "", obj_name, message)
    final = list(groups) if groups else default_groups
    if not groups and name != "system:anonymous":
        final.append("system:authenticated")
    return User(name, tuple(final))
