"""scripts/run_tests.py, `make test`'s driver: the exclusive tests serially, then the rest on
pytest-xdist workers; one exit code; a run in which no test ran fails.

The phase logic is checked directly; the end-to-end tests run the real script on a small suite of
their own (a tests/ tree written here, with this repository's conftest.py and setup.cfg).
"""

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "scripts"))
import run_tests  # noqa: E402


# -- the phases' pytest arguments ------------------------------------------------------------
def test_by_default_the_exclusive_tests_run_first_then_the_others_on_four_workers_a_file_each():
    (name1, args1, env1), (name2, args2, env2) = run_tests.phases(["-k", "proxy"], {})
    assert args1 == ["--tproxy-phase=exclusive", "-k", "proxy"] and env1 == {}
    assert args2 == ["--tproxy-phase=shared", "-n", "4", "--dist", "loadfile", "-k", "proxy"]
    assert env2 == {"TPROXY_TEST_TIMEOUT_SCALE": "2"}  # four workers on two cores: deadlines doubled
    assert "exclusive" in name1 and "4 workers" in name2


def test_a_deadline_scale_the_user_set_is_kept_in_the_parallel_phase():
    _, (_, _, env2) = run_tests.phases([], {"TPROXY_TEST_TIMEOUT_SCALE": "3"})
    assert env2 == {"TPROXY_TEST_TIMEOUT_SCALE": "3"}


def test_the_worker_count_comes_from_the_environment():
    _, (_, args2, _) = run_tests.phases([], {"TPROXY_TEST_WORKERS": "3"})
    assert args2[:5] == ["--tproxy-phase=shared", "-n", "3", "--dist", "loadfile"]


def test_one_worker_is_one_plain_serial_session_as_before():
    assert run_tests.phases(["tests/test_x.py", "-q"], {"TPROXY_TEST_WORKERS": "1"}) == [
        ("all tests, serially", ["--tproxy-phase=all", "tests/test_x.py", "-q"], {})
    ]


@pytest.mark.parametrize("bad", ["0", "-2", "four", "1.5"])
def test_a_bad_worker_count_is_refused_not_defaulted(bad):
    with pytest.raises(SystemExit, match=rf"TPROXY_TEST_WORKERS='{bad}': must be a whole number >= 1"):
        run_tests.phases([], {"TPROXY_TEST_WORKERS": bad})


# -- one exit code -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "codes, expected",
    [
        ([0, 0], 0),
        ([5, 0], 0),  # -k selected no exclusive test: fine, the other phase ran tests
        ([0, 5], 0),
        ([5, 5], 1),  # nothing ran at all: a failure
        ([1, 0], 1),  # a failure in either phase fails the run
        ([0, 1], 1),
        ([5, 1], 1),
        ([2, 0], 2),  # interrupted / usage error keeps its code
        ([0, 3], 3),
        ([5], 1),  # TPROXY_TEST_WORKERS=1: one session, no test ran
        ([0], 0),
        ([1], 1),
    ],
)
def test_exit_codes_combine_into_one(codes, expected, capsys):
    assert run_tests.combine(codes) == expected
    assert ("no test ran" in capsys.readouterr().err) == all(c == 5 for c in codes)


def test_main_runs_each_phase_as_its_own_pytest_and_combines_their_codes(monkeypatch):
    calls = []

    def call(argv, env):
        calls.append((argv, env))
        return [5, 1][len(calls) - 1]

    monkeypatch.setattr(run_tests.subprocess, "call", call)
    monkeypatch.delenv("TPROXY_TEST_WORKERS", raising=False)
    monkeypatch.delenv("TPROXY_TEST_TIMEOUT_SCALE", raising=False)
    assert run_tests.main(["-x"]) == 1
    (argv1, env1), (argv2, env2) = calls
    assert argv1 == [sys.executable, "-m", "pytest", "--tproxy-phase=exclusive", "-x"]
    assert argv2 == [sys.executable, "-m", "pytest", "--tproxy-phase=shared", "-n", "4", "--dist", "loadfile", "-x"]
    assert "TPROXY_TEST_TIMEOUT_SCALE" not in env1 and env2["TPROXY_TEST_TIMEOUT_SCALE"] == "2"
    assert env1["TPROXY_HELM"] == env2["TPROXY_HELM"] and env1["TPROXY_HELM"].endswith(".tools/bin/helm")


# -- end to end: the real script on a small suite ------------------------------------------------
SUITE = {
    "test_exclusive.py": """
        import os, pytest

        @pytest.mark.exclusive
        def test_exclusive():
            assert "PYTEST_XDIST_WORKER" not in os.environ  # the exclusive phase runs without workers
        """,
    "test_a.py": """
        import os

        def test_a():
            assert os.environ["PYTEST_XDIST_WORKER"].startswith("gw")
            assert os.environ["TPROXY_TEST_TIMEOUT_SCALE"] == "2"
        """,
    "test_b.py": """
        def test_b():
            assert True
        """,
}


def _suite(tmp_path, files):
    (tmp_path / "tests").mkdir()
    shutil.copy(os.path.join(REPO, "tests", "conftest.py"), tmp_path / "tests" / "conftest.py")
    shutil.copy(os.path.join(REPO, "setup.cfg"), tmp_path / "setup.cfg")
    for name, text in files.items():
        (tmp_path / "tests" / name).write_text(textwrap.dedent(text))


def _run(tmp_path, *args, workers="2", ci="false"):
    # this test may itself run on an xdist worker: the inner run must not inherit that
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "TPROXY_TEST_"))}
    env.update(TPROXY_TEST_WORKERS=workers, CI=ci, PYTHONPATH=REPO)
    return subprocess.run(
        [sys.executable, os.path.join(REPO, "scripts", "run_tests.py"), "-p", "no:cacheprovider", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_both_phases_run_and_every_test_runs_once(tmp_path):
    _suite(tmp_path, SUITE)
    p = _run(tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "run_tests: exclusive tests, serially: exit 0" in p.stdout
    assert "run_tests: shared tests on 2 workers: exit 0" in p.stdout
    assert "1 passed, 2 deselected" in p.stdout  # phase 1: the exclusive test only
    assert "2 workers [2 items]" in p.stdout and "2 passed" in p.stdout  # phase 2: the others
    assert "skipped" not in p.stdout  # the other phase's tests are deselected, not skipped


def test_one_worker_runs_everything_in_one_session(tmp_path):
    _suite(tmp_path, {**SUITE, "test_a.py": "import os\ndef test_a():\n    assert 'PYTEST_XDIST_WORKER' not in os.environ\n"})
    p = _run(tmp_path, workers="1")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "run_tests: all tests, serially: exit 0" in p.stdout and "3 passed" in p.stdout
    assert "shared tests" not in p.stdout


def test_a_failure_in_the_parallel_phase_fails_the_run(tmp_path):
    _suite(tmp_path, {**SUITE, "test_b.py": "def test_b():\n    assert False, 'boom'\n"})
    p = _run(tmp_path)
    assert p.returncode == 1 and "boom" in p.stdout, p.stdout
    assert "run_tests: exclusive tests, serially: exit 0" in p.stdout


def test_a_failure_in_the_exclusive_phase_fails_the_run_and_the_others_still_run(tmp_path):
    _suite(
        tmp_path, {**SUITE, "test_exclusive.py": "import pytest\n@pytest.mark.exclusive\ndef test_exclusive():\n    assert 0\n"}
    )
    p = _run(tmp_path)
    assert p.returncode == 1, p.stdout
    assert "run_tests: shared tests on 2 workers: exit 0" in p.stdout


def test_a_skip_on_ci_fails_the_parallel_phase_too(tmp_path):
    _suite(tmp_path, {**SUITE, "test_b.py": "import pytest\ndef test_b():\n    pytest.skip('no tool')\n"})
    p = _run(tmp_path, ci="true")
    assert p.returncode == 1, p.stdout
    assert "CI: 1 skipped and 0 root-only tests did not run; failing the run" in p.stdout


def test_a_filter_selecting_nothing_in_one_phase_passes_and_nothing_anywhere_fails(tmp_path):
    _suite(tmp_path, SUITE)
    p = _run(tmp_path, "-k", "test_b")  # no exclusive test selected: the other phase ran one
    assert p.returncode == 0, p.stdout + p.stderr
    assert "run_tests: exclusive tests, serially: exit 5" in p.stdout and "2 workers [1 item]" in p.stdout
    p = _run(tmp_path, "-k", "no_such_test")
    assert p.returncode == 1 and "no test ran" in p.stderr, p.stdout + p.stderr
