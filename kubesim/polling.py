"""``wait_for``: the one polling helper of the tests, bench and namespace helpers.

Standard library only, so scripts run inside network namespaces can import it cheaply;
:mod:`kubesim.testing` re-exports it for the test modules."""
from __future__ import annotations

import time


def wait_for(cond, timeout: float = 20.0, interval: float = 0.05, what: str = "condition",
             retry_on: tuple = ()):
    """Poll ``cond()`` every ``interval`` s until it returns something truthy, and return that.

    After ``timeout`` s raise AssertionError naming ``what`` and the last value seen. Exceptions
    of the types in ``retry_on`` count as a falsy result (the last one is reported)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = cond()
        except retry_on as e:  # noqa: PERF203 - keep polling, report the last error
            last = e
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")
