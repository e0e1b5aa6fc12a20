"""The Initializers wait: a create of an object that gets pending initializers blocks until they
are done (WaitForInitialized, §1b), fail with the result's Status (§4), or time out.
"""

from __future__ import annotations

import queue
import time

from controllerkit.durations import format_go_duration, parse_go_duration

from . import errors
from .errors import APIError
from .store import STOP, Watcher

DEFAULT_CREATE_TIMEOUT = 30.0


class InitWaitMixin:
    """Blocking creates waiting on a per-object watcher queue (no polling)."""

    def _wait_initialized(self, rt, waiter: Watcher, name: str, timeout_param: str) -> dict:
        """WaitForInitialized (§1b) inside finishRequest's timeout."""
        timeout = parse_go_duration(timeout_param) if timeout_param else None
        if timeout is None:
            timeout = DEFAULT_CREATE_TIMEOUT
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                item = waiter.queue.get(timeout=remaining)
            except queue.Empty:
                break
            if item is STOP:
                raise APIError(503, "ServiceUnavailable", "apiserver is shutting down")
            typ, obj = item
            inits = (obj.get("metadata") or {}).get("initializers")
            if typ == "MODIFIED":
                if inits is None:
                    return obj
                if inits.get("result") is not None:
                    raise self._from_status(inits["result"])
            elif typ == "DELETED":
                if inits is not None and inits.get("result") is not None:
                    raise self._from_status(inits["result"])
                raise errors.internal("object deleted while waiting for creation")
        if self.k8s_version == "1.7":
            msg = "Timeout: request did not complete within allowed duration"
        else:
            msg = f"Timeout: request did not complete within requested timeout {format_go_duration(timeout)}"
        raise APIError(504, "Timeout", msg, {})

    @staticmethod
    def _from_status(result: dict) -> APIError:
        """kubeerr.FromObject + ErrorToAPIStatus: code 0 on a Failure becomes 500 (§4)."""
        code = result.get("code") or 500
        e = APIError(int(code), result.get("reason", ""), result.get("message", ""), result.get("details"))
        return e
