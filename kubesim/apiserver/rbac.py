"""Authentication (bearer tokens) and RBAC authorization from the stored RBAC objects.

Tokens: one admin token (user ``admin``, groups ``system:masters``, ``system:authenticated``;
bound to ``cluster-admin`` by the bootstrap ClusterRoleBinding, like a real cluster), any extra
static tokens a test adds, and service-account tokens issued the 1.7 way: a JWT (HS256 here)
whose claims name the namespace, the ServiceAccount and the token Secret; like the 1.7
authenticator with lookup enabled, it is valid only while that Secret (holding this very token)
and that ServiceAccount exist.

RBAC semantics (rbac v1beta1/v1): a request is allowed when any rule of any role bound to the
user, one of its groups, or its ServiceAccount allows it. Rules match on verbs, apiGroups,
resources (``res/subresource`` for subresources) with ``*`` wildcards, and ``resourceNames``
(which only ever match requests that carry a name: list/watch/create of a collection never do).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
from dataclasses import dataclass

RBAC_STORAGES = ("roles", "rolebindings", "clusterroles", "clusterrolebindings")


@dataclass(frozen=True)
class User:
    name: str
    groups: tuple[str, ...] = ()

    @property
    def is_service_account(self) -> bool:
        return self.name.startswith("system:serviceaccount:")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64url(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


class TokenIssuer:
    """Issues and verifies service-account JWTs with the server's signing key."""

    def __init__(self, key: bytes):
        self.key = key

    def issue(self, namespace: str, sa_name: str, sa_uid: str, secret_name: str) -> str:
        header = {"alg": "HS256", "typ": "JWT"}
        claims = {
            "iss": "kubernetes/serviceaccount",
            "kubernetes.io/serviceaccount/namespace": namespace,
            "kubernetes.io/serviceaccount/secret.name": secret_name,
            "kubernetes.io/serviceaccount/service-account.name": sa_name,
            "kubernetes.io/serviceaccount/service-account.uid": sa_uid,
            "sub": f"system:serviceaccount:{namespace}:{sa_name}",
        }
        signing_input = (
            _b64url(json.dumps(header, separators=(",", ":")).encode())
            + "."
            + _b64url(json.dumps(claims, separators=(",", ":")).encode())
        )
        sig = hmac.new(self.key, signing_input.encode(), hashlib.sha256).digest()
        return signing_input + "." + _b64url(sig)

    def verify(self, token: str) -> dict | None:
        parts = token.split(".")
        if len(parts) != 3:
            return None
        signing_input = parts[0] + "." + parts[1]
        expected = hmac.new(self.key, signing_input.encode(), hashlib.sha256).digest()
        try:
            if not hmac.compare_digest(expected, _unb64url(parts[2])):
                return None
            claims = json.loads(_unb64url(parts[1]))
        except (ValueError, TypeError):
            return None
        return claims if claims.get("iss") == "kubernetes/serviceaccount" else None


def sa_user(namespace: str, name: str) -> User:
    return User(
        f"system:serviceaccount:{namespace}:{name}",
        ("system:serviceaccounts", f"system:serviceaccounts:{namespace}", "system:authenticated"),
    )


def _subject_applies(subject: dict, user: User, binding_ns: str) -> bool:
    kind = subject.get("kind")
    if kind == "User":
        return subject.get("name") == user.name
    if kind == "Group":
        return subject.get("name") in user.groups
    if kind == "ServiceAccount":
        ns = subject.get("namespace") or binding_ns
        return user.name == f"system:serviceaccount:{ns}:{subject.get('name')}"
    return False


def rule_allows(rule: dict, verb: str, group: str, resource: str, subresource: str, name: str) -> bool:
    verbs = rule.get("verbs") or []
    if "*" not in verbs and verb not in verbs:
        return False
    groups = rule.get("apiGroups") or []
    if "*" not in groups and group not in groups:
        return False
    resources = rule.get("resources") or []
    combined = f"{resource}/{subresource}" if subresource else resource
    if "*" not in resources and combined not in resources:
        return False
    names = rule.get("resourceNames") or []
    if names and name not in names:
        return False
    return True


class Authorizer:
    """RBAC over the store, with the effective rule list cached per (user, namespace)."""

    def __init__(self, store):
        self.store = store
        self._cache: dict = {}
        self._cache_gen = -1
        self._lock = threading.Lock()

    def _generation(self) -> int:
        return sum(self.store.generation[s] for s in RBAC_STORAGES)

    def rules_for(self, user: User, namespace: str) -> list[dict]:
        gen = self._generation()
        key = (user, namespace)
        with self._lock:
            if gen != self._cache_gen:
                self._cache.clear()
                self._cache_gen = gen
            hit = self._cache.get(key)
        if hit is not None:
            return hit
        rules: list[dict] = []
        with self.store.lock:
            for crb in self.store.objects["clusterrolebindings"].values():
                if any(_subject_applies(s, user, "") for s in crb.get("subjects") or []):
                    ref = crb.get("roleRef") or {}
                    role = self.store.objects["clusterroles"].get(("", ref.get("name", "")))
                    if role:
                        rules.extend(role.get("rules") or [])
            if namespace:
                for (ns, _), rb in self.store.objects["rolebindings"].items():
                    if ns != namespace:
                        continue
                    if not any(_subject_applies(s, user, ns) for s in rb.get("subjects") or []):
                        continue
                    ref = rb.get("roleRef") or {}
                    if ref.get("kind") == "ClusterRole":
                        role = self.store.objects["clusterroles"].get(("", ref.get("name", "")))
                    else:
                        role = self.store.objects["roles"].get((ns, ref.get("name", "")))
                    if role:
                        rules.extend(role.get("rules") or [])
        with self._lock:
            if gen == self._cache_gen:
                self._cache[key] = rules
        return rules

    def allowed(
        self, user: User, verb: str, group: str, resource: str, subresource: str = "", name: str = "", namespace: str = ""
    ) -> bool:
        return any(rule_allows(r, verb, group, resource, subresource, name) for r in self.rules_for(user, namespace))

    def allowed_nonresource(self, user: User, path: str) -> bool:
        # Discovery (/api, /apis, /version, /healthz) is open to everyone, like system:discovery
        # bound to system:authenticated and system:unauthenticated in 1.7.
        return True


def forbidden_message(
    k8s_version: str, user: User, verb: str, group: str, resource: str, subresource: str, name: str, namespace: str
) -> str:
    """The message of a 403 from the authorization filter, in the selected version's wording.

    1.7 (apiserver responsewriters.forbiddenMessage): ``User "u" cannot get configmaps in the
    namespace "ns".`` / ``... at the cluster scope.`` (1.7 sent that alone, as text/plain);
    1.13: ``User "u" cannot get resource "configmaps" in API group "" in the namespace "ns"``.
    Prefixed, like errors.NewForbidden, with ``<resource>.<group> "<name>" is forbidden: ``.
    """
    qualified = f"{resource}.{group}" if group else resource
    if k8s_version == "1.7":
        res = qualified + (f"/{subresource}" if subresource else "")
        if namespace:
            inner = f'User "{user.name}" cannot {verb} {res} in the namespace "{namespace}".'
        else:
            inner = f'User "{user.name}" cannot {verb} {res} at the cluster scope.'
    else:
        sub = f"/{subresource}" if subresource else ""
        if namespace:
            inner = (
                f'User "{user.name}" cannot {verb} resource "{resource}{sub}" in API group "{group}" '
                f'in the namespace "{namespace}"'
            )
        else:
            inner = f'User "{user.name}" cannot {verb} resource "{resource}{sub}" in API group "{group}" at the cluster scope'
    return forbidden_prefix(qualified, name) + inner


def forbidden_prefix(qualified: str, name: str) -> str:
    """errors.NewForbidden's prefix: ``pods "x" is forbidden: `` (``pods is forbidden: `` without a name)."""
    return f'{qualified} "{name}" is forbidden: ' if name else f"{qualified} is forbidden: "
