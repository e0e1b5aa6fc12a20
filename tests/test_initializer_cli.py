"""initializer CLI: the original Go flags (single dash) and double-dash spellings."""

import os
import subprocess
import sys

import pytest

from initializer.__main__ import build_parser, main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse(*argv):
    return build_parser().parse_args(list(argv))


def test_defaults_match_the_original_binary():
    a = parse()
    assert a.annotation == "initializer.kubernetes.io/tproxy"
    assert a.configmap == "tproxy-initializer"
    assert a.initializer_name == "tproxy.initializer.kubernetes.io"
    assert a.namespace == "default"
    assert a.require_annotation is False
    assert a.kubeconfig is None and a.metrics_port == 9180 and a.workers == 2 and a.resync_period == 30.0
    assert a.exclude_namespaces == []


def test_original_manifest_args_parse():
    # The original chart's container args.
    a = parse(
        "-annotation=initializer.kubernetes.io/tproxy",
        "-require-annotation=true",
        "-configmap=tproxy-tproxy-initializer",
        "-namespace=kube-system",
    )
    assert a.require_annotation is True and a.namespace == "kube-system"
    assert a.configmap == "tproxy-tproxy-initializer"


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["-require-annotation"], True),
        (["--require-annotation"], True),
        (["-require-annotation=false"], False),
        (["--require-annotation=TRUE"], True),
        (["-require-annotation=0"], False),
        (["-require-annotation", "-namespace", "x"], True),
    ],
)
def test_require_annotation_bool_forms(argv, expected):
    assert parse(*argv).require_annotation is expected


def test_double_dash_and_space_separated_values():
    a = parse(
        "--annotation",
        "a/b",
        "-configmap",
        "cm",
        "--initializer-name=x.y.z",
        "--namespace",
        "ns",
        "--kubeconfig",
        "/k",
        "--metrics-port",
        "0",
        "--exclude-namespaces",
        "kube-system, ,tproxy",
        "--workers",
        "8",
        "--resync-period",
        "1m30s",
        "--log-level",
        "debug",
    )
    assert (a.annotation, a.configmap, a.initializer_name, a.namespace, a.kubeconfig) == ("a/b", "cm", "x.y.z", "ns", "/k")
    assert a.metrics_port == 0 and a.workers == 8 and a.resync_period == 90.0 and a.log_level == "debug"
    assert a.exclude_namespaces == ["kube-system", "tproxy"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["-require-annotation=maybe"], "invalid boolean 'maybe'"),
        (["--workers", "0"], "workers must be >= 1"),
        (["--metrics-port", "70000"], "port must be 0..65535"),
        (["--resync-period", "soon"], "invalid duration 'soon'"),
        (["--resync-period", "0s"], "duration must be positive"),
        (["-annotatio", "x"], "unrecognized arguments"),
    ],
)
def test_bad_flags_are_clear_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        parse(*argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("spelling", ["--help", "-help", "-h"])
def test_help_spellings(spelling, capsys):
    with pytest.raises(SystemExit) as exc:
        parse(spelling)
    assert exc.value.code == 0 and "-require-annotation" in capsys.readouterr().out


def test_help_documents_every_flag():
    out = subprocess.run([sys.executable, "-m", "initializer", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0
    for flag in (
        "-annotation",
        "-configmap",
        "-initializer-name",
        "-namespace",
        "-require-annotation",
        "--kubeconfig",
        "--metrics-port",
        "--exclude-namespaces",
        "--workers",
        "--resync-period",
        "--log-level",
    ):
        assert flag in out.stdout


@pytest.fixture
def restore_logging():
    """main() configures structlog globally; put the defaults back so later tests do not log into a
    closed capture stream."""
    import logging

    import structlog

    yield
    structlog.reset_defaults()
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_controllerkit_handler", False):
            root.removeHandler(h)


def test_missing_cluster_config_is_a_clear_error(tmp_path, capsys, monkeypatch, restore_logging):
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    rc = main(["--kubeconfig", str(tmp_path / "nope"), "--metrics-port", "0"])
    assert rc == 1
    assert "does not exist" in capsys.readouterr().err


def test_metrics_port_in_use_is_a_clear_error(tmp_path, capsys, restore_logging):
    import socket

    kc = tmp_path / "kubeconfig"
    kc.write_text("""apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
""")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        rc = main(["--kubeconfig", str(kc), "--metrics-host", "127.0.0.1", "--metrics-port", str(port)])
    assert rc == 1
    assert f"cannot serve metrics on port {port}" in capsys.readouterr().err
