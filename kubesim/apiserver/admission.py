"""The Initializers admission plugin and the ObjectMeta validation around it (§1a, §3, §5, §6).

Everything here follows docs/initializers-1.7.md: configurations merged in ``metadata.name`` order
(stable), rules matched against the *request's* group/version/resource with AND semantics across
rules and wildcards only at index 0, creator-supplied initializers needing the ``initialize`` verb,
``pending: []`` as the administrator bypass, and the update-side ValidateInitializersUpdate checks.
"""

from __future__ import annotations

import re

from .errors import FieldError

_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def _has_group(groups, g):
    return bool(groups) and (groups[0] == "*" or g in groups)


def _has_version(versions, v):
    return bool(versions) and (versions[0] == "*" or v in versions)


def _has_resource(resources, r):
    if not resources:
        return False
    if resources[0] in ("*", "*/*"):
        return True
    for res in resources:
        if "/" in res:
            continue
        if res == r:
            return True
    return False


def match_rules(rules: list, group: str, version: str, resource: str) -> bool:
    """The plugin's matchRule: EVERY rule must match (AND), and no rules matches nothing (§6)."""
    for rule in rules or []:
        if not _has_group(rule.get("apiGroups") or [], group):
            return False
        if not _has_version(rule.get("apiVersions") or [], version):
            return False
        if not _has_resource(rule.get("resources") or [], resource):
            return False
    return len(rules or []) > 0


def find_initializers(configs: list[dict], group: str, version: str, resource: str) -> list[str]:
    """Merged, ordered initializer names for a request's GVR (duplicates kept, §1a)."""
    merged = []
    for c in sorted(configs, key=lambda c: c["metadata"]["name"]):
        merged.extend(c.get("initializers") or [])
    return [i.get("name") for i in merged if match_rules(i.get("rules") or [], group, version, resource)]


def _qualified_name_errors(name) -> list[str]:
    if not isinstance(name, str) or not name:
        return ["name part must be non-empty"]
    parts = name.split("/")
    msgs = []
    if len(parts) > 2:
        return [
            "a qualified name must consist of alphanumeric characters, '-', '_' or '.', and must start "
            "and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex "
            "used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]') with an optional DNS "
            "subdomain prefix and '/' (e.g. 'example.com/MyName')"
        ]
    n = parts[-1]
    if len(n) > 63:
        msgs.append("name part must be no more than 63 characters")
    if not _QUALIFIED_NAME.match(n):
        msgs.append(
            "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and "
            "end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex "
            "used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"
        )
    if len(parts) == 2 and not _DNS_SUBDOMAIN.match(parts[0]):
        msgs.append("prefix part must be a DNS-1123 subdomain")
    return msgs


def _fully_qualified_errors(name) -> list[str]:
    if not isinstance(name, str) or not name:
        return ["Required value"]
    msgs = []
    if not _DNS_SUBDOMAIN.match(name):
        msgs.append(
            "a DNS-1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', "
            "and must start and end with an alphanumeric character"
        )
    if len(name.split(".")) < 3:
        msgs.append("should be a domain with at least three segments separated by dots")
    return msgs


def validate_initializers(initializers, k8s_version: str) -> list[FieldError]:
    """ObjectMeta's ValidateInitializers (1.7: qualified names, and an empty pending list without a
    result is invalid; 1.13: fully qualified names)."""
    if initializers is None:
        return []
    if not isinstance(initializers, dict):
        return [FieldError("Invalid", "metadata.initializers", "must be an object", initializers)]
    errs = []
    pending = initializers.get("pending") or []
    if not isinstance(pending, list):
        return [FieldError("Invalid", "metadata.initializers.pending", "must be a list", pending)]
    for i, entry in enumerate(pending):
        name = entry.get("name") if isinstance(entry, dict) else None
        check = _qualified_name_errors if k8s_version == "1.7" else _fully_qualified_errors
        for msg in check(name):
            errs.append(FieldError("Invalid", f"metadata.initializers.pending[{i}].name", msg, name))
    result = initializers.get("result")
    if result is not None and (not isinstance(result, dict) or result.get("status") != "Failure"):
        status = result.get("status") if isinstance(result, dict) else result
        errs.append(FieldError("Invalid", "metadata.initializers.result.status", "must be 'Failure'", status))
    if not pending and result is None:
        errs.append(FieldError("Invalid", "metadata.initializers.pending", "must be non-empty when result is not set"))
    return errs


def validate_initializers_update(new, old) -> list[FieldError]:
    """ValidateInitializersUpdate (§3): only the null transitions and ``result`` are checked."""
    if old is None and new is not None:
        return [FieldError("Invalid", "metadata.initializers", "field is immutable once initialization has completed")]
    if old is not None and new is not None:
        old_r = old.get("result") if isinstance(old, dict) else None
        new_r = new.get("result") if isinstance(new, dict) else None
        if old_r is None and new_r is not None:
            if not isinstance(new_r, dict) or new_r.get("status") != "Failure":
                status = new_r.get("status") if isinstance(new_r, dict) else new_r
                return [FieldError("Invalid", "metadata.initializers.result.status", "must be 'Failure'", status)]
        elif old_r is not None and new_r != old_r:
            return [FieldError("Invalid", "metadata.initializers.result", "field is immutable", new_r)]
    return []
