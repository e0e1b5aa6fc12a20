"""Object validation kubesim performs (422 Invalid), per version where 1.7 and 1.13 differ.

Only what catches real manifest and controller mistakes: object names (DNS-1123 subdomain /
label / DNS-1035 per resource), labels/annotations as string maps, ObjectMeta's initializers
(admission.validate_initializers), pod specs and pod templates, selectors against template labels,
and InitializerConfigurations (§6 of docs/initializers-1.7.md).
"""

from __future__ import annotations

from . import admission, resources
from .errors import FieldError


def validate_object(rt, obj: dict, k8s_version: str) -> list[FieldError]:
    meta = obj["metadata"]
    name = meta.get("name", "")
    errs: list[FieldError] = []
    if not name:
        errs.append(FieldError("Required", "metadata.name", "name or generateName is required"))
    else:
        msg = resources.validate_name(rt.name_rule, name)
        if msg:
            errs.append(FieldError("Invalid", "metadata.name", msg, name))
    for key in ("labels", "annotations"):
        v = meta.get(key)
        if v is not None and (not isinstance(v, dict) or not all(isinstance(x, str) for x in v.values())):
            errs.append(FieldError("Invalid", f"metadata.{key}", "must be a map of string to string", v))
    errs += admission.validate_initializers(meta.get("initializers"), k8s_version)
    if rt.storage == "initializerconfigurations":
        errs += validate_initializer_configuration(obj, k8s_version)
    if rt.storage == "mutatingwebhookconfigurations" and rt.version == "v1":
        errs += validate_webhooks_v1(obj)
    if rt.storage == "pods":
        errs += validate_pod_spec(obj.get("spec"), "spec")
    if rt.pod_like == "template":
        spec = obj.get("spec") or {}
        tmpl = spec.get("template") or {}
        errs += validate_pod_spec(tmpl.get("spec"), "spec.template.spec")
        errs += _validate_selector(rt, spec, tmpl)
    return errs


def _validate_selector(rt, spec: dict, tmpl: dict) -> list[FieldError]:
    """ValidateDeploymentSpec & co.: a nil selector is Required *and* (as labels.Nothing() matches
    no labels) a template-labels mismatch; an empty one is invalid; otherwise the template's labels
    must match. Jobs get their selector generated after validation here; a ReplicationController's
    selector is a plain map."""
    if rt.storage == "jobs":
        return []
    raw_labels = (tmpl.get("metadata") or {}).get("labels")
    labels = raw_labels or {}
    sel = spec.get("selector")
    from .workloads import GoRepr, go_string_map

    mismatch = FieldError(
        "Invalid",
        "spec.template.metadata.labels",
        "`selector` does not match template `labels`",
        GoRepr(go_string_map(raw_labels)) if isinstance(raw_labels, (dict, type(None))) else raw_labels,
    )
    if rt.storage == "replicationcontrollers":
        if not isinstance(sel, dict) or not sel:
            return [FieldError("Required", "spec.selector", "")]
        return [mismatch] if any(labels.get(k) != v for k, v in sel.items()) else []
    if sel is None:
        return [FieldError("Required", "spec.selector", ""), mismatch]
    match = sel.get("matchLabels") or {}
    if not sel.get("matchExpressions") and not match:
        if rt.storage == "deployments":
            from .workloads import go_label_selector

            return [
                FieldError("Invalid", "spec.selector", "empty selector is invalid for deployment", GoRepr(go_label_selector(sel)))
            ]
        return [FieldError("Required", "spec.selector", "")]
    if any(labels.get(k) != v for k, v in match.items()):
        return [mismatch]
    return []


def validate_initializer_configuration(obj: dict, k8s_version: str) -> list[FieldError]:
    """§6: 1.7 names need two dots and accept only failurePolicy Ignore; 1.8+ names need three
    segments and resources may not name subresources; '*' is never mixed with other values."""
    errs: list[FieldError] = []
    for i, init in enumerate(obj.get("initializers") or []):
        name = init.get("name", "") if isinstance(init, dict) else ""
        p = f"initializers[{i}].name"
        if not name:
            errs.append(FieldError("Required", p, ""))
        elif len(name.split(".")) < 3:
            msg = (
                "should be a domain with at least two dots"
                if k8s_version == "1.7"
                else "should be a domain with at least three segments separated by dots"
            )
            errs.append(FieldError("Invalid", p, msg, name))
        fp = init.get("failurePolicy") if isinstance(init, dict) else None
        if fp is not None and k8s_version == "1.7" and fp != "Ignore":
            # 1.7 only: the field existed, only "Ignore" was accepted, and it was never implemented.
            errs.append(FieldError("Invalid", f"initializers[{i}].failurePolicy", 'supported values: "Ignore"', fp))
        for j, rule in enumerate((init.get("rules") or []) if isinstance(init, dict) else []):
            for fld in ("apiGroups", "apiVersions", "resources"):
                vals = rule.get(fld) or []
                rp = f"initializers[{i}].rules[{j}].{fld}"
                if not vals:
                    errs.append(FieldError("Required", rp, ""))
                elif "*" in vals and len(vals) > 1:
                    errs.append(FieldError("Invalid", rp, "if '*' is present, must not specify other values", vals))
                elif fld == "resources" and k8s_version != "1.7":
                    for r in vals:  # 1.8+ validateResourcesNoSubResources
                        if "/" in r:
                            errs.append(FieldError("Invalid", rp, "must not specify subresources", r))
    return errs


def validate_pod_spec(spec, path: str) -> list[FieldError]:
    """Containers present, each with a unique DNS-label name and an image; volume names unique."""
    if not isinstance(spec, dict) or not spec.get("containers"):
        return [FieldError("Required", f"{path}.containers", "")]
    errs: list[FieldError] = []
    seen: set = set()
    for key in ("initContainers", "containers"):
        items = spec.get(key) or []
        if not isinstance(items, list):
            errs.append(FieldError("Invalid", f"{path}.{key}", "must be a list", items))
            continue
        for i, c in enumerate(items):
            p = f"{path}.{key}[{i}]"
            if not isinstance(c, dict):
                errs.append(FieldError("Invalid", p, "must be an object", c))
                continue
            name = c.get("name")
            if not name:
                errs.append(FieldError("Required", f"{p}.name", ""))
            elif resources.validate_name("label", name):
                errs.append(FieldError("Invalid", f"{p}.name", resources.validate_name("label", name), name))
            elif name in seen:
                errs.append(FieldError("Duplicate", f"{p}.name", "", name))
            seen.add(name)
            if not c.get("image"):
                errs.append(FieldError("Required", f"{p}.image", ""))
    vols: set = set()
    for i, v in enumerate(spec.get("volumes") or []):
        name = v.get("name") if isinstance(v, dict) else None
        if not name:
            errs.append(FieldError("Required", f"{path}.volumes[{i}].name", ""))
        elif name in vols:
            errs.append(FieldError("Duplicate", f"{path}.volumes[{i}].name", "", name))
        vols.add(name)
    return errs


def validate_webhooks_v1(obj: dict) -> list[FieldError]:
    """admissionregistration.k8s.io/v1 (ValidateMutatingWebhookConfiguration): ``sideEffects`` and
    ``admissionReviewVersions`` are required, the former None or NoneOnDryRun, the latter known."""
    errs: list[FieldError] = []
    for i, w in enumerate(obj.get("webhooks") or []):
        if not isinstance(w, dict):
            continue
        path = f"webhooks[{i}]"
        se = w.get("sideEffects")
        if not se:
            errs.append(FieldError("Required", f"{path}.sideEffects", "must specify one of None, NoneOnDryRun"))
        elif se not in ("None", "NoneOnDryRun"):
            errs.append(FieldError("Unsupported", f"{path}.sideEffects", 'supported values: "None", "NoneOnDryRun"', se))
        versions = w.get("admissionReviewVersions")
        if not versions:
            errs.append(FieldError("Required", f"{path}.admissionReviewVersions", "must specify one of v1, v1beta1"))
        elif not any(v in ("v1", "v1beta1") for v in versions):
            errs.append(
                FieldError("Invalid", f"{path}.admissionReviewVersions", "must include at least one of v1, v1beta1", versions)
            )
        timeout = w.get("timeoutSeconds")
        if isinstance(timeout, int) and not 1 <= timeout <= 30:
            errs.append(
                FieldError("Invalid", f"{path}.timeoutSeconds", "the timeout value must be between 1 and 30 seconds", timeout)
            )
    return errs
