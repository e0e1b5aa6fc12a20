"""Baselines that tproxy's components are measured against, reimplemented here on purpose.

- :func:`original_add_pod` / :func:`original_delete_pod`: the original tutorial's podwatch
  algorithm (danisla/kubernetes-tproxy ``tproxy-podwatch``): per pod, list the nat PREROUTING
  chain (``iptables -t nat -L``), look for the pod by regex over the listing, and append one
  ``iptables -A`` rule per port (80, 443). Deleting greps the listing by pod name and deletes
  by line number. One process per call, the chain grows linearly, so the cost per pod grows
  with the number of pods already programmed.
- The bare GET+PUT Initializer client lives in :mod:`bench.bare_initializer`.
"""
from __future__ import annotations

import re
import subprocess

PORTS = (80, 443)


def _ipt(*args: str, check: bool = True) -> str:
    p = subprocess.run(["iptables", *args], capture_output=True, text=True)
    if check and p.returncode != 0:
        raise RuntimeError(f"iptables {' '.join(args)}: {p.stderr.strip()}")
    return p.stdout


def original_add_pod(name: str, ip: str, host_port: int = 8080) -> bool:
    """Program one pod the original way; return False if it already had rules."""
    listing = _ipt("-t", "nat", "-L", "PREROUTING", "-n")
    if re.search(r"/\* tproxy: " + re.escape(name) + r" \*/", listing):
        return False
    for port in PORTS:
        _ipt("-t", "nat", "-A", "PREROUTING", "-s", ip, "-p", "tcp", "--dport", str(port),
             "-m", "comment", "--comment", f"tproxy: {name}",
             "-j", "REDIRECT", "--to-ports", str(host_port))
    return True


def original_delete_pod(name: str) -> int:
    """Delete a pod's rules the original way (regex by name, delete by line number, highest first)."""
    listing = _ipt("-t", "nat", "-L", "PREROUTING", "-n", "--line-numbers")
    nums = [int(line.split()[0]) for line in listing.splitlines()
            if re.search(r"tproxy: " + re.escape(name), line)]  # the original's prefix match bug, kept
    for n in sorted(nums, reverse=True):
        _ipt("-t", "nat", "-D", "PREROUTING", str(n))
    return len(nums)
