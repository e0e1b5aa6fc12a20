"""The sidecar proves interception before the app starts: exit 0 only when the proxy echoes our nonce."""

from __future__ import annotations

import os
import subprocess

import pytest

from capture_topology import PROBE_ENV, REPO, CaptureNet
from podwatch import rules
from sidecar import verify

START = os.path.join(REPO, "sidecar", "start.sh")
PORT_OK, PORT_BAD, PORT_NOTHING, PORT_REAL = 18080, 18081, 18082, 18090


def test_retries_until_ok_and_classifies_failures():
    answers = iter([verify.Attempt(verify.NO_ANSWER, "x"), verify.Attempt(verify.REFUSED, "y"), verify.Attempt(verify.OK, "z")])
    ok, _ = verify.verify(5, prober=lambda t: next(answers))
    assert ok
    ok, msg = verify.verify(0, node="n1", prober=lambda t: verify.Attempt(verify.NO_ANSWER, "timeout"))
    assert not ok and "node redirect missing (is podwatch running on node n1?)" in msg
    ok, msg = verify.verify(0, prober=lambda t: verify.Attempt(verify.WRONG_ANSWER, "HTTP 200"))
    assert not ok and "something other than the tproxy proxy answered" in msg


@pytest.fixture(scope="module")
def net():
    net = CaptureNet.create()
    try:
        for name in ("nothing", "good", "nononce", "refused"):
            net.add_pod(name)
        net.serve(net.node, "proxy", f"tcp:0.0.0.0:{PORT_OK}", mode="probe-ok")
        net.serve(net.node, "impostor", f"tcp:0.0.0.0:{PORT_BAD}", mode="tag")
        yield net
    finally:
        net.delete()


def redirect(net, pod: str, port: int):
    """Stand in for podwatch: one pod's tcp 80/443 to the node's ``port``."""
    text = rules.render([rules.LockedPod(ip=net.pod_ips[pod][0], namespace="default", name=pod)], port)
    nat = text["ipv4"]["nat"].replace(f":{rules.REDIRECT_CHAIN} - [0:0]", f":TEST-{pod[:8]} - [0:0]")
    nat = nat.replace(rules.REDIRECT_CHAIN, f"TEST-{pod[:8]}")
    rules.restore("ipv4", "nat", nat, rules.netns_runner(net.node.name))


def run_sidecar(net, pod: str, timeout: int = 2):
    env = {**PROBE_ENV, "NODE_NAME": "node-1", "ALLOW_DNS": "any", "TPROXY_VERIFY_TIMEOUT": str(timeout)}
    return subprocess.run(net.pods[pod].exec_argv([START]), env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.root
def test_fails_when_nothing_intercepts(net):
    proc = run_sidecar(net, "nothing")
    assert proc.returncode == 1
    assert "node redirect missing (is podwatch running on node node-1?)" in proc.stderr


@pytest.mark.root
def test_succeeds_when_the_proxy_echoes_the_nonce(net):
    redirect(net, "good", PORT_OK)
    proc = run_sidecar(net, "good", timeout=10)
    assert proc.returncode == 0, proc.stderr
    assert '"event": "verified"' in proc.stderr


@pytest.mark.root
def test_an_answer_without_the_nonce_does_not_count(net):
    redirect(net, "nononce", PORT_BAD)
    proc = run_sidecar(net, "nononce")
    assert proc.returncode == 1
    assert "something other than the tproxy proxy answered" in proc.stderr
    assert "no X-Tproxy-Probe header" in proc.stderr


@pytest.mark.root
def test_redirect_to_a_closed_port_is_named(net):
    redirect(net, "refused", PORT_NOTHING)
    proc = run_sidecar(net, "refused")
    assert proc.returncode == 1
    assert "something other than the tproxy proxy answered (connection refused" in proc.stderr


@pytest.mark.root
def test_keeps_probing_until_the_redirect_appears(net):
    """The usual order in a cluster: the pod starts before podwatch has programmed its IP."""
    pod = net.add_pod("late")
    env = {**PROBE_ENV, "NODE_NAME": "node-1", "ALLOW_DNS": "any", "TPROXY_VERIFY_TIMEOUT": "20"}
    proc = subprocess.Popen(pod.exec_argv([START]), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        seen = []
        for line in proc.stderr:  # wait until it has really failed at least once
            seen.append(line)
            if '"event": "probe_failed"' in line:
                break
        assert proc.poll() is None, "".join(seen)
        redirect(net, "late", PORT_OK)
        _, rest = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, "".join(seen) + rest
    assert '"event": "verified"' in rest


@pytest.mark.root
def test_verify_false_skips_the_proof(net):
    env = {**PROBE_ENV, "ALLOW_DNS": "any", "TPROXY_VERIFY": "false"}
    proc = subprocess.run(net.pods["nothing"].exec_argv([START]), env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "verify_skipped" in proc.stderr


@pytest.fixture(scope="module")
def real_proxy(net, tmp_path_factory):
    """The real proxy (mitmdump + tproxy addon) on the node, listening on PORT_REAL."""
    import sys
    import time

    tmp = tmp_path_factory.mktemp("mitm")
    policy = tmp / "policy.yaml"
    policy.write_text("mode: enforce\nrules: []\n")
    mitmdump = os.path.join(os.path.dirname(sys.executable), "mitmdump")
    err = open(tmp / "mitmdump.err", "w")
    proc = net.node.popen(
        [
            mitmdump,
            "--mode",
            "transparent",
            "--listen-port",
            str(PORT_REAL),
            "--set",
            f"confdir={tmp / 'conf'}",
            "-s",
            os.path.join(REPO, "proxy", "addon.py"),
            "--set",
            "connection_strategy=lazy",
            "--set",
            f"tproxy_policy={policy}",
            "--set",
            "tproxy_audit=" + str(tmp / "audit.jsonl"),
        ],
        stdout=err,
        stderr=err,
    )
    net.procs.append(proc)
    deadline = time.monotonic() + 30
    while f":{PORT_REAL}" not in net.node.run("ss", "-ltn").stdout:
        assert proc.poll() is None and time.monotonic() < deadline, (tmp / "mitmdump.err").read_text()[-2000:]
        time.sleep(0.1)
    return proc


@pytest.mark.root
def test_the_real_proxy_satisfies_the_probe(net, real_proxy):
    net.add_pod("real")
    redirect(net, "real", PORT_REAL)
    proc = run_sidecar(net, "real", timeout=20)
    assert proc.returncode == 0, proc.stderr
    assert '"event": "verified"' in proc.stderr


def test_a_server_that_closes_without_answering_is_not_the_proxy():
    import socket
    import threading

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    port = srv.getsockname()[1]

    def serve():
        conn, _ = srv.accept()
        conn.recv(1024)
        conn.close()

    t = threading.Thread(target=serve)
    t.start()
    try:
        att = verify.probe_once(2, address="127.0.0.1", port=port)
    finally:
        t.join(5)
        srv.close()
    assert att.outcome == verify.WRONG_ANSWER and "without an HTTP answer" in att.detail
    assert "something other than the tproxy proxy answered" in verify.explain(att, "n1")
