"""Suite-wide rules.

- Tests marked ``root`` need root (network namespaces, iptables). Off CI they skip when not
  root; on CI (``CI=true``) a root test that cannot run *fails*: a skip in CI is a hidden failure.
- On CI, any skipped test fails the session for the same reason.
- ``--tproxy-phase`` selects the tests marked ``exclusive`` (they need the machine to themselves) or
  all the others; ``scripts/run_tests.py`` runs the first set serially, then the second on parallel
  workers. The other set is *deselected*, not skipped (a skip fails a CI run).
"""

import os

import pytest

pytest_plugins = ["kubesim.testing"]

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def pytest_addoption(parser):
    parser.addoption(
        "--kubeconfig",
        default=os.environ.get("TPROXY_E2E_KUBECONFIG") or None,
        help="run the tests marked `cluster` against this real cluster (default: "
        "$TPROXY_E2E_KUBECONFIG); without it they are deselected, not skipped",
    )
    parser.addoption(
        "--tproxy-phase",
        choices=("all", "exclusive", "shared"),
        default="all",
        help="all (default): every test; exclusive: only the tests marked `exclusive`; shared: all the "
        "others (scripts/run_tests.py runs the two sets apart); the rest is deselected, not skipped",
    )


def _deselect(config, items, drop):
    deselected = [i for i in items if drop(i)]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [i for i in items if not drop(i)]


def pytest_collection_modifyitems(config, items):
    phase = config.getoption("--tproxy-phase")
    if phase != "all":
        _deselect(config, items, lambda i: ("exclusive" in i.keywords) != (phase == "exclusive"))
    if phase == "shared":
        # files with `slow` tests first (a stable sort: a file's tests keep their order), so that the
        # workers (a file each, in this order) do not pick up a long end-to-end file last
        slow_files = {i.path for i in items if "slow" in i.keywords}
        items.sort(key=lambda i: i.path not in slow_files)
    if not config.getoption("--kubeconfig"):
        _deselect(config, items, lambda i: "cluster" in i.keywords)
    if os.geteuid() == 0:
        return
    for item in items:
        if "root" in item.keywords:
            if IN_CI:
                item.add_marker(pytest.mark.xfail(reason="needs root", run=False, strict=True))
            else:
                item.add_marker(pytest.mark.skip(reason="needs root (network namespaces, iptables)"))


def pytest_sessionfinish(session, exitstatus):
    if not IN_CI:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter else 0
    xfailed = [
        r for r in (reporter.stats.get("xfailed", []) if reporter else []) if "needs root" in str(getattr(r, "wasxfail", ""))
    ]
    if skipped or xfailed:
        print(f"\nCI: {skipped} skipped and {len(xfailed)} root-only tests did not run; failing the run")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
