"""Typed Kubernetes API errors, built from the API server's ``Status`` bodies.

Why: controllers decide *once*, in one place, what deserves a retry (a conflict, a timeout,
a dropped watch) and what does not (a forbidden verb, an invalid object). Typed errors make
that decision a class check (``is_retryable``) instead of string matching scattered over
every caller, and keep the server's own message readable in logs:
``str(e) == "409 Conflict: the object has been modified ..."``.
"""

from __future__ import annotations

import http
import json
import socket
from typing import Any

__all__ = [
    "ApiError",
    "BadRequest",
    "NotFound",
    "AlreadyExists",
    "Conflict",
    "Gone",
    "Forbidden",
    "Unauthorized",
    "Invalid",
    "Timeout",
    "TooManyRequests",
    "ServerError",
    "StreamError",
    "from_response",
    "is_retryable",
]

_MAX_MESSAGE = 500


class ApiError(Exception):
    """A non-2xx answer from the API server (or an ``ERROR`` watch event).

    ``code`` is the HTTP status, ``reason`` the Status ``reason`` (e.g. ``AlreadyExists``) or the
    HTTP phrase when the body was not a Status, ``message`` the human text and ``status`` the full
    Status dict (synthesised when the body was not one). ``retry_after`` is
    ``details.retryAfterSeconds`` when the server sent one, else ``None``.
    """

    def __init__(self, code: int, reason: str, message: str, status: dict | None = None):
        self.code = int(code)
        self.reason = reason or _phrase(code)
        self.message = message or ""
        self.status = status if status is not None else _synth_status(self.code, self.reason, self.message)
        details = self.status.get("details") if isinstance(self.status, dict) else None
        retry = details.get("retryAfterSeconds") if isinstance(details, dict) else None
        self.retry_after: float | None = float(retry) if isinstance(retry, (int, float)) else None
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"{self.code} {self.reason}: {self.message}" if self.message else f"{self.code} {self.reason}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code}, {self.reason!r}, {self.message!r})"

    def __reduce__(self):  # keep the error picklable despite the custom __init__
        return (type(self), (self.code, self.reason, self.message, self.status))


class BadRequest(ApiError):
    """400 BadRequest (malformed request, e.g. an unparseable patch)."""


class NotFound(ApiError):
    """404 NotFound."""


class AlreadyExists(ApiError):
    """409 with reason AlreadyExists (create of an existing name)."""


class Conflict(ApiError):
    """409 Conflict: stale resourceVersion on update. Retry after re-reading the object."""


class Gone(ApiError):
    """410 Gone / Expired: the resourceVersion is too old to watch from. Relist."""


class Forbidden(ApiError):
    """403 Forbidden (RBAC)."""


class Unauthorized(ApiError):
    """401 Unauthorized (bad or missing token)."""


class Invalid(ApiError):
    """422 Invalid: the object fails validation. Retrying the same object will not help."""


class Timeout(ApiError):
    """504, or reason Timeout/ServerTimeout (e.g. a 1.7 create that waited 30 s for initializers)."""


class TooManyRequests(ApiError):
    """429 TooManyRequests (throttled; see ``retry_after``)."""


class ServerError(ApiError):
    """Any other 5xx (InternalError, ServiceUnavailable, ...)."""


class StreamError(Exception):
    """The connection or the watch stream failed (refused, reset, cut mid-line, garbage). Retryable."""


_BY_REASON: dict[str, type[ApiError]] = {
    "BadRequest": BadRequest,
    "NotFound": NotFound,
    "AlreadyExists": AlreadyExists,
    "Conflict": Conflict,
    "Gone": Gone,
    "Expired": Gone,
    "Forbidden": Forbidden,
    "Unauthorized": Unauthorized,
    "Invalid": Invalid,
    "Timeout": Timeout,
    "ServerTimeout": Timeout,
    "TooManyRequests": TooManyRequests,
    "InternalError": ServerError,
    "ServiceUnavailable": ServerError,
}

_BY_CODE: dict[int, type[ApiError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    410: Gone,
    422: Invalid,
    429: TooManyRequests,
    504: Timeout,
}


def _phrase(code: int) -> str:
    try:
        return http.HTTPStatus(int(code)).phrase.replace(" ", "")
    except ValueError:
        return "Unknown"


def _synth_status(code: int, reason: str, message: str) -> dict:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def _class_for(code: int, reason: str) -> type[ApiError]:
    cls = _BY_REASON.get(reason)
    if cls is not None:
        return cls
    cls = _BY_CODE.get(code)
    if cls is not None:
        return cls
    if 500 <= code <= 599:
        return ServerError
    return ApiError


def from_response(code: int, body: bytes | str | dict | None, headers=None) -> ApiError:
    """See :func:`_from_response`; a ``Retry-After`` header (seconds) fills ``retry_after`` when the
    Status body gave none (a 429 from the API server or a proxy in front of it)."""
    err = _from_response(code, body)
    if err.retry_after is None and headers is not None:
        try:
            value = headers.get("Retry-After")
        except AttributeError:
            value = None
        if value is not None:
            try:
                seconds = float(str(value).strip())
            except ValueError:
                seconds = None  # an HTTP-date: not sent by API servers; ignored
            if seconds is not None and seconds >= 0:
                err.retry_after = seconds
    return err


def _from_response(code: int, body: bytes | str | dict | None) -> ApiError:
    """Build the typed error for an HTTP ``code`` and its body.

    A Kubernetes ``Status`` body gives reason, message and details; anything else (an HTML page
    from a load balancer, plain text, an empty body) still yields the right class by code, with
    the (truncated) text as the message. Never raises.
    """
    status: Any = body
    if isinstance(body, (bytes, bytearray)):
        body = body.decode("utf-8", "replace")
        status = body
    if isinstance(body, str):
        try:
            status = json.loads(body) if body.strip() else None
        except ValueError:
            status = None
    if isinstance(status, dict) and (status.get("kind") == "Status" or "reason" in status or "message" in status):
        try:
            code = int(status.get("code") or code or 0)
        except (TypeError, ValueError):
            pass
        reason = str(status.get("reason") or _phrase(code))
        message = str(status.get("message") or "")
        return _class_for(code, reason)(code, reason, message, status)
    text = body.strip() if isinstance(body, str) else ""
    if len(text) > _MAX_MESSAGE:
        text = text[:_MAX_MESSAGE] + "..."
    reason = _phrase(code)
    return _class_for(int(code or 0), reason)(int(code or 0), reason, text or reason)


_RETRYABLE = (Conflict, Timeout, TooManyRequests, ServerError, StreamError)


def is_retryable(exc: BaseException) -> bool:
    """True when trying the same thing again later may succeed.

    Conflict (re-read and retry), timeouts, throttling, 5xx and connection/stream failures are
    retryable; NotFound, Forbidden, Invalid, AlreadyExists, BadRequest, Unauthorized and Gone (which
    needs a relist, not a retry of the same call) are not.
    """
    if isinstance(exc, _RETRYABLE):
        return True
    if isinstance(exc, ApiError):
        return False
    if isinstance(exc, (ConnectionError, TimeoutError, socket.timeout)):
        return True
    try:
        import urllib3.exceptions as u3

        if isinstance(exc, (u3.HTTPError,)):
            return True
    except ImportError:  # pragma: no cover - urllib3 comes with kubernetes
        pass
    return False
