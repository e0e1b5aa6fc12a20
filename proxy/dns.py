"""Resolving the policy host: the system resolver through the event loop, behind a short cache.

The cache only saves the thread hop of ``getaddrinfo`` (the largest cost of a decision): every
request's addresses are still checked against ``deny_ranges``, and its connection is pinned to
the address that was checked (proxy/pinning.py).
"""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Awaitable, Callable

from proxy.policy import is_ip_literal

DNS_CACHE_SECONDS = 2.0
MAX_ENTRIES = 4096

Resolver = Callable[[str, int], Awaitable[list]]


async def system_resolve(host: str, port: int) -> list[str]:
    """All addresses of ``host`` (TCP), in the resolver's order, through the event loop (non-blocking)."""
    if is_ip_literal(host):
        return [host.strip("[]")]
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    seen: list[str] = []
    for *_, sockaddr in infos:
        addr = str(sockaddr[0])
        if addr not in seen:
            seen.append(addr)
    return seen


class DnsCache:
    """``resolver``'s answers for ``(host, port)``, kept ``ttl`` seconds. ``resolver`` is
    injectable (unit tests); ``entries`` may be cleared at any time."""

    def __init__(self, resolver: Resolver = system_resolve, ttl: float = DNS_CACHE_SECONDS):
        self.resolver = resolver
        self.ttl = ttl
        self.entries: dict[tuple[str, int], tuple[float, list[str]]] = {}

    async def resolve(self, host: str, port: int) -> list[str]:
        now = time.monotonic()
        hit = self.entries.get((host, port))
        if hit and hit[0] > now:
            return hit[1]
        addresses = await self.resolver(host, port)
        if len(self.entries) > MAX_ENTRIES:
            self.entries.clear()
        self.entries[(host, port)] = (now + self.ttl, addresses)
        return addresses
