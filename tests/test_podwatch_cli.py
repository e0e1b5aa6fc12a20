"""podwatch's command line: the original Go binary's flags still work; bad input is a clear error."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from podwatch.__main__ import build_parser

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize(
    "argv,port,ns",
    [
        (["-hostPort", "9090"], 9090, ""),
        (["-hostPort=9091", "-namespace=kube-system"], 9091, "kube-system"),
        (["--host-port", "9092"], 9092, ""),
        (["--hostPort=9093", "-namespace", "default", "-logtostderr", "-v=2"], 9093, "default"),  # the original chart + glog
    ],
)
def test_go_style_and_gnu_style_flags(argv, port, ns):
    args = build_parser().parse_args(argv)
    assert (args.host_port, args.namespace, args.annotation) == (port, ns, "initializer.kubernetes.io/tproxy")


def test_defaults_port_8080_all_namespaces_node_from_env(monkeypatch):
    monkeypatch.setenv("NODE_NAME", "node-7")
    args = build_parser().parse_args([])
    assert (args.host_port, args.namespace, args.node_name) == (8080, "", "node-7")
    assert (args.identity_file, args.metrics_port, args.cleanup) == ("", 9101, False)


def run(*argv, env=None):
    return subprocess.run(
        [sys.executable, "-m", "podwatch", *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PYTHONPATH": REPO, "NODE_NAME": "n1", **(env or {})},
    )


def test_help():
    out = run("--help")
    assert out.returncode == 0 and "-hostPort" in out.stdout and "--identity-file" in out.stdout


@pytest.mark.parametrize(
    "argv,msg",
    [
        (["-hostPort", "70000"], "-hostPort 70000 is not a TCP port"),
        (["--resync-period", "0"], "--resync-period > 0"),
        (["--kubeconfig", "/nonexistent/kubeconfig"], "kubeconfig '/nonexistent/kubeconfig' (from --kubeconfig) does not exist"),
        (["--log-level", "loud"], "unknown log level 'loud'"),
        (
            ["--iptables-backend", "xtables"],
            "--iptables-backend / $TPROXY_IPTABLES_BACKEND: 'xtables' is not an iptables backend (auto, legacy, nft)",
        ),
    ],
)
def test_bad_input_is_a_clear_error(argv, msg):
    out = run(*argv, "--metrics-port", "0")
    assert out.returncode == 2 and msg in out.stderr


def test_a_bad_backend_from_the_environment_is_a_clear_error():
    out = run("--metrics-port", "0", env={"TPROXY_IPTABLES_BACKEND": "iptables-nft"})
    assert out.returncode == 2 and "'iptables-nft' is not an iptables backend (auto, legacy, nft)" in out.stderr


def test_the_flag_defaults_to_the_environment_then_auto(monkeypatch):
    monkeypatch.delenv("TPROXY_IPTABLES_BACKEND", raising=False)
    assert build_parser().parse_args([]).iptables_backend == "auto"
    monkeypatch.setenv("TPROXY_IPTABLES_BACKEND", "legacy")
    assert build_parser().parse_args([]).iptables_backend == "legacy"
