"""``python -m soak [--minutes 10] [--report DIR] [--seed N]``: the chaos soak; exit 0 only if every
invariant held (see soak/README.md)."""

import json
import os
import sys

from controllerkit.cli import ExactArgumentParser


def main(argv=None) -> int:
    ap = ExactArgumentParser(prog="python -m soak", description=__doc__)
    ap.add_argument("--minutes", type=float, default=10.0, help="how long the chaos runs (default 10)")
    ap.add_argument("--ci", action="store_true", help="the 2-minute CI variant (same as --minutes 2)")
    ap.add_argument("--report", default="soak-report", help="directory for report.md, results.json and PNGs")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--max-live", type=int, default=12, help="deployments alive at once (default 12)")
    a = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("soak: needs root (network namespaces, iptables)", file=sys.stderr)
        return 2
    minutes = 2.0 if a.ci else a.minutes
    if not 0 < minutes <= 120:
        ap.error("--minutes must be in (0, 120]")
    import signal

    def interrupted(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)  # stop the cluster (pods, namespaces) on `timeout` / kill
    from soak.run import Soak

    results = Soak(minutes, a.report, seed=a.seed, max_live=a.max_live, log=lambda m: print(m, flush=True)).run()
    print(
        json.dumps(
            {
                "ok": results["ok"],
                "invariants": results["invariants"],
                "creates": results["creates"]["total"],
                "report": os.path.abspath(a.report),
            },
            indent=1,
        )
    )
    return 0 if results["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
