"""Admission: the one place an object is admitted on its way to the store.

Create: :meth:`AdmissionMixin._admit_create`; update (PUT, PATCH): :meth:`AdmissionMixin._admit_update`.
Each runs, in this order: defaulting -> admission plugins (the Initializers plugin, §1a/§3, then the
mutating admission webhooks of :mod:`.webhooks`) -> validation. The caller then sets server-owned
metadata and stores the object under the store lock (an update's webhooks are called before that
lock is taken: webhooks.guaranteed_update).
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
        self._default(rt, obj)  # defaulting happens when the body is decoded, before admission
        self._initializers_create(rt, req, user, obj)
        if self.webhooks is not None and not rt.group.startswith("admissionregistration."):
            _replace(obj, self.webhooks.admit(rt, req, user, obj, None, "CREATE", self._dry_run(req)))
        self._validate_common(rt, obj)

    def _admit_update(self, rt: ResourceType, req: Request, user: User, new: dict, cur: dict, mutate=None) -> None:
        """Admit the new state ``new`` of the stored object ``cur`` (store locked): default, admit, validate.
        ``mutate(new, cur)``: the webhooks' result for this update, computed outside the lock."""
        self._default(rt, new)
        self._initializers_update(rt, req, user, new, cur)
        if mutate is not None:
            _replace(new, mutate(new, cur))
        self._validate_common(rt, new)
        self._check_pod_update(rt, new, cur)
        errs = workloads.validate_update(rt, new, cur, self.k8s_version)
        if errs:
            raise errors.invalid(rt, req.name, errs)

    def _has_initializers(self) -> bool:
        """Initializers (alpha, 1.7-1.13) were removed in 1.14: a 1.28 server has neither the plugin nor
        ``metadata.initializers``."""
        return self.k8s_version in ("1.7", "1.13")

    def _dry_run(self, req: Request) -> bool:
        """``?dryRun=All`` (1.13+): admitted and validated, nothing stored."""
        value = req.query.get("dryRun")
        if value is None or self.k8s_version == "1.7":
            return False
        if value != "All":
            raise errors.bad_request(f'dryRun: Unsupported value: "{value}": supported values: "All"')
        return True

    # ---- the Initializers admission plugin ----------------------------------------------
    def _initializers_create(self, rt: ResourceType, req: Request, user: User, obj: dict) -> None:
        """The Initializers admission plugin, create branch (§1a)."""
        meta = obj["metadata"]
        if not self._has_initializers():
            meta.pop("initializers", None)  # 1.14+: no such field; the decoder drops it
            return
        inits = meta.get("initializers")
        if inits is not None:
            self._can_initialize(user, rt, meta.get("name", ""), req.namespace, "create with initializers denied")
            if not isinstance(inits, dict) or (not inits.get("pending") and inits.get("result") is None):
                meta.pop("initializers", None)  # pending: [] -> administrators' bypass
        else:
            meta.pop("initializers", None)
            mirror = rt.storage == "pods" and "kubernetes.io/config.mirror" in (meta.get("annotations") or {})
            names = [] if mirror else self._find_initializers(rt)
            if names:
                meta["initializers"] = {"pending": [{"name": n} for n in names]}

    def _initializers_update(self, rt: ResourceType, req: Request, user: User, new: dict, cur: dict) -> None:
        """The Initializers plugin, update branch (§3)."""
        meta = new["metadata"]
        if not self._has_initializers():
            meta.pop("initializers", None)
            return
        updated = meta.get("initializers")
        existing = cur["metadata"].get("initializers")
        if (
            self.k8s_version != "1.7"
            and isinstance(updated, dict)
            and not updated.get("pending")
            and updated.get("result") is None
        ):
            meta.pop("initializers", None)  # 1.9+ (#52558): empty pending means done
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
            raise errors.bad_request(
                f'{rt.kind} in version "{rt.version}" cannot be handled as a {rt.kind}: unexpected structure ({e})'
            ) from None

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
            raise errors.invalid(
                rt,
                new["metadata"]["name"],
                [
                    FieldError(
                        "Forbidden",
                        "spec",
                        "pod updates may not change fields other than `containers[*].image` or `spec.activeDeadlineSeconds`",
                    )
                ],
            )


def _replace(obj: dict, new: dict) -> None:
    """Make ``obj`` (and its ``metadata`` dict, which callers hold) the admitted ``new``, in place."""
    if new is obj:
        return
    meta = obj.get("metadata")
    new_meta = new.get("metadata") or {}
    for k in list(obj):
        if k not in new:
            del obj[k]
    obj.update((k, v) for k, v in new.items() if k != "metadata")
    if isinstance(meta, dict):
        meta.clear()
        meta.update(new_meta)
        obj["metadata"] = meta
    else:
        obj["metadata"] = new_meta
