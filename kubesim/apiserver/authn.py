"""Authentication: static bearer tokens and service-account tokens (the 1.7 token controller's
``<sa>-token-<suffix>`` Secrets, verified against the Secret and the ServiceAccount's uid).
"""

from __future__ import annotations

import base64
import copy

from .rbac import User, sa_user
from .resources import BY_GVR


class AuthnMixin:
    """Who is asking: the bearer-token authenticator and the tokens it accepts."""

    def add_token(self, token: str, user: str, groups=()) -> None:
        """Register a static bearer token for a plain user (tests of User/Group RBAC subjects)."""
        self.static_tokens[token] = User(user, tuple(groups) + ("system:authenticated",))

    def service_account_token(self, namespace: str, name: str) -> str:
        """The token of ServiceAccount ``namespace/name`` from its token Secret (both created if missing)."""
        with self.store.lock:
            if self.store.get("namespaces", "", namespace) is None:
                self._create_internal(BY_GVR[("", "v1", "namespaces")], {"metadata": {"name": namespace}})
            sa = self.store.get("serviceaccounts", namespace, name)
            if sa is None:
                self._create_internal(BY_GVR[("", "v1", "serviceaccounts")], {"metadata": {"name": name, "namespace": namespace}})
                sa = self.store.get("serviceaccounts", namespace, name)
            for ref in sa.get("secrets") or []:
                sec = self.store.get("secrets", namespace, ref.get("name", ""))
                if sec and sec.get("type") == "kubernetes.io/service-account-token":
                    return base64.b64decode(sec["data"]["token"]).decode()
            secret = self._issue_token_secret(sa)
            return base64.b64decode(secret["data"]["token"]).decode()

    def _issue_token_secret(self, sa: dict) -> dict:
        """The 1.7 token controller: Secret ``<sa>-token-<5 chars>`` listed in the SA's ``secrets``."""
        ns, name, uid = sa["metadata"]["namespace"], sa["metadata"]["name"], sa["metadata"]["uid"]
        secret_rt = BY_GVR[("", "v1", "secrets")]
        sa_rt = BY_GVR[("", "v1", "serviceaccounts")]
        with self.store.lock:
            while True:
                secret_name = f"{name}-token-{self._random_suffix()}"
                if self.store.get("secrets", ns, secret_name) is None:
                    break
            token = self.tokens.issue(ns, name, uid, secret_name)
            b64 = lambda b: base64.b64encode(b if isinstance(b, bytes) else b.encode()).decode()
            secret = self._create_internal(
                secret_rt,
                {
                    "metadata": {
                        "name": secret_name,
                        "namespace": ns,
                        "annotations": {"kubernetes.io/service-account.name": name, "kubernetes.io/service-account.uid": uid},
                    },
                    "type": "kubernetes.io/service-account-token",
                    "data": {"token": b64(token), "ca.crt": b64(self.ca_pem), "namespace": b64(ns)},
                },
            )
            cur = copy.deepcopy(self.store.get("serviceaccounts", ns, name))
            cur.setdefault("secrets", []).append({"name": secret_name})
            self.store.update(sa_rt.storage, cur)
            return secret

    def _refresh_token_secret_ca(self) -> None:
        ca_b64 = base64.b64encode(self.ca_pem).decode()
        with self.store.lock:
            items, _ = self.store.list("secrets")
            for sec in items:
                if sec.get("type") == "kubernetes.io/service-account-token" and sec["data"].get("ca.crt") != ca_b64:
                    new = copy.deepcopy(sec)
                    new["data"]["ca.crt"] = base64.b64encode(self.ca_pem).decode()
                    self.store.update("secrets", new)

    def authenticate(self, header: str | None) -> User | None:
        # The scheme is case-insensitive, as in the real bearer-token authenticator: the official
        # client's in-cluster loader sends "bearer <token>".
        if not header or header[:7].lower() != "bearer ":
            return None
        token = header[7:].strip()
        user = self.static_tokens.get(token)
        if user is not None:
            return user
        claims = self.tokens.verify(token)
        if not claims:
            return None
        ns = claims.get("kubernetes.io/serviceaccount/namespace", "")
        sa_name = claims.get("kubernetes.io/serviceaccount/service-account.name", "")
        secret = self.store.get("secrets", ns, claims.get("kubernetes.io/serviceaccount/secret.name", ""))
        sa = self.store.get("serviceaccounts", ns, sa_name)
        if secret is None or sa is None:
            return None
        if sa["metadata"]["uid"] != claims.get("kubernetes.io/serviceaccount/service-account.uid"):
            return None
        try:
            if base64.b64decode(secret.get("data", {}).get("token", "")).decode() != token:
                return None
        except ValueError:
            return None
        return sa_user(ns, sa_name)
