"""BASELINE ONLY - the original tutorial's per-pod podwatch algorithm, for bench/ comparisons.

Do not use in the product: this is a faithful Python rendering of danisla/kubernetes-tproxy's
``tproxy-podwatch/main.go`` ``syncFirewall`` so that benchmarks can measure tproxy's
:func:`podwatch.rules.sync` against it side by side, in the same namespace setup. It keeps the
original's flaws on purpose:

* per pod, one ``iptables -t nat -L PREROUTING --line-numbers`` listing and a regex over it;
* rules appended straight to ``PREROUTING`` (no owned chain), one ``iptables -A`` per port;
* rules found by pod *name* (comment ``tproxy-<name>``, regex ``REDIRECT.*tproxy-<name>``), so
  deleting pod ``web`` also matches ``web-2``'s rules, and two namespaces collide;
* deletion by rule number, highest first, one ``iptables -D`` per rule;
* IPv4 only, no guard, nothing atomic.

``runner(argv) -> CompletedProcess`` can wrap ``ip netns exec`` (see :func:`podwatch.rules.netns_runner`).
"""

from __future__ import annotations

import re
import subprocess
from typing import Callable, Sequence

Runner = Callable[..., subprocess.CompletedProcess]


def _run(runner: Runner | None, argv: Sequence[str]) -> subprocess.CompletedProcess:
    if runner is not None:
        return runner(argv, None)
    return subprocess.run(list(argv), capture_output=True, text=True)


def check_firewall(pattern: str, runner: Runner | None = None) -> list[int]:
    """``checkFirewall``: rule numbers in nat PREROUTING whose line matches ``REDIRECT.*<pattern>``."""
    out = _run(runner, ["iptables", "-w", "-t", "nat", "-L", "PREROUTING", "--line-numbers"])
    if out.returncode != 0:
        raise RuntimeError(f"iptables -L failed: {out.stderr.strip()}")
    return [int(m.group(1)) for m in re.finditer(rf"(?m)^([0-9]+).*REDIRECT.*{pattern}.*$", out.stdout)]


def add_firewall(ip: str, comment: str, host_port: int, runner: Runner | None = None) -> None:
    """``addFirewall``: one ``iptables -A PREROUTING`` per port (443, then 80)."""
    for port in ("443", "80"):
        out = _run(
            runner,
            [
                "iptables",
                "-w",
                "-t",
                "nat",
                "-A",
                "PREROUTING",
                "-s",
                ip,
                "-p",
                "tcp",
                "--dport",
                port,
                "-j",
                "REDIRECT",
                "-m",
                "comment",
                "--comment",
                comment,
                "--to-ports",
                str(host_port),
            ],
        )
        if out.returncode != 0:
            raise RuntimeError(f"iptables -A failed: {out.stderr.strip()}")


def remove_firewall(index: int, runner: Runner | None = None) -> None:
    out = _run(runner, ["iptables", "-w", "-t", "nat", "-D", "PREROUTING", str(index)])
    if out.returncode != 0:
        raise RuntimeError(f"iptables -D {index} failed: {out.stderr.strip()}")


def sync_pod(name: str, ip: str | None, host_port: int = 8080, *, exists: bool = True, runner: Runner | None = None) -> None:
    """``syncFirewall`` for one pod key: add its rules if missing, or remove them when it is gone."""
    indices = check_firewall(name, runner)
    if not exists:
        for index in sorted(indices, reverse=True):
            remove_firewall(index, runner)
        return
    if not ip:
        return
    if not indices:
        add_firewall(ip, f"tproxy-{name}", host_port, runner)
