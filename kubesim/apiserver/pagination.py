"""List chunking (``limit`` / ``continue``), served from 1.9 on (beta in 1.13); 1.7 ignores both.

The continue token is the real server's: URL-safe base64 (no padding) of
``{"v":"meta.k8s.io/v1","rv":R,"start":"<namespace>/<name>\\u0000"}``, the key to resume after and the
resourceVersion of the first page. Simplification: later pages are read from the current state, not
from a snapshot at ``R`` (kubesim keeps no old states), so an object created between pages after the
resume key does show up.
"""

from __future__ import annotations

import base64
import json

from .errors import APIError


def _bad(msg: str) -> APIError:
    return APIError(400, "BadRequest", msg)


def _key(o: dict) -> str:
    m = o.get("metadata") or {}
    return f"{m.get('namespace', '')}/{m.get('name', '')}" if m.get("namespace") else m.get("name", "")


def encode(rv: int, last_key: str) -> str:
    raw = json.dumps({"v": "meta.k8s.io/v1", "rv": rv, "start": last_key + "\x00"}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode(token: str) -> tuple[int, str]:
    try:
        raw = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        if raw.get("v") != "meta.k8s.io/v1":
            raise ValueError("server does not recognize this encoded key")
        return int(raw["rv"]), str(raw["start"])
    except (ValueError, KeyError, TypeError) as e:
        raise _bad(f"continue key is not valid: {e}") from None


def page(items: list[dict], query: dict, rv: int, k8s_version: str) -> tuple[list[dict], dict]:
    """(items of this page, extra list metadata) for the request's ``limit``/``continue``."""
    if k8s_version == "1.7":
        return items, {}
    limit_s, token = query.get("limit", ""), query.get("continue", "")
    extra = {}
    if token:
        if query.get("resourceVersion") not in (None, "", "0"):
            raise _bad("specifying resource version is not allowed when using continue")
        first_rv, start = decode(token)
        items = [o for o in items if _key(o) >= start]  # strictly after the last key
        extra["resourceVersion"] = str(first_rv)
    try:
        limit = int(limit_s) if limit_s else 0
    except ValueError:
        raise _bad(f"invalid limit {limit_s!r}") from None
    if limit > 0 and len(items) > limit:
        items = items[:limit]
        extra["continue"] = encode(int(extra.get("resourceVersion", rv)), _key(items[-1]))
    return items, extra
