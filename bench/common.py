"""Shared plumbing for the benchmarks: statistics, machine facts, skip records, timing.

Every benchmark module exposes ``run(cfg: BenchConfig) -> dict``. The dict is JSON-serialisable
and always has a ``status`` key: ``"ok"``, ``"skipped: <reason>"`` (a component is missing or
cannot run here) or ``"error: <reason>"`` (the harness or the component broke). Absolute numbers
on the shared 2-core machines are noise; what the report quotes are *ratios* of figures measured
side by side in the same run, so each module measures its baseline next to the component.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from typing import Any, Callable, Iterable, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass
class BenchConfig:
    """What the command line asked for; modules scale their workloads from ``quick``."""

    quick: bool = False
    out_dir: str = os.path.join(REPO, "bench", "results")
    repeats: int = 3
    verbose: bool = False

    def pick(self, quick_value, full_value):
        return quick_value if self.quick else full_value


class Skip(Exception):
    """Raised by a benchmark when a component it measures is not there (yet) or cannot run."""


def log(msg: str) -> None:
    """Progress on stderr (stdout stays clean for the summary)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def need_module(name: str, *attrs: str):
    """Import ``name`` or raise Skip naming what is missing (a component not landed yet)."""
    if importlib.util.find_spec(name.split(".")[0]) is None:
        raise Skip(f"package {name.split('.')[0]} not found")
    try:
        spec = importlib.util.find_spec(name)
    except ModuleNotFoundError:
        spec = None
    if spec is None:
        raise Skip(f"module {name} not found")
    mod = importlib.import_module(name)
    for attr in attrs:
        if not hasattr(mod, attr):
            raise Skip(f"{name}.{attr} not found")
    return mod


def need_root() -> None:
    from kubesim import netns

    if not netns.available():
        raise Skip("needs root and iproute2 (network namespaces)")


# -- statistics ------------------------------------------------------------------------------
def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank-interpolated percentile (q in 0..100); None for no data."""
    if not values:
        return None
    s = sorted(values)
    if len(s) == 1:
        return float(s[0])
    k = (len(s) - 1) * q / 100.0
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return float(s[lo] + (s[hi] - s[lo]) * (k - lo))


def latency_summary(seconds: Sequence[float]) -> dict:
    """p50/p90/p99/max in milliseconds plus the count."""
    return {
        "n": len(seconds),
        "p50_ms": _ms(percentile(seconds, 50)),
        "p90_ms": _ms(percentile(seconds, 90)),
        "p99_ms": _ms(percentile(seconds, 99)),
        "max_ms": _ms(max(seconds) if seconds else None),
    }


def quantile_sample(values: Sequence[float], k: int = 400, scale: float = 1000.0) -> list[float]:
    """At most ``k`` evenly spaced order statistics (×``scale``, rounded): keeps a distribution's shape
    for CDF plots without storing every sample in latest.json."""
    s = sorted(values)
    if len(s) > k:
        s = [s[round(i * (len(s) - 1) / (k - 1))] for i in range(k)]
    return [round(x * scale, 3) for x in s]


def spread(values: Iterable[float]) -> dict:
    """Median and spread (min, max, relative half-range) of repeated measurements."""
    v = [float(x) for x in values if x is not None]
    if not v:
        return {"median": None, "min": None, "max": None, "rel_spread": None, "runs": []}
    med = statistics.median(v)
    return {
        "median": round(med, 6),
        "min": round(min(v), 6),
        "max": round(max(v), 6),
        "rel_spread": round((max(v) - min(v)) / 2 / med, 4) if med else None,
        "runs": [round(x, 6) for x in v],
    }


def ratio(a: float | None, b: float | None, digits: int = 3) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return round(a / b, digits)


def _ms(x: float | None) -> float | None:
    return None if x is None else round(x * 1000.0, 3)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


# -- machine facts ---------------------------------------------------------------------------
def machine_info() -> dict:
    """Machine, kernel, Python and package versions: the report's header."""

    def meminfo_total() -> int | None:
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemTotal:"):
                        return int(line.split()[1]) // 1024
        except OSError:
            return None
        return None

    def cpu_model() -> str | None:
        try:
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if line.startswith("model name"):
                        return line.split(":", 1)[1].strip()
        except OSError:
            return None
        return None

    def version(dist: str) -> str | None:
        from importlib import metadata

        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    def cmd_version(argv: list[str]) -> str | None:
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=5)
            return (out.stdout or out.stderr).strip().splitlines()[0]
        except Exception:
            return None

    try:
        load = os.getloadavg()
    except OSError:
        load = None
    try:
        commit = (
            subprocess.run(
                ["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5
            ).stdout.strip()
            or None
        )
    except Exception:
        commit = None
    try:  # others commit to the same checkout: say when the measured tree was not exactly the commit
        dirty = [
            ln[3:]
            for ln in subprocess.run(
                ["git", "-C", REPO, "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=5
            ).stdout.splitlines()
        ]
    except Exception:
        dirty = []
    return {
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "hostname": platform.node(),
        "nproc": os.cpu_count(),
        "cpu": cpu_model(),
        "mem_mb": meminfo_total(),
        "kernel": platform.release(),
        "os": _os_release(),
        "python": platform.python_version(),
        "loadavg_at_start": [round(x, 2) for x in load] if load else None,
        "git_commit": commit,
        "git_uncommitted_files": dirty,
        "packages": {
            d: version(d) for d in ("mitmproxy", "kubernetes", "matplotlib", "PyYAML", "prometheus-client", "structlog")
        },
        "tools": {"iptables": cmd_version(["iptables", "--version"])},
    }


def _os_release() -> str | None:
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        return None
    return None


def run_guarded(name: str, fn: Callable[[BenchConfig], dict], cfg: BenchConfig) -> dict:
    """Run one benchmark; a Skip or exception becomes a status string, never a crash of the suite."""
    t0 = time.monotonic()
    try:
        result = fn(cfg)
        result.setdefault("status", "ok")
    except Skip as e:
        result = {"status": f"skipped: {e}"}
    except Exception as e:  # the suite keeps going; the report shows the error
        result = {"status": f"error: {type(e).__name__}: {e}", "traceback": traceback.format_exc()}
    result["elapsed_s"] = round(time.monotonic() - t0, 2)
    log(f"{name}: {result['status']} ({result['elapsed_s']} s)")
    return result


def dump_json(obj: Any, path: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False, default=str)
        f.write("\n")
    os.replace(tmp, path)
