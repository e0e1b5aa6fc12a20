"""API errors as ``metav1.Status`` bodies with the codes, reasons and messages of the real server."""

from __future__ import annotations

import json


class APIError(Exception):
    def __init__(self, code: int, reason: str, message: str, details: dict | None = None):
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details

    def status(self) -> dict:
        """metav1.Status in its Go field order (kind, apiVersion, metadata, status, message, reason,
        details, code); empty reason/message and nil details are omitted (``omitempty``)."""
        body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure"}
        if self.message:
            body["message"] = self.message
        if self.reason:
            body["reason"] = self.reason
        if self.details is not None:
            body["details"] = status_details(self.details)
        body["code"] = self.code
        return body


DETAILS_ORDER = ("name", "group", "kind", "uid", "causes", "retryAfterSeconds")


def status_details(d: dict) -> dict:
    """metav1.StatusDetails in Go field order, empty fields omitted (all are ``omitempty``)."""
    out = {k: d[k] for k in DETAILS_ORDER if d.get(k) not in (None, "", [], 0)}
    out.update((k, v) for k, v in d.items() if k not in DETAILS_ORDER)
    return out


class PlainError(Exception):
    """An error the real server wrote as text/plain rather than a Status (1.7's authorization 403)."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code, self.message = code, message


def _details(rt, name: str) -> dict:
    d = {"name": name, "kind": rt.name}
    if rt.group:
        d["group"] = rt.group
    return d


def not_found(rt, name: str) -> APIError:
    return APIError(404, "NotFound", f'{rt.qualified} "{name}" not found', _details(rt, name))


def namespace_not_found(ns: str) -> APIError:
    return APIError(404, "NotFound", f'namespaces "{ns}" not found', {"name": ns, "kind": "namespaces"})


def already_exists(rt, name: str) -> APIError:
    return APIError(409, "AlreadyExists", f'{rt.qualified} "{name}" already exists', _details(rt, name))


def conflict(rt, name: str) -> APIError:
    return APIError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {rt.qualified} "{name}": the object has been modified; '
        f"please apply your changes to the latest version and try again",
        _details(rt, name),
    )


def bad_request(message: str) -> APIError:
    return APIError(400, "BadRequest", message)


def forbidden(rt_name: str, group: str, name: str, message: str) -> APIError:
    d = {"name": name, "kind": rt_name}
    if group:
        d["group"] = group
    return APIError(403, "Forbidden", message, d)


def unauthorized() -> APIError:
    return APIError(401, "Unauthorized", "Unauthorized")


def internal(message: str) -> APIError:
    return APIError(500, "InternalError", f"Internal error occurred: {message}", {"causes": [{"message": message}]})


def _go_value(v) -> str:
    """How field.Error prints a bad value: strings quoted, numbers and bools plain, a
    map[string]string as ``%#v`` (sorted keys), anything else as its JSON."""
    if v is None:
        return '"null"'
    if hasattr(v, "go_repr"):
        return v.go_repr
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, dict) and all(isinstance(x, str) for x in v.values()):
        return "map[string]string{" + ", ".join(f"{json.dumps(k)}:{json.dumps(v[k])}" for k in sorted(v)) + "}"
    return json.dumps(json.dumps(v)) if isinstance(v, (dict, list)) else str(v)


class FieldError:
    """One entry of a field.ErrorList: Invalid, Required or Forbidden."""

    def __init__(self, kind: str, path: str, message: str, value=None):
        self.kind, self.path, self.message, self.value = kind, path, message, value

    def __str__(self) -> str:
        if self.kind == "Invalid":
            return f"{self.path}: Invalid value: {_go_value(self.value)}: {self.message}"
        if self.kind == "Required":
            return f"{self.path}: Required value" + (f": {self.message}" if self.message else "")
        if self.kind == "Duplicate":
            return f"{self.path}: Duplicate value: {_go_value(self.value)}"
        if self.kind == "Unsupported":
            return f"{self.path}: Unsupported value: {_go_value(self.value)}: {self.message}"
        return f"{self.path}: Forbidden: {self.message}"

    def cause(self) -> dict:
        reason = {
            "Invalid": "FieldValueInvalid",
            "Required": "FieldValueRequired",
            "Forbidden": "FieldValueForbidden",
            "Duplicate": "FieldValueDuplicate",
            "Unsupported": "FieldValueNotSupported",
        }[self.kind]
        return {"reason": reason, "message": str(self).split(": ", 1)[1], "field": self.path}


def invalid(rt, name: str, errs: list[FieldError]) -> APIError:
    """422 Invalid: ``Deployment.extensions "x" is invalid: <errs>`` (a list is bracketed)."""
    gk = f"{rt.kind}.{rt.group}" if rt.group else rt.kind
    text = str(errs[0]) if len(errs) == 1 else "[" + ", ".join(str(e) for e in errs) + "]"
    details = {"name": name, "kind": rt.kind, "causes": [e.cause() for e in errs]}
    if rt.group:
        details["group"] = rt.group
    return APIError(422, "Invalid", f'{gk} "{name}" is invalid: {text}', details)
