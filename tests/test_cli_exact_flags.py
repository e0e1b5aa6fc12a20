"""Every component's command line takes flags only as spelled out (controllerkit.cli).

Python's argparse prefix-matches options (and, in 3.11, even single-dash long ones with
allow_abbrev=False): ``-namespac x`` would silently mean ``-namespace x``. Go's flag package, whose
spellings the components keep, never does; neither do we.
"""

import os
import subprocess
import sys

import pytest

from controllerkit.cli import ExactArgumentParser
from initializer.__main__ import build_parser as initializer_parser
from podwatch.__main__ import build_parser as podwatch_parser
from sidecar.__main__ import build_parser as sidecar_parser


@pytest.mark.parametrize(
    "build,argv",
    [
        (podwatch_parser, ["-namespac", "x"]),
        (podwatch_parser, ["-annotatio=x"]),
        (podwatch_parser, ["--node-nam", "n"]),
        (podwatch_parser, ["-hostPor=8080"]),
        (podwatch_parser, ["-vmodul=x"]),  # not "-v" with "modul=x" attached: Go never attaches values
        (initializer_parser, ["-annotatio", "x"]),
        (initializer_parser, ["--metrics-por=1"]),
        (sidecar_parser, ["--dry"]),
        (sidecar_parser, ["--no-ver"]),
    ],
)
def test_a_prefix_of_a_flag_is_refused(build, argv, capsys):
    with pytest.raises(SystemExit) as e:
        build().parse_args(argv)
    assert e.value.code == 2
    assert f"unrecognized arguments: {argv[0]}" in capsys.readouterr().err


@pytest.mark.parametrize(
    "build,argv,dest,value",
    [
        (podwatch_parser, ["-namespace", "team-a"], "namespace", "team-a"),
        (podwatch_parser, ["-namespace=team-a"], "namespace", "team-a"),
        (podwatch_parser, ["--hostPort", "9090"], "host_port", 9090),
        (initializer_parser, ["-annotation", "a/b"], "annotation", "a/b"),
        (sidecar_parser, ["--dry-run"], "dry_run", True),
    ],
)
def test_spelled_out_flags_still_work(build, argv, dest, value):
    assert getattr(build().parse_args(argv), dest) == value


def test_values_are_not_taken_for_flags():
    p = ExactArgumentParser(prog="t")
    p.add_argument("--name")
    p.add_argument("--on", action="store_true")
    args = p.parse_args(["--name=-x", "--on"])
    assert args.name == "-x" and args.on
    assert p.parse_args(["--name", "-5"]).name == "-5"  # a negative number is a value


@pytest.mark.parametrize(
    "module,flag", [("podwatch", "-namespac"), ("sidecar", "--dry"), ("proxy.workers", "--worker"), ("proxy.policy", "--polic")]
)
def test_the_entry_points_exit_2_with_the_reason(module, flag):
    proc = subprocess.run([sys.executable, "-m", module, flag, "x"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "flags must be spelled out" in proc.stderr


# ---- the development CLIs: kubesim (every subcommand), bench, soak and the scripts ---------------
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(argv):
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=120, cwd=REPO)


@pytest.mark.parametrize(
    "argv,flag",
    [
        (["-m", "kubesim", "--verbose", "serve"], "--verbose"),
        (["-m", "kubesim", "serve", "--kubeconfig", "/nonexistent/kc", "--liste", "127.0.0.1:0"], "--liste"),
        (["-m", "kubesim", "serve", "--kubeconfig=/nonexistent/kc", "--k8s-versio=1.13"], "--k8s-versio=1.13"),
        (["-m", "kubesim", "apply", "-f", "x.yaml", "--dry"], "--dry"),
        (["-m", "kubesim", "apply", "-f", "x.yaml", "--namespac", "a"], "--namespac"),
        (["-m", "kubesim", "logs", "pod", "--tai", "3"], "--tai"),
        (["-m", "kubesim", "kubelet", "--node-nam", "n"], "--node-nam"),
        (["-m", "kubesim", "demo", "--k8s-vers", "1.13"], "--k8s-vers"),
        (["-m", "kubesim.upstream", "--bind", "192.0.2.1", "--metadat"], "--metadat"),
        (["-m", "kubesim.kubelet.launch", "--spec", "x.json"], "--spec"),
        (["-m", "bench", "--quic"], "--quic"),
        (["-m", "bench", "--only", "kubesim", "--no-plot"], "--no-plot"),
        (["-m", "bench.loadgen", "https://192.0.2.1/", "--cafil", "x"], "--cafil"),
        (["-m", "bench.podwatch_worker", "--alg", "ours", "--pods", "1"], "--alg"),
        (["-m", "bench.podwatch_e2e_worker", "--pod", "1"], "--pod"),
        (["-m", "bench.bare_initializer", "--kubeconfi", "x"], "--kubeconfi"),
        (["-m", "bench.probe_standin", "--por", "1"], "--por"),
        (["-m", "bench.idle_client", "--host", "www.google.com", "--parall", "5"], "--parall"),
        (["-m", "soak", "--ci", "--minute", "1"], "--minute"),
        (["scripts/fetch_helm.py", "--dest", "x"], "--dest"),
        (["scripts/fetch_k8s_schemas.py", "--force"], "--force"),
        (["scripts/fetch_k8s_definitions.py", "--force"], "--force"),
        (["scripts/gen_k8s_protos.py", "--kubect", "x"], "--kubect"),
    ],
)
def test_every_development_cli_refuses_prefixes_and_unknown_flags(argv, flag):
    proc = _run(argv)
    assert proc.returncode == 2, proc.stderr
    assert f"unrecognized arguments: {flag} (flags must be spelled out" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_the_container_launcher_names_an_unreadable_spec_without_a_traceback(tmp_path):
    bad = tmp_path / "launch.json"
    bad.write_text("{not json")
    for path in (str(bad), str(tmp_path / "missing.json")):
        proc = _run(["-m", "kubesim.kubelet.launch", path])
        assert proc.returncode == 127
        assert f"kubesim: container start failed: launch spec {path}: " in proc.stderr
        assert "Traceback" not in proc.stderr


def test_a_misspelt_check_flag_writes_nothing():
    """`gen_api_catalog.py --chec` used to be taken as "no --check", and rewrote the committed file."""
    path = os.path.join(REPO, "kubesim", "apiserver", "schema_catalog.py")
    before = os.stat(path).st_mtime_ns, open(path).read()
    proc = _run(["scripts/gen_api_catalog.py", "--chec"])
    assert proc.returncode == 2 and "unrecognized arguments: --chec" in proc.stderr
    assert (os.stat(path).st_mtime_ns, open(path).read()) == before
    assert _run(["scripts/gen_api_catalog.py", "--check"]).returncode == 0


class _Parsed(Exception):
    """Raised by a stand-in subcommand ``run`` to stop kubesim's main() once it has parsed."""


@pytest.mark.parametrize(
    "argv,dest,value",
    [
        (["apply", "-f", "x.yaml", "-nteam-a"], "namespace", "team-a"),  # a short flag's attached value
        (["apply", "-f", "x.yaml", "--namespace=team-a"], "namespace", "team-a"),
        (["apply", "--filename", "a.yaml", "-f", "b.yaml"], "filename", ["a.yaml", "b.yaml"]),
        (["logs", "-n", "apply", "mypod"], "namespace", "apply"),  # a value that is a subcommand's name
        (["serve", "--kubeconfig", "kc", "--k8s-version", "1.13"], "k8s_version", "1.13"),
    ],
)
def test_kubesim_subcommands_take_spelled_out_flags(argv, dest, value, monkeypatch):
    import importlib

    import kubesim.__main__ as cli

    def run(args):
        raise _Parsed(args)

    monkeypatch.setattr(importlib.import_module(cli.SUBCOMMANDS[argv[0]][0]), "run", run)
    with pytest.raises(_Parsed) as parsed:
        cli.main(argv)
    assert getattr(parsed.value.args[0], dest) == value


def test_a_subcommand_flag_before_the_subcommand_is_refused(capsys):
    import kubesim.__main__ as cli

    with pytest.raises(SystemExit) as e:
        cli.main(["--kubeconfig", "kc", "serve"])
    assert e.value.code == 2
    assert "unrecognized arguments: --kubeconfig" in capsys.readouterr().err


def test_bench_parses_its_spelled_out_flags():
    from bench.__main__ import parse_args

    args = parse_args(["--quick", "--only", "kubesim,proxy", "--no-plots"])
    assert args.quick and args.no_plots and args.names == ["kubesim", "proxy"]
