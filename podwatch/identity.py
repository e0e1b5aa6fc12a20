"""Pod identity for the proxy: which pod (namespace, name, service account, labels) owns a source IP.

The proxy sees only the client address of a redirected connection. podwatch already knows the
locked pods on its node, so it publishes the map in a JSON file on a volume the proxy container
shares. The file is replaced atomically (write a temporary file in the same directory, fsync,
rename), so a reader never sees half a file; it is rewritten only when its content changes.

Format (version 1)::

    {"version": 1, "node": "node-1",
     "pods": {"10.0.0.5": {"namespace": "default", "name": "web", "serviceAccount": "default",
                           "labels": {"app": "web"}, "uid": "..."},
              "10.0.0.9": {"conflict": true, "claimants": ["a/old", "b/new"]}}}
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Iterable

from .rules import LockedPod

VERSION = 1


def document(node: str, pods: Iterable[LockedPod]) -> dict:
    """The identity document. An address two pods claim at once (an IP reused while the old pod's
    rules are still kept) names neither: ``{"conflict": true, "claimants": [...]}``, which the proxy
    reads as "no identity" (the default scope), never as one of the two."""
    entries: dict[str, dict] = {}
    claimants: dict[str, list[str]] = {}
    for p in sorted(pods, key=lambda p: (p.ip, p.namespace, p.name)):
        claimants.setdefault(p.ip, []).append(f"{p.namespace}/{p.name}")
        entries[p.ip] = {
            "namespace": p.namespace,
            "name": p.name,
            "serviceAccount": p.service_account,
            "labels": dict(p.labels),
            "uid": p.uid,
        }
    for ip, who in claimants.items():
        if len(who) > 1:
            entries[ip] = {"conflict": True, "claimants": who}
    return {"version": VERSION, "node": node, "pods": entries}


def render(node: str, pods: Iterable[LockedPod]) -> str:
    return json.dumps(document(node, pods), indent=1, sort_keys=True) + "\n"


class IdentityFile:
    """Writes the identity document to ``path`` when it changed. ``path`` empty = disabled."""

    def __init__(self, path: str, node: str):
        self.path, self.node = path, node
        self._last: str | None = None

    def update(self, pods: Iterable[LockedPod]) -> bool:
        """Write if changed; return True when the file was (re)written. Raises OSError."""
        if not self.path:
            return False
        text = render(self.node, pods)
        if text == self._last and os.path.exists(self.path):
            return False
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".identity-", dir=directory)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, self.path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        self._last = text
        return True

    def remove(self) -> None:
        if self.path:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
