"""The policy file's hot reload: an asyncio task on mitmproxy's event loop polls the file.

Started by the addon's ``running`` hook and cancelled by ``done``. Every ``POLL_SECONDS`` it stats
the file (inode, mtime, size: a ConfigMap's symlink swap changes the inode) and judges each new
version once: a valid one is installed for the next request without dropping connections; an
invalid one logs ``policy_rejected`` with the reason, counts
``tproxy_policy_reloads_total{result="error"}`` and keeps the last good policy. A policy given by
``--set tproxy_policy=`` goes through the addon's ``configure`` instead (an invalid one is an
``OptionsError``, which rolls the option back) and is then watched from its version.
"""
from __future__ import annotations

import asyncio
import os
from typing import Callable

import structlog

from proxy.policy import Policy, PolicyError

POLL_SECONDS = 0.5

log = structlog.get_logger()


def signature(path: str):
    """``(inode, mtime_ns, size)`` of ``path``, None when it cannot be stat'ed."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


class PolicyWatch:
    """``current()`` is the policy in force, ``install(policy)`` puts a new one in force (metrics,
    ``policy_loaded`` line); both belong to the addon."""

    def __init__(self, current: Callable[[], Policy], install: Callable[[Policy], None], metrics,
                 poll_seconds: float = POLL_SECONDS):
        self.current = current
        self.install = install
        self.metrics = metrics
        self.poll_seconds = poll_seconds
        self.path = ""          # the file in force ("" = the built-in policy: nothing to watch)
        self._sig = None        # the version of it last judged
        self._task: asyncio.Task | None = None

    def watching(self, path: str) -> None:
        """``path`` (its current version) is now the policy in force (set by ``configure``)."""
        self.path = path
        self._sig = signature(path) if path else None

    def check(self) -> bool:
        """Reload the file if it changed; keep the last good policy if it is invalid.

        Returns True when a new policy was installed. Called by the task every ``poll_seconds``;
        tests call it directly."""
        path = self.path
        if not path:
            return False
        sig = signature(path)
        if sig == self._sig:
            return False
        self._sig = sig  # judge each version of the file once
        try:
            policy = Policy.load(path)
        except PolicyError as e:
            kept = self.current()
            self.metrics.policy_reloads.labels("error").inc()
            log.error("policy_rejected", path=path, error=str(e), kept=kept.source, kept_rules=len(kept.rules))
            return False
        self.install(policy)
        return True

    def start(self) -> None:
        """Start polling on the running event loop (idempotent)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._poll(), name="tproxy-policy-watch")

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_seconds)
            try:
                self.check()
            except Exception as e:  # noqa: BLE001 - the watch must survive anything
                log.error("policy_watch_failed", error=repr(e))
