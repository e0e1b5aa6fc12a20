"""The iptables backend (legacy or nft): detection as kube-proxy's wrapper does it, the override,
and the sidecar's lock and podwatch's redirect with each backend in real network namespaces,
including namespaces that already hold legacy rules (a 1.7-era node with kube-proxy)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from capture_topology import INET4, PROBE_ENV, REPO, CaptureNet
from controllerkit import iptables
from podwatch import rules
from sidecar import lock

START = os.path.join(REPO, "sidecar", "start.sh")
HOST_PORT = 18080
LOCK_ENV = {**PROBE_ENV, "ALLOW_DNS": "203.0.113.53", "TPROXY_VERIFY": "false"}


# -- detection, pure (a fake runner answers the *-save calls) ------------------------------------
def fake_saves(nft4="", nft6="", legacy4="", legacy6="", fail=()):
    outputs = {
        "iptables-nft-save": nft4,
        "ip6tables-nft-save": nft6,
        "iptables-legacy-save": legacy4,
        "ip6tables-legacy-save": legacy6,
    }

    def run(argv, input=None):
        if argv[0] in fail:
            return subprocess.CompletedProcess(
                argv, 1, "", "iptables v1.8.9 (nf_tables): Could not fetch rule set generation id: Invalid argument\n"
            )
        return subprocess.CompletedProcess(argv, 0, outputs[argv[0]], "")

    return run


def table(*lines, name="filter", chains=()):
    return "\n".join([f"*{name}", ":INPUT ACCEPT [0:0]", *(f":{c} - [0:0]" for c in chains), *lines, "COMMIT", ""])


def test_the_backend_with_more_rules_wins():
    legacy = table("-A OUTPUT -j KUBE-SERVICES", "-A PREROUTING -j KUBE-SERVICES", chains=["KUBE-SERVICES"])
    got = iptables.detect(fake_saves(legacy4=legacy, nft4=table("-A INPUT -j ACCEPT")))
    assert (got.backend, got.rules) == ("legacy", {"legacy": 2, "nft": 1})
    assert "more rules" in got.reason
    assert iptables.detect(fake_saves(legacy6=legacy, nft4=table("-A a", "-A b", "-A c"))).backend == "nft"


def test_kubelets_hint_chain_beats_counting():
    hint = table(name="mangle", chains=["KUBE-IPTABLES-HINT"])
    many = table(*(f"-A INPUT -s 10.0.0.{i}/32 -j ACCEPT" for i in range(50)))
    got = iptables.detect(fake_saves(legacy4=hint, nft4=many))
    assert got.backend == "legacy" and "hint" in got.reason
    assert iptables.detect(fake_saves(nft6=table(name="mangle", chains=["KUBE-KUBELET-CANARY"]), legacy4=many)).backend == "nft"


def test_a_fresh_namespace_goes_to_nft_unless_nft_is_unusable_there():
    got = iptables.detect(fake_saves())
    assert (got.backend, got.rules, got.unusable) == ("nft", {"legacy": 0, "nft": 0}, {})
    old_kernel = iptables.detect(fake_saves(fail=("iptables-nft-save", "ip6tables-nft-save")))
    assert old_kernel.backend == "legacy" and "nft" in old_kernel.unusable
    # a node without IPv6 still has a usable nft backend
    assert iptables.detect(fake_saves(fail=("ip6tables-nft-save",))).backend == "nft"


def test_our_chains_in_the_other_backend_are_reported():
    stale = table(f"-A {rules.GUARD_CHAIN} -j RETURN", chains=[rules.GUARD_CHAIN])
    kube = table(*(f"-A KUBE-SERVICES -d 10.0.0.{i}/32 -j ACCEPT" for i in range(5)), chains=["KUBE-SERVICES"])
    got = iptables.detect(fake_saves(nft4=stale, legacy4=kube))
    assert got.backend == "legacy" and got.ours_elsewhere == ["nft"]


def test_the_override_skips_detection():
    def no_calls(argv, input=None):
        raise AssertionError(f"detection ran: {argv}")

    assert iptables.choose("legacy", no_calls).backend == "legacy"
    assert iptables.choose("nft", no_calls).backend == "nft"


@pytest.mark.parametrize("value,want", [(None, "auto"), ("", "auto"), (" Legacy ", "legacy"), ("nft", "nft")])
def test_setting_values(value, want):
    assert iptables.parse_setting(value) == want


@pytest.mark.parametrize("value", ["iptables", "nf_tables", "legacy,nft"])
def test_a_bad_setting_names_the_variable_and_the_choices(value):
    with pytest.raises(
        iptables.BackendConfigError, match=rf"TPROXY_IPTABLES_BACKEND: '{value}' is not an iptables backend \(auto, legacy, nft\)"
    ):
        iptables.parse_setting(value)


def test_binary_names_per_family_and_backend():
    assert [
        iptables.binary(f, b, s)
        for f, b, s in [
            ("ipv4", "legacy", "restore"),
            ("ipv6", "nft", "restore"),
            ("ipv6", "legacy", "save"),
            ("ipv4", "nft", ""),
        ]
    ] == ["iptables-legacy-restore", "ip6tables-nft-restore", "ip6tables-legacy-save", "iptables-nft"]
    with pytest.raises(ValueError):
        iptables.binary("ipv4", "auto")


def test_the_sidecar_refuses_a_bad_backend_before_touching_anything():
    env = {**LOCK_ENV, iptables.ENV: "xtables"}
    proc = subprocess.run([START, "--dry-run"], env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2, proc.stderr
    assert "TPROXY_IPTABLES_BACKEND: 'xtables' is not an iptables backend (auto, legacy, nft)" in proc.stderr
    assert proc.stdout == ""  # nothing rendered, nothing applied


# -- real namespaces ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def net():
    net = CaptureNet.create()
    try:
        net.serve(net.internet, "inet", f"tcp:{INET4}:80", f"tcp:{INET4}:22")
        net.serve(net.node, "proxy", f"tcp:0.0.0.0:{HOST_PORT}")
        yield net
    finally:
        net.delete()


def save(ns, backend: str) -> str:
    return "".join(ns.run(iptables.binary(fam, backend, "save")).stdout for fam in ("ipv4", "ipv6"))


def seed_kube_proxy_legacy(ns) -> None:
    """What a 1.7-era node (or a pod namespace touched by legacy tooling) holds: kube-proxy's chains."""
    for table_ in ("nat", "filter"):
        ns.run("iptables-legacy", "-t", table_, "-N", "KUBE-SERVICES")
    for table_, builtin in (("nat", "PREROUTING"), ("nat", "OUTPUT"), ("filter", "INPUT")):
        ns.run(
            "iptables-legacy",
            "-t",
            table_,
            "-A",
            builtin,
            "-m",
            "comment",
            "--comment",
            "kubernetes service portals",
            "-j",
            "KUBE-SERVICES",
        )


def lock_pod(pod, **env) -> subprocess.CompletedProcess:
    proc = subprocess.run(pod.exec_argv([START]), env={**LOCK_ENV, **env}, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc


def chosen(stderr: str) -> dict:
    return next(json.loads(ln) for ln in stderr.splitlines() if '"event": "iptables_backend"' in ln)


def assert_locked(net, pod) -> None:
    ping = pod.run("ping", "-c1", "-W1", INET4, check=False)
    assert ping.returncode != 0 and "Operation not permitted" in ping.stdout + ping.stderr
    assert net.connect(pod, "tcp", INET4, 22) == "ERR ECONNREFUSED"
    assert net.connect(pod, "tcp", INET4, 80) == "OK inet 80"  # web leaves for the node redirect


@pytest.mark.root
@pytest.mark.parametrize("backend", iptables.BACKENDS)
def test_the_sidecar_lock_works_with_each_backend(net, backend):
    pod = net.add_pod(f"lk-{backend}")
    assert net.connect(pod, "tcp", INET4, 22) == "OK inet 22"
    err = lock_pod(pod, **{iptables.ENV: backend}).stderr
    assert chosen(err)["backend"] == backend
    assert_locked(net, pod)
    other = next(b for b in iptables.BACKENDS if b != backend)
    assert lock.CHAIN in save(pod, backend) and lock.CHAIN not in save(pod, other)
    lock_pod(pod, **{iptables.ENV: backend})  # rerun: still exactly one jump, on top
    out = pod.run(iptables.binary("ipv4", backend), "-S", "OUTPUT").stdout.splitlines()
    assert out[1].endswith(f"-j {lock.CHAIN}") and sum(lock.CHAIN in ln for ln in out) == 1


@pytest.mark.root
def test_the_sidecar_follows_legacy_rules_already_in_the_pod_namespace(net):
    pod = net.add_pod("lk-seeded")
    seed_kube_proxy_legacy(pod)
    err = lock_pod(pod).stderr  # auto
    assert chosen(err)["backend"] == "legacy"
    assert lock.CHAIN in save(pod, "legacy")
    assert save(pod, "nft").count("\n-") == 0 and lock.CHAIN not in save(pod, "nft")  # nothing in nft
    assert_locked(net, pod)


@pytest.mark.root
def test_the_sidecar_in_a_fresh_namespace_uses_nft(net):
    pod = net.add_pod("lk-fresh")
    err = lock_pod(pod).stderr
    assert chosen(err)["backend"] == "nft"
    assert lock.CHAIN in save(pod, "nft") and lock.CHAIN not in save(pod, "legacy")


@pytest.mark.root
def test_the_sidecar_override_wins_over_detection(net):
    pod = net.add_pod("lk-forced")
    seed_kube_proxy_legacy(pod)
    err = lock_pod(pod, **{iptables.ENV: "nft"}).stderr
    assert chosen(err)["backend"] == "nft" and lock.CHAIN in save(pod, "nft")
    assert lock.CHAIN not in save(pod, "legacy")


def locked(net, name):
    return [rules.LockedPod(ip=net.pod_ips[name][0], namespace="default", name=name)]


def curl(net, pod):
    out = net.pods[pod].run("curl", "-sS", "-m", "3", f"http://{INET4}/", check=False)
    return out.stdout.strip() if out.returncode == 0 else f"curl exit {out.returncode}"


def fresh_node(net, name):
    """The module's node namespace, emptied of every rule in both backends (one test at a time)."""
    for backend in iptables.BACKENDS:
        for fam in ("ipv4", "ipv6"):
            for tbl in ("filter", "nat"):
                net.node.run(iptables.binary(fam, backend), "-t", tbl, "-F")
                net.node.run(iptables.binary(fam, backend), "-t", tbl, "-X")
    if name not in net.pods:
        net.add_pod(name)
    return rules.netns_runner(net.node.name)


@pytest.mark.root
@pytest.mark.parametrize("backend", iptables.BACKENDS)
def test_podwatch_redirect_works_with_each_backend(net, backend):
    run = fresh_node(net, "web")
    assert curl(net, "web") == "inet 80"
    res = rules.sync(locked(net, "web"), HOST_PORT, run, backend=backend)
    assert not res.failed, res.failed
    assert curl(net, "web") == f"proxy {HOST_PORT}"
    assert net.connect(net.pods["web"], "tcp", INET4, 22) == "ERR ECONNREFUSED"  # the guard
    other = next(b for b in iptables.BACKENDS if b != backend)
    assert rules.REDIRECT_CHAIN in save(net.node, backend) and "TPROXY" not in save(net.node, other)
    assert rules.cleanup(run, backend=backend) == {}
    assert curl(net, "web") == "inet 80"


@pytest.mark.root
def test_podwatch_detects_a_legacy_node_and_programs_it(net):
    run = fresh_node(net, "web")
    seed_kube_proxy_legacy(net.node)
    got = iptables.detect(run)
    assert got.backend == "legacy", got
    res = rules.sync(locked(net, "web"), HOST_PORT, run, backend=got.backend)
    assert not res.failed, res.failed
    assert curl(net, "web") == f"proxy {HOST_PORT}"
    legacy = net.node.run("iptables-legacy-save", "-t", "nat").stdout
    pre = [ln for ln in legacy.splitlines() if ln.startswith("-A PREROUTING")]
    assert pre[0].endswith(f"-j {rules.REDIRECT_CHAIN}")  # first, before kube-proxy's jump
    assert any("KUBE-SERVICES" in ln for ln in pre)
    assert save(net.node, "nft").count("\n-") == 0  # nothing in nft


@pytest.mark.root
def test_podwatch_cleanup_chooses_the_backend_like_the_controller(net):
    """The command line path: auto detection in the node's namespace, logged with the reason;
    ``--cleanup`` then removes our legacy chains, and stale ones of ours in nft too."""
    run = fresh_node(net, "web")
    seed_kube_proxy_legacy(net.node)
    assert not rules.sync(locked(net, "web"), HOST_PORT, run, backend="legacy").failed
    assert not rules.sync(locked(net, "web"), HOST_PORT, run, backend="nft").failed  # a stale copy
    proc = net.node.run(
        "env", f"PYTHONPATH={REPO}", sys.executable, "-m", "podwatch", "--cleanup", "--node-name", "n1", check=False
    )
    assert proc.returncode == 0, proc.stderr
    logged = next(json.loads(ln) for ln in proc.stderr.splitlines() if '"iptables_backend"' in ln)
    assert logged["backend"] == "legacy" and "more rules" in logged["reason"]
    assert "TPROXY" not in save(net.node, "legacy") + save(net.node, "nft")
    assert "KUBE-SERVICES" in save(net.node, "legacy")


@pytest.mark.root
def test_podwatch_on_a_legacy_node_keeps_its_rules_in_legacy(tmp_path):
    """The controller path end to end: podwatch as a process (auto) on a node whose kube-proxy
    uses iptables-legacy programs a new pod's redirect into legacy and nothing into nft."""
    from capture_topology import wait_for
    from test_podwatch_controller import HOST_PORT as PW_PORT, Cluster

    c = Cluster(str(tmp_path))
    try:
        seed_kube_proxy_legacy(c.net.node)
        c.start()
        web_ip = c.net.pod_ips["web"][0]
        c.add_pod("default", "web", web_ip)
        wait_for(
            lambda: (
                f"{web_ip}/32" in c.net.node.run("iptables-legacy", "-t", "nat", "-S", rules.REDIRECT_CHAIN, check=False).stdout
            ),
            what="redirect rule in legacy",
        )
        out = c.net.pods["web"].run("curl", "-sS", "-m", "3", f"http://{INET4}/", check=False)
        assert out.stdout.strip() == f"proxy {PW_PORT}"
        assert "TPROXY" not in save(c.net.node, "nft")
        c.stop()
        c.log.seek(0)
        logged = next(json.loads(ln) for ln in c.log.read().splitlines() if '"iptables_backend"' in ln)
        assert logged["backend"] == "legacy" and logged["setting"] == "auto"
    finally:
        c.close()
