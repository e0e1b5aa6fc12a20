"""Chaos soak of tproxy in the simulated cluster (issue 21, item 2). ``python -m soak --help``."""
