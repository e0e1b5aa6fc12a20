"""Admission: the one place an object is admitted on its way to the store.

Create: :meth:`AdmissionMixin._admit_create`; update (PUT, PATCH): :meth:`AdmissionMixin._admit_update`.
Each runs, in this order: defaulting -> admission plugins (the Initializers plugin, §1a/§3) ->
validation. The caller then sets server-owned metadata and stores the object under the store lock.
A further admission step (a plugin, a webhook call) belongs between the plugins and validation.
"""
from __future__ import annotations

import copy
import time

from . import admission, errors, validation, workloads
from .errors import FieldError
from .rbac import User, forbidden_prefix
from .resources import ResourceType
from .routing import Request
from .store import is_uninitialized


class AdmissionMixin:
    """Defaulting, admission and validation of created and updated objects."""

    def _admit_create(self, rt: ResourceType, req: Request, user: User, obj: dict) -> None:
        """Admit a new object (decoded, named, its namespace existing): default, admit, validate."""
        self._default(rt, obj)      # defaulting happens when the body is decoded, before admission
        self._initializers_create(rt, req, user, obj)
        self._validate_common(rt, obj)

    def _admit_update(self, rt: ResourceType, req: Request, user: User, new: dict, cur: dict) -> None:
        """Admit the new state ``new`` of the stored object ``cur`` (store locked): default, admit, validate."""
        self._default(rt, new)
        self._initializers_update(rt, req, user, new, cur)
        self._validate_common(rt, new)
        self._check_pod_update(rt, new, cur)
        errs = workloads.validate_update(rt, new, cur, self.k8s_version)
        if errs:
            raise errors.invalid(rt, req.name, errs)

    # ---- the Initializers admission plugin ----------------------------------------------
    def _initializers_create(self, rt: ResourceType, req: Request, user: User, obj: dict) -> None:
        """The Initializers admission plugin, create branch (§1a)."""
        meta = obj["metadata"]
        inits = meta.get("initializers")
        if inits is not None:
            self._can_initialize(user, rt, meta.get("name", ""), req.namespace, "create with initializers denied")
            if not isinstance(inits, dict) or (not inits.get("pending") and inits.get("result") is None):
                meta.pop("initializers", None)     # pending: [] -> administrators' bypass
        else:
            meta.pop("initializers", None)
            mirror = rt.storage == "pods" and "kubernetes.io/config.mirror" in (meta.get("annotations") or {})
            names = [] if mirror else self._find_initializers(rt)
            if names:
                meta["initializers"] = {"pending": [{"name": n} for n in names]}

    def _initializers_update(self, rt: ResourceType, req: Request, user: User, new: dict, cur: dict) -> None:
        """The Initializers plugin, update branch (§3)."""
        meta = new["metadata"]
        updated = meta.get("initializers")
        existing = cur["metadata"].get("initializers")
        if self.k8s_version != "1.7" and isinstance(updated, dict) and not updated.get("pending") \
                and updated.get("result") is None:
            meta.pop("initializers", None)     # 1.9+ (#52558): empty pending means done
            updated = None
        if updated is None:
            meta.pop("initializers", None)
        if updated is None and existing is None:
            return
        errs = admission.validate_initializers_update(updated, existing)
        if errs:
            raise errors.invalid(rt, req.name, errs)
        self._can_initialize(user, rt, req.name, req.namespace, "update to uninitialized resource denied")

    def _can_initialize(self, user: User, rt: ResourceType, name: str, ns: str, what: str) -> None:
        """The plugin's canInitialize (§3): verb ``initialize`` on the request's resource.

        Denied -> ``errors.NewForbidden(gr, name, fmt.Errorf("%s: %s", message, reason))``; RBAC's
        reason for a denial is empty (1.7 and 1.13 alike), hence the message ends in ``": "``."""
        if not self.authorizer.allowed(user, "initialize", rt.group, rt.name, "", name, ns):
            raise errors.forbidden(rt.name, rt.group, name, forbidden_prefix(rt.qualified, name) + f"{what}: ")

    def _find_initializers(self, rt: ResourceType) -> list[str]:
        """The plugin's configuration: all InitializerConfigurations, re-read every
        ``initializer_config_refresh`` seconds (0 = on every request; 1.7 polled every 1 s)."""
        if self.initializer_config_refresh > 0:
            at, configs = self._init_config_cache
            now = time.monotonic()
            if now - at >= self.initializer_config_refresh:
                configs, _ = self.store.list("initializerconfigurations")
                self._init_config_cache = (now, configs)
        else:
            configs, _ = self.store.list("initializerconfigurations")
        if not configs:
            return []
        return admission.find_initializers(configs, rt.group, rt.version, rt.name)

    # ---- validation ---------------------------------------------------------------------
    def _validate_common(self, rt: ResourceType, obj: dict) -> None:
        try:
            self._validate_object(rt, obj)
        except (AttributeError, TypeError, KeyError) as e:
            raise errors.bad_request(f"{rt.kind} in version \"{rt.version}\" cannot be handled as a {rt.kind}: "
                                     f"unexpected structure ({e})") from None

    def _validate_object(self, rt: ResourceType, obj: dict) -> None:
        errs = validation.validate_object(rt, obj, self.k8s_version)
        if errs:
            raise errors.invalid(rt, obj["metadata"].get("name", ""), errs)

    def _check_pod_update(self, rt: ResourceType, new: dict, cur: dict) -> None:
        """1.7: an uninitialized pod's spec is immutable like any pod's, except images (§3 "Pods in 1.7")."""
        if rt.storage != "pods" or self.k8s_version != "1.7" or not is_uninitialized(cur):
            return

        def strip(spec):
            s = copy.deepcopy(spec or {})
            for key in ("containers", "initContainers"):
                for c in s.get(key) or []:
                    c.pop("image", None)
            s.pop("activeDeadlineSeconds", None)
            return s

        if strip(new.get("spec")) != strip(cur.get("spec")):
            raise errors.invalid(rt, new["metadata"]["name"], [FieldError(
                "Forbidden", "spec", "pod updates may not change fields other than `containers[*].image` or "
                "`spec.activeDeadlineSeconds`")])
