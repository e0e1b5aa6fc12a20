"""``wait_for``: the one polling helper of the tests, bench and namespace helpers, and the one
deadline knob.

Standard library only, so scripts run inside network namespaces can import it cheaply;
:mod:`kubesim.testing` re-exports it for the test modules.

Deadlines scale with ``TPROXY_TEST_TIMEOUT_SCALE`` (a positive number, default 1): a loaded machine
sets e.g. 3 and every wait in the helpers, the e2e fixtures and ``SimCluster.wait_pods`` gets three
times as long. A deadline is only ever a "give up and say why" bound, never a timing assertion: a
condition that holds returns at once, whatever the scale.
"""

from __future__ import annotations

import os
import time

SCALE_ENV = "TPROXY_TEST_TIMEOUT_SCALE"


def timeout_scale() -> float:
    """The factor from ``TPROXY_TEST_TIMEOUT_SCALE`` (default 1). A value that is not a positive
    number is an error, not silently 1: a typo must not shorten every deadline."""
    raw = os.environ.get(SCALE_ENV, "").strip()
    if not raw:
        return 1.0
    try:
        v = float(raw)
    except ValueError:
        raise ValueError(f"{SCALE_ENV}={raw!r}: not a number") from None
    if not v > 0 or v != v or v == float("inf"):
        raise ValueError(f"{SCALE_ENV}={raw!r}: must be a positive finite number")
    return v


def scaled(seconds: float) -> float:
    """``seconds`` times the deadline scale."""
    return seconds * timeout_scale()


def wait_for(cond, timeout: float = 20.0, interval: float = 0.05, what: str = "condition", retry_on: tuple = ()):
    """Poll ``cond()`` every ``interval`` s until it returns something truthy, and return that.

    ``timeout`` is multiplied by the deadline scale. After it, raise AssertionError naming ``what``
    and the last value seen. Exceptions of the types in ``retry_on`` count as a falsy result (the
    last one is reported)."""
    budget = scaled(timeout)
    deadline = time.monotonic() + budget
    last = None
    while True:
        try:
            last = cond()
        except retry_on as e:  # noqa: PERF203 - keep polling, report the last error
            last = e
        else:
            if last:
                return last
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    scale = timeout_scale()
    how_long = f"{budget:g}s" + (f" ({timeout:g}s x {SCALE_ENV}={scale:g})" if scale != 1 else "")
    raise AssertionError(f"timed out after {how_long} waiting for {what}; last value: {last!r}")
