"""Fault injection: what real API servers do to controllers, on demand and reproducibly.

Spec syntax (``--faults``), comma-separated ``key=value``:

=================  ======================================================================
``conflict=P``      fraction P of updates (PUT, and PATCHes carrying metadata.resourceVersion)
                    answered 409 Conflict, nothing written
``error500=P``      fraction P of resource requests answered 500 InternalError, nothing done
``gone=P``          fraction P of watches started with a resourceVersion answered with a
                    410 ERROR event (as if the resourceVersion had left the window)
``watch_cut_after=N`` every watch stream is closed after N events
``watch_cut=P``     after each event, the watch stream is closed with probability P
``latency_ms=N``    every resource request is delayed N milliseconds
=================  ======================================================================

Each fault kind draws from its own ``random.Random`` seeded from ``(seed, kind)``, so the n-th
decision of a kind is the same in every run with the same seed. Requests carrying the header
``X-Kubesim-No-Faults: 1`` are exempt (handy for test set-up against a faulty server).
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field

_PROB = ("conflict", "error500", "gone", "watch_cut")
_INT = ("watch_cut_after", "latency_ms")


@dataclass
class FaultSpec:
    conflict: float = 0.0
    error500: float = 0.0
    gone: float = 0.0
    watch_cut: float = 0.0
    watch_cut_after: int = 0
    latency_ms: int = 0
    seed: int = 0
    _rngs: dict = field(default_factory=dict, repr=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @classmethod
    def parse(cls, spec: str | None, seed: int = 0) -> "FaultSpec":
        """Parse ``"conflict=0.2,watch_cut_after=50"``; raise ValueError with a clear message."""
        fs = cls(seed=seed)
        if not spec:
            return fs
        for item in spec.split(","):
            item = item.strip()
            if not item:
                continue
            key, sep, val = item.partition("=")
            key = key.strip()
            if not sep:
                raise ValueError(f"fault {item!r}: expected key=value")
            if key in _PROB:
                try:
                    p = float(val)
                except ValueError:
                    raise ValueError(f"fault {key}: {val!r} is not a number") from None
                if not 0.0 <= p <= 1.0:
                    raise ValueError(f"fault {key}: probability {p} is outside [0, 1]")
                setattr(fs, key, p)
            elif key in _INT:
                try:
                    n = int(val)
                except ValueError:
                    raise ValueError(f"fault {key}: {val!r} is not an integer") from None
                if n < 0:
                    raise ValueError(f"fault {key}: {n} is negative")
                setattr(fs, key, n)
            else:
                raise ValueError(f"unknown fault {key!r}; known: {', '.join(_PROB + _INT)}")
        return fs

    def roll(self, kind: str) -> bool:
        """Draw the next decision for ``kind``: True means inject the fault."""
        p = getattr(self, kind)
        if p <= 0:
            return False
        with self._lock:
            rng = self._rngs.get(kind)
            if rng is None:
                rng = self._rngs[kind] = random.Random(f"{self.seed}:{kind}")
            return rng.random() < p

    @property
    def active(self) -> bool:
        return any(getattr(self, k) for k in _PROB + _INT)

    def describe(self) -> str:
        return ",".join(f"{k}={getattr(self, k)}" for k in _PROB + _INT if getattr(self, k))
