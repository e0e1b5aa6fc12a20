"""What the initializer does to one Deployment: pure functions, no I/O.

``decide`` looks at the *current* object and says what single write completes our part of its
initialization: inject and remove our pending entry, only remove our pending entry, fail it with
a ``metadata.initializers.result`` Status, or leave it alone (not ours to act on yet).

Choices (see initializer/README.md for the reasons):

- Our init containers are put *first* in ``initContainers`` (the original appended them). The egress
  lock must be in place before any user init container runs, or that container can reach the
  internet unproxied.
- ``volumeMounts`` and ``envVars`` go into every user container and every user init container (the
  original did app containers only), so init containers can use the proxy's CA bundle too; never into
  the containers we inject.
- Idempotent: an object that already carries an identical copy of something we inject does not
  get a second one. "Identical" means every field of our definition is present with the same
  value (the server may have added defaults such as ``terminationMessagePath``). Same name (or mount
  path) with a different definition is an ``InjectionConflict``: the create fails with a message
  saying what conflicted, instead of the pod starting without protection.
- 1.7 mirrors init containers into ``pod.beta.kubernetes.io/init-containers`` /
  ``pod.alpha.kubernetes.io/init-containers`` annotations and those override the field on input. If
  either annotation is on the template we read the effective list from it and rewrite every such
  annotation to match the new field; if neither is present we leave them absent.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any, Optional

# kubernetes' own parser (the official client, already a dependency): the full suffix grammar
# (m, k, Ki..Ei, M..E, exponents) without a hand-written copy.
from kubernetes.utils.quantity import parse_quantity

from controllerkit import optin

from .config import InjectionConfig

BETA_INIT_ANNOTATION = "pod.beta.kubernetes.io/init-containers"
ALPHA_INIT_ANNOTATION = "pod.alpha.kubernetes.io/init-containers"
# Precedence on input in the 1.7 conversion: beta before alpha.
INIT_ANNOTATIONS = (BETA_INIT_ANNOTATION, ALPHA_INIT_ANNOTATION)

FAILURE_PREFIX = "tproxy initializer: "

# Decision actions.
IGNORE = "ignore"  # not pending, or someone else is pending[0]: no write
INJECT = "inject"  # write the injected object and remove our entry
SKIP = "skip"  # write only the removal of our entry (not annotated / excluded namespace)
FAIL = "fail"  # write initializers.result (the server deletes the object, the create fails)


class InjectionConflict(ValueError):
    """The config cannot be applied to this object; the message says what conflicted."""


@dataclass(frozen=True)
class Decision:
    action: str
    reason: str
    obj: Optional[dict] = None  # the full object to PUT (None for IGNORE)
    pending_after: tuple = ()  # names still pending after our write (for logs and tests)


def pending_names(obj: dict) -> list[str]:
    inits = (obj.get("metadata") or {}).get("initializers")
    if not inits:
        return []
    return [p.get("name", "") for p in (inits.get("pending") or []) if isinstance(p, dict)]


def annotation_value(obj: dict, annotation: str) -> Optional[str]:
    ann = (obj.get("metadata") or {}).get("annotations") or {}
    return ann.get(annotation)


def _omitted_when_empty(value: Any) -> bool:
    """The API server drops ``omitempty`` scalars and lists holding their zero value (``readOnly: false``,
    ``value: ""``, ``args: []``), so an object that went through it lacks them. Not ``{}``: an empty
    struct such as ``emptyDir: {}`` is a pointer the server keeps, and it means something."""
    return value is False or value == "" or value == []


def _same_quantity(ours: Any, theirs: Any) -> bool:
    """Equal as Kubernetes quantities (``1000m`` == ``1``, ``1024Mi`` == ``1Gi``, ``0.5`` == ``500m``)."""
    try:
        return parse_quantity(ours) == parse_quantity(theirs)
    except (ValueError, TypeError):
        return ours == theirs


def _is_quantity_field(path: tuple) -> bool:
    """``resources.limits.X`` / ``resources.requests.X`` and ``emptyDir.sizeLimit``: the fields the API
    server stores in canonical form, so a value that went through it may be spelt differently."""
    return (len(path) >= 3 and path[-3] == "resources" and path[-2] in ("limits", "requests")) or path[-2:] == (
        "emptyDir",
        "sizeLimit",
    )


def _subset(ours: Any, theirs: Any, path: tuple = ()) -> bool:
    """True if every field of ``ours`` is in ``theirs`` with the same value (defaults tolerated;
    quantities compared by value, as the server rewrites them into canonical form)."""
    if isinstance(ours, dict):
        return isinstance(theirs, dict) and all(
            _subset(v, theirs[k], path + (k,)) if k in theirs else _omitted_when_empty(v)
            for k, v in ours.items()
            if v is not None
        )
    if isinstance(ours, list):
        return isinstance(theirs, list) and len(ours) == len(theirs) and all(_subset(a, b, path) for a, b in zip(ours, theirs))
    if ours != theirs and path and _is_quantity_field(path):
        return _same_quantity(ours, theirs)
    return ours == theirs


def _merge_named(existing: list, wanted: list, *, key: str, what: str, where: str) -> tuple[list, list]:
    """Return (kept existing, new items to add); raise on same-key different definition."""
    by_key = {item.get(key): item for item in existing if isinstance(item, dict)}
    to_add = []
    for item in wanted:
        have = by_key.get(item[key])
        if have is None:
            to_add.append(copy.deepcopy(item))
        elif not _subset(item, have):
            raise InjectionConflict(
                f"{where} already has {what} {item[key]!r} with a different definition "
                f"(existing {json.dumps(have, sort_keys=True)}, tproxy wants {json.dumps(item, sort_keys=True)})"
            )
    return existing, to_add


def _effective_init_containers(template: dict, what: str = "pod template") -> list:
    """The init containers a 1.7 server would use: an init-containers annotation overrides the field."""
    ann = (template.get("metadata") or {}).get("annotations") or {}
    for key in INIT_ANNOTATIONS:
        if key in ann:
            try:
                value = json.loads(ann[key]) if ann[key] else []
            except (TypeError, ValueError) as exc:
                raise InjectionConflict(f"{what} annotation {key} is not valid JSON: {exc}") from None
            if not isinstance(value, list):
                raise InjectionConflict(f"{what} annotation {key} must be a JSON list of containers")
            return value
    return list((template.get("spec") or {}).get("initContainers") or [])


def inject_pod(pod_like: dict, cfg: InjectionConfig, *, annotation: str, prefix: str = "", what: str = "pod") -> dict:
    """Inject ``cfg`` into a pod or a pod template: any ``{"metadata": ..., "spec": PodSpec}`` (modified in
    place and returned; pass a deep copy). The one mutation both front ends share: the Initializer calls
    it on a Deployment's ``spec.template`` (``prefix="spec.template."``, ``what="pod template"``), the
    admission webhook on a Deployment's template or on a Pod itself (``prefix=""``).

    Raises ``InjectionConflict`` when the object has a same-named item with another definition or
    when a mount refers to a volume the pod would not have; the message names the field by its path
    (``prefix`` + ``spec.volumes``, ...).
    """
    tmeta = pod_like.get("metadata")
    if tmeta is None:
        tmeta = pod_like["metadata"] = {}
    pod = pod_like.get("spec")
    if pod is None:
        pod = pod_like["spec"] = {}

    # Init containers: ours first (the lock must precede every user init container).
    user_inits = _effective_init_containers(pod_like, what)
    _, new_inits = _merge_named(
        user_inits, cfg.containers, key="name", what="init container", where=f"{prefix}spec.initContainers"
    )
    ours = {c["name"] for c in cfg.containers}
    containers = pod.get("containers") or []
    for c in containers:
        if c.get("name") in ours:
            raise InjectionConflict(
                f"{prefix}spec.containers already has a container named "
                f"{c['name']!r}, which is the name of tproxy's init container"
            )

    # Volumes.
    volumes = list(pod.get("volumes") or [])
    _, new_vols = _merge_named(volumes, cfg.volumes, key="name", what="volume", where=f"{prefix}spec.volumes")
    volumes += new_vols
    vol_names = {v.get("name") for v in volumes if isinstance(v, dict)}
    for m in cfg.volume_mounts:
        if m["name"] not in vol_names:
            raise InjectionConflict(
                f"volumeMount {m['mountPath']!r} refers to volume {m['name']!r}, "
                f"which is neither in the config's volumes nor in the {what}"
            )

    # Mounts and env into every user container and user init container (not into ours).
    def inject_into(c: dict, where: str) -> None:
        mounts = list(c.get("volumeMounts") or [])
        _, add_m = _merge_named(mounts, cfg.volume_mounts, key="mountPath", what="a volume mount at", where=where)
        env = list(c.get("env") or [])
        _, add_e = _merge_named(env, cfg.env_vars, key="name", what="environment variable", where=where)
        if add_m:
            c["volumeMounts"] = mounts + add_m
        if add_e:
            c["env"] = env + add_e

    for i, c in enumerate(containers):
        inject_into(c, f"container {c.get('name', i)!r}")
    for c in user_inits:
        if c.get("name") not in ours:
            inject_into(c, f"init container {c.get('name')!r}")
    # Keep ours where they already are if present (idempotent), else prepend.
    final_inits = copy.deepcopy(new_inits) + user_inits
    if final_inits or "initContainers" in pod:
        pod["initContainers"] = final_inits
    if volumes or "volumes" in pod:
        pod["volumes"] = volumes

    # Mirror annotations (1.7 trap) and the opt-in annotation for podwatch.
    ann = dict(tmeta.get("annotations") or {})
    for key in INIT_ANNOTATIONS:
        if key in ann:
            ann[key] = json.dumps(final_inits, separators=(",", ":"))
    ann[annotation] = "true"
    tmeta["annotations"] = ann
    return pod_like


def apply_injection(deployment: dict, cfg: InjectionConfig, *, annotation: str) -> dict:
    """Inject ``cfg`` into ``deployment``'s pod template (modified in place and returned; pass a deep copy).

    Raises ``InjectionConflict`` when the object has a same-named item with another definition or
    when a mount refers to a volume the pod would not have.
    """
    spec = deployment.setdefault("spec", {})
    template = spec.setdefault("template", {})
    inject_pod(template, cfg, annotation=annotation, prefix="spec.template.", what="pod template")
    return deployment


def remove_pending(obj: dict, initializer_name: str) -> list[str]:
    """Remove our first pending entry in place; set initializers to null when none remain."""
    meta = obj.setdefault("metadata", {})
    inits = meta.get("initializers") or {}
    pending = list(inits.get("pending") or [])
    for i, p in enumerate(pending):
        if isinstance(p, dict) and p.get("name") == initializer_name:
            del pending[i]
            break
    if pending:
        meta["initializers"] = dict(inits, pending=pending)
    else:
        # 1.7: `pending: []` without a result is a 422; null completes initialization.
        meta["initializers"] = None
    return [p.get("name", "") for p in pending]


def failure_status(message: str, *, code: int = 422, reason: str = "Invalid") -> dict:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "code": code,
        "reason": reason,
        "message": FAILURE_PREFIX + message,
    }


def is_annotated(obj: dict, annotation: str) -> bool:
    return optin.is_true(annotation_value(obj, annotation))


def decide(
    deployment: dict,
    cfg: InjectionConfig,
    *,
    initializer_name: str,
    annotation: str,
    require_annotation: bool,
    exclude_namespaces: frozenset = frozenset(),
) -> Decision:
    """Decide the one write that completes our part of ``deployment``'s initialization.

    ``deployment`` is never modified; ``Decision.obj`` is a new object based on a deep copy, with the
    original ``metadata.resourceVersion`` kept as the write precondition.
    """
    pending = pending_names(deployment)
    if not pending:
        return Decision(IGNORE, "not pending initialization")
    if pending[0] != initializer_name:
        return Decision(IGNORE, f"pending[0] is {pending[0]!r}, not ours", pending_after=tuple(pending))
    inits = deployment["metadata"]["initializers"]
    if inits.get("result") is not None:
        return Decision(IGNORE, "initialization already failed (result set)", pending_after=tuple(pending))

    new = copy.deepcopy(deployment)
    ns = (deployment.get("metadata") or {}).get("namespace", "")
    if ns in exclude_namespaces:
        after = remove_pending(new, initializer_name)
        return Decision(SKIP, f"namespace {ns!r} is excluded", new, tuple(after))
    if require_annotation and not is_annotated(deployment, annotation):
        value = annotation_value(deployment, annotation)
        why = "missing" if value is None else f'{value!r}, not "true"'
        after = remove_pending(new, initializer_name)
        return Decision(SKIP, f"annotation {annotation} is {why}", new, tuple(after))
    try:
        apply_injection(new, cfg, annotation=annotation)
    except InjectionConflict as exc:
        failed = copy.deepcopy(deployment)
        failed["metadata"]["initializers"] = dict(inits, result=failure_status(str(exc)))
        return Decision(FAIL, str(exc), failed, tuple(pending))
    after = remove_pending(new, initializer_name)
    return Decision(INJECT, "injected", new, tuple(after))
