"""Authorities as clients write them: ``host[:port]`` parsing and the default port of a scheme.

Pure functions on strings (no mitmproxy, no I/O), used by the decision (proxy/decision.py) and the
probe (proxy/probe_answer.py).
"""

from __future__ import annotations

from typing import Optional

DEFAULT_PORTS = {"http": 80, "https": 443}


def default_port(scheme: str) -> Optional[int]:
    """80 for http, 443 for https, else None (as ``mitmproxy.net.http.url.default_port``)."""
    return DEFAULT_PORTS.get(scheme)


def split_host_port(authority: str) -> tuple[str, Optional[int]]:
    """``"a.example:8080"`` → ``("a.example", 8080)``; ``"[2001:db8::1]:443"``; bare IPv6 kept whole."""
    a = authority.strip()
    if a.startswith("["):
        host, _, rest = a[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif a.count(":") == 1:
        host, port = a.split(":")
    else:
        host, port = a, ""
    if port and not port.isdigit():
        raise ValueError(f"bad port in {authority!r}")
    return host, (int(port) if port else None)
