"""Run the whole test suite (`make test`); exit non-zero when it fails *or* when no test ran.

Two phases, so that the suite uses both cores without load disturbing the tests that need quiet:

1. the tests marked ``exclusive`` (they saturate the cores or judge rates, CPU shares or timings:
   the chaos soak, the benchmark smoke run, the busy-machine run), serially, with the machine to
   themselves;
2. every other test on ``TPROXY_TEST_WORKERS`` pytest-xdist workers (default 4), a test file per
   worker (``--dist loadfile``: a file's module fixtures, e.g. one simulated cluster, stay in one
   process). In this phase deadlines are doubled (``TPROXY_TEST_TIMEOUT_SCALE=2`` unless set): four
   workers share two cores, and a deadline is a "give up" bound, never a timing assertion.

``TPROXY_TEST_WORKERS=1`` runs everything in one plain serial session, as before. Arguments go to
pytest in both phases (``PYTEST_ARGS="-k proxy" make test``); a phase that selects nothing is fine as
long as the other one ran something.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Mapping

NO_TESTS_COLLECTED = 5  # pytest.ExitCode.NO_TESTS_COLLECTED
DEFAULT_WORKERS = 4
WORKERS_ENV = "TPROXY_TEST_WORKERS"
SCALE_ENV = "TPROXY_TEST_TIMEOUT_SCALE"  # kubesim.polling.SCALE_ENV; this script imports nothing of ours
PARALLEL_SCALE = "2"


def workers(env: Mapping[str, str]) -> int:
    """The xdist worker count from ``TPROXY_TEST_WORKERS``; a bad value is an error, not a default."""
    raw = env.get(WORKERS_ENV, "").strip()
    if not raw:
        return DEFAULT_WORKERS
    if not raw.isdigit() or int(raw) < 1:
        raise SystemExit(f"run_tests: {WORKERS_ENV}={raw!r}: must be a whole number >= 1")
    return int(raw)


def phases(args: list[str], env: Mapping[str, str]) -> list[tuple[str, list[str], dict[str, str]]]:
    """(name, pytest arguments, environment overrides) of each phase, in order."""
    n = workers(env)
    if n == 1:
        return [("all tests, serially", ["--tproxy-phase=all", *args], {})]
    return [
        ("exclusive tests, serially", ["--tproxy-phase=exclusive", *args], {}),
        (
            f"shared tests on {n} workers",
            ["--tproxy-phase=shared", "-n", str(n), "--dist", "loadfile", *args],
            {SCALE_ENV: env.get(SCALE_ENV, "").strip() or PARALLEL_SCALE},
        ),
    ]


def combine(codes: list[int]) -> int:
    """One exit code for the run: the first failing phase's code; 1 when no phase ran a test."""
    for code in codes:
        if code not in (0, NO_TESTS_COLLECTED):
            return code
    if all(code == NO_TESTS_COLLECTED for code in codes):
        print("run_tests: no test ran; treating that as a failure", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str]) -> int:
    env = dict(os.environ)
    env.setdefault("TPROXY_HELM", os.path.abspath(".tools/bin/helm"))
    codes = []
    for name, args, overrides in phases(argv, env):
        print(f"run_tests: {name}: pytest {' '.join(args)}", flush=True)
        t0 = time.monotonic()
        code = subprocess.call([sys.executable, "-m", "pytest", *args], env={**env, **overrides})
        print(f"run_tests: {name}: exit {code} after {time.monotonic() - t0:.0f} s", flush=True)
        codes.append(code)
    return combine(codes)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
