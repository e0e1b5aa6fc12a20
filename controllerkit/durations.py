"""Go durations (``30s``, ``1m30s``, ``500ms``), as flags, timeouts and the API server's
``?timeout=`` use them. Standard library only; one parser for the components and kubesim."""

from __future__ import annotations

import re

_DURATION = re.compile(r"(\d+(?:\.\d*)?)(ns|us|µs|ms|s|m|h)")
_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_go_duration(text: str) -> float | None:
    """Seconds from a Go duration (``1m30s``, ``500ms``, ``1.5h``), or None when it is not one.

    A bare number is not a Go duration (Go's time.ParseDuration refuses it, except ``0``)."""
    s = str(text).strip()
    if not s:
        return None
    if s == "0":
        return 0.0
    pos, total = 0, 0.0
    for m in _DURATION.finditer(s):
        if m.start() != pos:
            return None
        total += float(m.group(1)) * _UNIT[m.group(2)]
        pos = m.end()
    return total if pos == len(s) else None


def parse_seconds(text: str) -> float | None:
    """Seconds from a plain number (``30``, ``2.5``) or a Go duration; None when it is neither."""
    try:
        return float(str(text).strip())
    except ValueError:
        return parse_go_duration(text)


def format_go_duration(seconds: float) -> str:
    """``90`` → ``1m30s``, ``30`` → ``30s``, ``0.5`` → ``0.5s`` (as the 1.7 server's messages print them)."""
    if seconds == int(seconds):
        sec = int(seconds)
        if sec >= 60:
            m, s = divmod(sec, 60)
            return f"{m}m{s}s"
        return f"{sec}s"
    return f"{seconds}s"
