"""How many CPUs this process may use: the scheduler affinity, capped by the cgroup CPU quota.

``os.cpu_count()`` is the node's count; a container limited to 2 CPUs (``resources.limits.cpu``,
i.e. a CFS quota) or pinned to 2 cores (cpuset) must not start one proxy worker per node core.
"""

from __future__ import annotations

import math
import os

CGROUP_ROOT = "/sys/fs/cgroup"


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return None


def quota_cpus(root: str = CGROUP_ROOT) -> float | None:
    """The CFS quota in CPUs (``cpu.max`` of cgroup v2, ``cpu.cfs_quota_us`` of v1), None when unlimited."""
    v2 = _read(os.path.join(root, "cpu.max"))
    if v2:
        quota_v2, _, period_v2 = v2.partition(" ")
        if quota_v2 != "max" and period_v2:
            try:
                return int(quota_v2) / int(period_v2)
            except ValueError:
                return None
        return None
    quota_s = _read(os.path.join(root, "cpu", "cpu.cfs_quota_us")) or _read(os.path.join(root, "cpu.cfs_quota_us"))
    period_s = _read(os.path.join(root, "cpu", "cpu.cfs_period_us")) or _read(os.path.join(root, "cpu.cfs_period_us"))
    try:
        quota, period = int(quota_s or -1), int(period_s or 0)
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def usable_cpus(root: str = CGROUP_ROOT) -> int:
    """CPUs this process may run on (affinity), capped by the quota rounded up; at least 1."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - Linux has it
        n = os.cpu_count() or 1
    quota = quota_cpus(root)
    if quota is not None:
        n = min(n, max(1, math.ceil(quota)))
    return max(1, n)
