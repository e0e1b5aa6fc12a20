"""The policy file's hot reload: an asyncio task on mitmproxy's event loop polls the file.

Started by the addon's ``running`` hook and cancelled by ``done``. Every ``POLL_SECONDS`` it stats
the file (inode, mtime, size: a ConfigMap's symlink swap changes the inode) and judges each new
version once: a valid one is installed for the next request without dropping connections; an
invalid one logs ``policy_rejected`` with the reason, counts
``tproxy_policy_reloads_total{result="error"}`` and keeps the last good policy. A policy given by
``--set tproxy_policy=`` goes through the addon's ``configure`` instead (an invalid one is an
``OptionsError``, which rolls the option back) and is then watched from its version.

A changed file is parsed in a worker thread (a 10,000-rule policy takes a second or more) and put in
force on the event loop, so requests keep being served meanwhile and the policy is only ever
swapped by the loop's own thread; a result that ``configure`` overtook while it was parsed is dropped.
"""

from __future__ import annotations

import asyncio
import os
from typing import Callable

import structlog

from proxy.policy import PolicyError
from proxy.scopes import ScopedPolicy

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

    def __init__(
        self,
        current: Callable[[], ScopedPolicy],
        install: Callable[[ScopedPolicy], None],
        metrics,
        poll_seconds: float = POLL_SECONDS,
    ):
        self.current = current
        self.install = install
        self.metrics = metrics
        self.poll_seconds = poll_seconds
        self.path = ""  # the file in force ("" = the built-in policy: nothing to watch)
        self._sig = None  # the version of it last judged
        self._generation = 0  # bumped by watching(): a parse started before is stale
        self._task: asyncio.Task | None = None

    def watching(self, path: str) -> None:
        """``path`` (its current version) is now the policy in force (set by ``configure``)."""
        self.path = path
        self._sig = signature(path) if path else None
        self._generation += 1

    def check(self) -> bool:
        """Reload the file if it changed; keep the last good policy if it is invalid.

        Returns True when a new policy was installed. Parses on the calling thread (tests; the
        task uses :meth:`check_in_thread`)."""
        path = self._changed()
        if path is None:
            return False
        return self._apply(path, *self._load(path))

    async def check_in_thread(self) -> bool:
        """:meth:`check`, with the file parsed in a worker thread."""
        path = self._changed()
        if path is None:
            return False
        generation = self._generation
        result = await asyncio.to_thread(self._load, path)
        if generation != self._generation:  # configure put another policy in force meanwhile
            return False
        return self._apply(path, *result)

    def _changed(self) -> str | None:
        """The watched path if its file changed since it was last judged (each version is judged once)."""
        path = self.path
        if not path:
            return None
        sig = signature(path)
        if sig == self._sig:
            return None
        self._sig = sig
        return path

    @staticmethod
    def _load(path: str) -> tuple[ScopedPolicy | None, PolicyError | None]:
        try:
            return ScopedPolicy.load(path), None
        except PolicyError as e:
            return None, e

    def _apply(self, path: str, policy: ScopedPolicy | None, error: PolicyError | None) -> bool:
        if error is not None:
            kept = self.current()
            self.metrics.policy_reloads.labels("error").inc()
            log.error("policy_rejected", path=path, error=str(error), kept=kept.source, kept_rules=len(kept.rules))
            return False
        assert policy is not None  # _parse gives a policy or an error
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
                await self.check_in_thread()
            except Exception as e:  # noqa: BLE001 - the watch must survive anything
                log.error("policy_watch_failed", error=repr(e))
