"""Adapter from the benchmark's pod dicts to tproxy podwatch's API (``podwatch.rules.sync``).

``sync`` is exactly what the controller runs per sync: read the live jumps, render both
families and both tables (nat redirect + filter guard), one ``iptables-restore --noflush`` per
(family, table). Raises ImportError (recorded as "skipped") when podwatch is missing.
"""

from __future__ import annotations


class _Adapter:
    def __init__(self, host_port: int):
        from podwatch import rules

        self.rules = rules
        self.host_port = host_port

    def sync(self, pods: list[dict]) -> None:
        locked = [self.rules.LockedPod(ip=p["ip"], namespace=p["namespace"], name=p["name"]) for p in pods]
        res = self.rules.sync(locked, self.host_port)
        if res.failed:
            raise RuntimeError(f"podwatch.rules.sync failed: {res.failed}")


def load(host_port: int = 8080) -> _Adapter:
    return _Adapter(host_port)
