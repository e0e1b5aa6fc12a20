"""Every component's command line takes flags only as spelled out (controllerkit.cli).

Python's argparse prefix-matches options (and, in 3.11, even single-dash long ones with
allow_abbrev=False): ``-namespac x`` would silently mean ``-namespace x``. Go's flag package, whose
spellings the components keep, never does; neither do we.
"""
import subprocess
import sys

import pytest

from controllerkit.cli import ExactArgumentParser
from initializer.__main__ import build_parser as initializer_parser
from podwatch.__main__ import build_parser as podwatch_parser
from sidecar.__main__ import build_parser as sidecar_parser


@pytest.mark.parametrize("build,argv", [
    (podwatch_parser, ["-namespac", "x"]),
    (podwatch_parser, ["-annotatio=x"]),
    (podwatch_parser, ["--node-nam", "n"]),
    (podwatch_parser, ["-hostPor=8080"]),
    (initializer_parser, ["-annotatio", "x"]),
    (initializer_parser, ["--metrics-por=1"]),
    (sidecar_parser, ["--dry"]),
    (sidecar_parser, ["--no-ver"]),
])
def test_a_prefix_of_a_flag_is_refused(build, argv, capsys):
    with pytest.raises(SystemExit) as e:
        build().parse_args(argv)
    assert e.value.code == 2
    assert f"unrecognized arguments: {argv[0]}" in capsys.readouterr().err


@pytest.mark.parametrize("build,argv,dest,value", [
    (podwatch_parser, ["-namespace", "team-a"], "namespace", "team-a"),
    (podwatch_parser, ["-namespace=team-a"], "namespace", "team-a"),
    (podwatch_parser, ["--hostPort", "9090"], "host_port", 9090),
    (initializer_parser, ["-annotation", "a/b"], "annotation", "a/b"),
    (sidecar_parser, ["--dry-run"], "dry_run", True),
])
def test_spelled_out_flags_still_work(build, argv, dest, value):
    assert getattr(build().parse_args(argv), dest) == value


def test_values_are_not_taken_for_flags():
    p = ExactArgumentParser(prog="t")
    p.add_argument("--name")
    p.add_argument("--on", action="store_true")
    args = p.parse_args(["--name=-x", "--on"])
    assert args.name == "-x" and args.on
    assert p.parse_args(["--name", "-5"]).name == "-5"  # a negative number is a value


@pytest.mark.parametrize("module,flag", [("podwatch", "-namespac"), ("sidecar", "--dry")])
def test_the_entry_points_exit_2_with_the_reason(module, flag):
    proc = subprocess.run([sys.executable, "-m", module, flag, "x"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "flags must be spelled out" in proc.stderr
