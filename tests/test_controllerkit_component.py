"""controllerkit.component: the start/stop block both controllers' mains share."""

import signal
import socket
import subprocess
import sys

import pytest

from controllerkit.component import Lifecycle, StartupError, fail
from controllerkit.log import get_logger

KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
"""


def test_a_signal_sets_stop_and_runs_the_signal_callbacks():
    life = Lifecycle(get_logger(component="t"), install_signals=False)
    called = []
    life.on_signal(lambda: called.append("now"))
    life._handle(signal.SIGTERM, None)
    assert life.stop.is_set() and called == ["now"]
    order = []
    life.shutdown(lambda: order.append(1), lambda: order.append(2))
    assert order == [1, 2]


def test_a_taken_metrics_port_is_a_startup_error_with_the_components_code():
    life = Lifecycle(get_logger(component="t"), install_signals=False)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(StartupError) as e:
            life.serve_health(port, "127.0.0.1", lambda: True, exit_code=7)
    assert e.value.code == 7 and f"cannot serve metrics on port {port}" in str(e.value)
    assert life.serve_health(0, "127.0.0.1", lambda: True, exit_code=7) is None  # 0 = off


def test_fail_logs_and_tells_the_shell_user(capsys):
    assert fail(get_logger(component="t"), "prog", 3, "bad", "what went wrong") == 3
    assert "prog: what went wrong" in capsys.readouterr().err


def test_podwatch_says_why_when_its_metrics_port_is_taken(tmp_path):
    kc = tmp_path / "kubeconfig"
    kc.write_text(KUBECONFIG)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "podwatch",
                "--kubeconfig",
                str(kc),
                "--node-name",
                "n",
                "--metrics-host",
                "127.0.0.1",
                "--metrics-port",
                str(port),
                "--iptables-backend",
                "nft",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert proc.returncode == 2
    assert f"cannot serve metrics on port {port}" in proc.stderr
