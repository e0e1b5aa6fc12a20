"""One backoff for every retry loop: capped exponential, jittered, honouring a server's Retry-After.

Standard library only (the sidecar uses it too). Every component that retries (the informer, the
work queue, the initializer's ConfigMap watches, podwatch's sync loop, the sidecar's interception
proof, the simulated kubelet's container restarts) takes its delays from here, so the policy is
written once: ``initial * factor**attempt``, capped at ``cap``, multiplied by a random factor in
``[1 - jitter, 1 + jitter]`` (still capped) so that many clients do not retry in lockstep, and never
less than what the server asked for (a 429's ``Retry-After`` / ``details.retryAfterSeconds``).
"""

from __future__ import annotations

import random
from typing import Callable, Optional


def exponential(
    attempt: int,
    initial: float,
    cap: float,
    *,
    factor: float = 2.0,
    jitter: float = 0.0,
    rand: Callable[[], float] = random.random,
) -> float:
    """The delay before retry number ``attempt`` (0 = the first retry)."""
    if initial < 0 or cap < initial or factor < 1 or not 0 <= jitter < 1:
        raise ValueError("need 0 <= initial <= cap, factor >= 1 and 0 <= jitter < 1")
    base = min(cap, initial * factor ** min(max(attempt, 0), 64))
    if jitter:
        base *= 1 - jitter + 2 * jitter * rand()
    return min(cap, base)


class Backoff:
    """A retry loop's delays: ``next()`` after each failure, ``reset()`` after a success."""

    def __init__(
        self, initial: float, cap: float, *, factor: float = 2.0, jitter: float = 0.2, rand: Callable[[], float] = random.random
    ):
        exponential(0, initial, cap, factor=factor, jitter=jitter)  # validates the parameters
        self.initial, self.cap, self.factor, self.jitter, self._rand = initial, cap, factor, jitter, rand
        self.attempt = 0

    def next(self, retry_after: Optional[float] = None) -> float:
        """The delay before the next try; at least ``retry_after`` when the server asked for one."""
        delay = exponential(self.attempt, self.initial, self.cap, factor=self.factor, jitter=self.jitter, rand=self._rand)
        self.attempt += 1
        if retry_after is not None and retry_after > delay:
            delay = float(retry_after)
        return delay

    def reset(self) -> None:
        self.attempt = 0


def retry_after_of(exc: BaseException) -> Optional[float]:
    """What the server asked a client to wait (``ApiError.retry_after``), if anything."""
    value = getattr(exc, "retry_after", None)
    return float(value) if isinstance(value, (int, float)) and value >= 0 else None
