"""Pod identity for audit lines: client IP → namespace/name/serviceAccount, from podwatch's file.

podwatch (on the same node) writes ``{"version": 1, "node": ..., "pods": {"<podIP>": {...}}}`` and
replaces it atomically (rename). We re-read it when its stat signature changes, checked at most once
per ``min_interval`` seconds (never per request). A missing or unreadable file means "no identity"
(empty fields), not an error: the proxy must keep filtering even when podwatch is down. A file that
does not parse keeps the last good map (it is replaced atomically, so this is a bug, logged once).
"""

from __future__ import annotations

import functools
import ipaddress
import json
import os
import threading
import time
from typing import Callable

EMPTY = {"namespace": "", "name": "", "serviceAccount": "", "labels": {}}


@functools.lru_cache(maxsize=4096)
def canonical_ip(address: str) -> str:
    """``::ffff:10.0.0.1`` (a v4 client on a dual-stack socket) → ``10.0.0.1``; IPv6 compressed."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return ip.compressed


class IdentityMap:
    def __init__(
        self, path: str = "", *, min_interval: float = 1.0, on_error: Callable[[str], None] | None = None, clock=time.monotonic
    ):
        self.path = path
        self.min_interval = min_interval
        self.on_error = on_error or (lambda msg: None)
        self._clock = clock
        self._lock = threading.Lock()
        self._pods: dict[str, dict] = {}
        self._sig: tuple | None = None
        self._last_check = float("-inf")
        self.node = ""
        self.generation = 0  # bumped whenever the map is replaced: lets callers cache lookups safely
        if path:
            self.refresh(force=True)

    def refresh(self, force: bool = False) -> bool:
        """Re-read the file if it changed; return True when the map was replaced."""
        now = self._clock()
        if not self.path or (not force and now - self._last_check < self.min_interval):
            return False
        self._last_check = now
        try:
            st = os.stat(self.path)
        except OSError:
            changed = self._sig is not None or bool(self._pods)
            with self._lock:
                self._pods, self._sig, self.node = {}, None, ""
                if changed:
                    self.generation += 1
            return changed
        sig = (st.st_ino, st.st_mtime_ns, st.st_size)
        if sig == self._sig:
            return False
        try:
            with open(self.path, encoding="utf-8") as f:
                doc = json.load(f)
            if not isinstance(doc, dict) or not isinstance(doc.get("pods"), dict):
                raise ValueError("expected an object with a 'pods' object")
            if doc.get("version", 1) != 1:
                raise ValueError(f"unsupported version {doc.get('version')!r}")
            pods = {canonical_ip(ip): info for ip, info in doc["pods"].items() if isinstance(info, dict)}
        except RecursionError:
            self._sig = sig
            self.on_error(f"identity file {self.path}: nested too deeply")
            return False
        except (OSError, ValueError) as e:
            self._sig = sig  # do not re-parse the same broken content every second
            self.on_error(f"identity file {self.path}: {e}")
            return False
        with self._lock:
            self._pods, self._sig, self.node = pods, sig, str(doc.get("node", ""))
            self.generation += 1
        return True

    def lookup(self, client_ip: str) -> dict:
        """``{"namespace", "name", "serviceAccount", "labels"}`` for a client address (empty if unknown).

        An address podwatch lists as claimed by more than one pod (``"conflict": true``, podwatch/identity.py)
        has no identity: it gets the default scope until podwatch knows which pod owns it."""
        self.refresh()
        info = self._pods.get(canonical_ip(client_ip))
        if not info or info.get("conflict"):
            return dict(EMPTY)
        labels = info.get("labels")
        return {
            "namespace": str(info.get("namespace", "")),
            "name": str(info.get("name", "")),
            "serviceAccount": str(info.get("serviceAccount", "")),
            "labels": {str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {},
        }

    def __len__(self) -> int:
        return len(self._pods)
