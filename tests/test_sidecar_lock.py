"""The pod egress lock: rendering (pure) and what it does to real packets in a pod namespace."""

from __future__ import annotations

import os
import subprocess

import pytest

from capture_topology import DNS_ALLOWED, DNS_FOREIGN, INET4, INET6, PROBE_ENV, REPO, SVC_CIDR, SVC_IP, CaptureNet
from sidecar import lock

START = os.path.join(REPO, "sidecar", "start.sh")


# -- rendering (no root) -------------------------------------------------------------------
def test_v4_lock_order_dns_block_web_node_reject():
    cfg = lock.LockConfig(dns=["10.11.240.10"], block=["10.11.240.0/20"], node_ips=["10.0.0.5"])
    rules = [ln for ln in lock.render_v4(cfg).splitlines() if ln.startswith("-A ")]
    idx = {k: next(i for i, r in enumerate(rules) if k in r) for k in ("--dport 53", "-d 10.11.240.0/20", "80,443")}
    assert rules[0].endswith("-o lo -j ACCEPT")
    assert "ESTABLISHED" in rules[1]
    # DNS to the cluster resolver comes before the service-CIDR reject (kube-dns lives there)
    assert idx["--dport 53"] < idx["-d 10.11.240.0/20"] < idx["80,443"]
    assert rules[-1] == f"-A {lock.CHAIN} -j REJECT --reject-with icmp-port-unreachable"
    assert all("-d 10.11.240.10/32" in r for r in rules if "--dport 53" in r)
    assert any("-d 10.0.0.5/32 -p tcp -m tcp --dport 1080 -j ACCEPT" in r for r in rules)


def test_v6_lock_keeps_neighbour_discovery_and_has_no_web_hole():
    text = lock.render_v6(lock.LockConfig(dns=["10.0.0.10", "2001:db8::53"]))
    assert "neighbour-solicitation" in text and "neighbour-advertisement" in text
    assert "80,443" not in text
    assert "10.0.0.10" not in text and "-d 2001:db8::53/128 -p udp" in text


def test_jump_fixup_is_idempotent():
    ours = f'-A OUTPUT -m comment --comment "{lock.JUMP_COMMENT}" -j {lock.CHAIN}'
    # already one jump, first: nothing to touch besides the chain body
    assert "OUTPUT" not in lock.render_v4(lock.LockConfig(), [ours], True).split("\n", 3)[2]
    jumps, first = lock.parse_jumps(f"-P OUTPUT ACCEPT\n-A OUTPUT -j OTHER\n{ours}\n{ours}\n")
    assert len(jumps) == 2 and not first
    text = lock.render_v4(lock.LockConfig(), jumps, first)
    assert text.count("-D OUTPUT -m comment") == 2 and text.count("-I OUTPUT 1 ") == 1


@pytest.mark.parametrize(
    "var,value,msg",
    [
        ("ALLOW_DNS", "not-an-ip", "ALLOW_DNS: 'not-an-ip' is not an IP address"),
        ("BLOCK_SVC_CIDR", "10.0.0.0/99", "BLOCK_SVC_CIDR: '10.0.0.0/99' is not a CIDR"),
        ("TPROXY_VERIFY", "maybe", "TPROXY_VERIFY: 'maybe' is not a boolean"),
        ("TPROXY_VERIFY_TIMEOUT", "soon", "TPROXY_VERIFY_TIMEOUT: 'soon' is not a number"),
        # would loop forever (the pod stuck in Init) or skip the proof: refused like garbage
        ("TPROXY_VERIFY_TIMEOUT", "nan", "TPROXY_VERIFY_TIMEOUT: 'nan' is not a number of seconds (finite, >= 0)"),
        ("TPROXY_VERIFY_TIMEOUT", "inf", "TPROXY_VERIFY_TIMEOUT: 'inf' is not a number"),
        ("TPROXY_VERIFY_TIMEOUT", "-5", "TPROXY_VERIFY_TIMEOUT: '-5' is not a number"),
        ("NODE_NAME", "no-such-node.invalid", "NODE_NAME: cannot resolve node 'no-such-node.invalid'"),
    ],
)
def test_bad_configuration_is_a_clear_error(var, value, msg):
    env = {**PROBE_ENV, var: value}
    proc = subprocess.run([START, "--dry-run"], env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert msg in proc.stderr
    assert proc.stdout == ""  # nothing rendered, nothing applied


def test_dry_run_prints_both_families():
    env = {**PROBE_ENV, "ALLOW_DNS": "10.11.240.10", "BLOCK_SVC_CIDR": "10.11.240.0/20"}
    out = subprocess.run([START, "--dry-run"], env=env, capture_output=True, text=True, check=True).stdout
    assert out.count("*filter") == 2 and "# ipv6" in out and "-d 10.11.240.0/20 -j REJECT" in out


def test_unset_allow_dns_means_the_pods_resolvers(tmp_path):
    rc = tmp_path / "resolv.conf"
    rc.write_text("search default.svc.cluster.local\nnameserver 10.11.240.10\nnameserver bogus\n")
    env = {**PROBE_ENV, "TPROXY_RESOLV_CONF": str(rc)}
    out = subprocess.run([START, "--dry-run"], env=env, capture_output=True, text=True, check=True).stdout
    dns = [ln for ln in out.splitlines() if "--dport 53" in ln]
    assert dns and all("-d 10.11.240.10/32" in ln for ln in dns)
    out = subprocess.run([START, "--dry-run"], env={**env, "ALLOW_DNS": "any"}, capture_output=True, text=True, check=True).stdout
    assert "-A TPROXY-EGRESS -p udp -m udp --dport 53 -j ACCEPT" in out


# -- packets (root) ------------------------------------------------------------------------
LOCK_ENV = {**PROBE_ENV, "ALLOW_DNS": DNS_ALLOWED, "BLOCK_SVC_CIDR": SVC_CIDR, "NODE_NAME": "node-1", "TPROXY_VERIFY": "false"}


@pytest.fixture(scope="module")
def net():
    net = CaptureNet.create()
    try:
        locked = net.add_pod("locked")
        net.add_pod("open")
        net.serve(
            net.internet,
            "inet",
            f"tcp:{INET4}:80",
            f"tcp:{INET4}:443",
            f"tcp:{INET4}:22",
            f"udp:{INET4}:443",
            f"tcp:[{INET6}]:80",
            f"tcp:{SVC_IP}:80",
            f"udp:{DNS_ALLOWED}:53",
            f"tcp:{DNS_ALLOWED}:53",
            f"udp:{DNS_FOREIGN}:53",
            f"tcp:{DNS_FOREIGN}:53",
        )
        net.serve(net.node, "node", "tcp:0.0.0.0:1080", "tcp:0.0.0.0:1081")
        net.serve(locked, "podsrv", "tcp:0.0.0.0:9000", "tcp:[::]:9000")
        proc = subprocess.run(locked.exec_argv([START]), env=LOCK_ENV, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        yield net
    finally:
        net.delete()


def both(net, proto, host, port):
    return net.connect(net.pods["locked"], proto, host, port), net.connect(net.pods["open"], proto, host, port)


@pytest.mark.root
def test_ping_prints_operation_not_permitted(net):
    locked = net.pods["locked"].run("ping", "-c1", "-W1", INET4, check=False)
    assert locked.returncode != 0 and "Operation not permitted" in (locked.stdout + locked.stderr)
    assert net.pods["open"].run("ping", "-c1", "-W2", INET4, check=False).returncode == 0


@pytest.mark.root
def test_tcp_22_is_refused(net):
    assert both(net, "tcp", INET4, 22) == ("ERR ECONNREFUSED", "OK inet 22")


@pytest.mark.root
def test_udp_443_quic_is_refused(net):
    locked, open_ = both(net, "udp", INET4, 443)
    assert locked in ("ERR EPERM", "ERR ECONNREFUSED") and open_ == "OK inet hello"


@pytest.mark.root
def test_ipv6_egress_is_refused_even_on_port_80(net):
    assert both(net, "tcp", INET6, 80) == ("ERR ECONNREFUSED", "OK inet 80")


@pytest.mark.root
def test_dns_only_to_the_allowed_resolver(net):
    pod = net.pods["locked"]
    assert net.connect(pod, "udp", DNS_ALLOWED, 53) == "OK inet hello"
    assert net.connect(pod, "tcp", DNS_ALLOWED, 53) == "OK inet 53"
    assert net.connect(pod, "udp", DNS_FOREIGN, 53) in ("ERR EPERM", "ERR ECONNREFUSED")
    assert net.connect(pod, "tcp", DNS_FOREIGN, 53) == "ERR ECONNREFUSED"
    assert net.connect(net.pods["open"], "udp", DNS_FOREIGN, 53) == "OK inet hello"


@pytest.mark.root
def test_block_svc_cidr_is_rejected_even_on_port_80(net):
    assert both(net, "tcp", SVC_IP, 80) == ("ERR ECONNREFUSED", "OK inet 80")


@pytest.mark.root
def test_web_ports_leave_the_pod_for_the_node_redirect(net):
    # the lock itself lets tcp 80/443 out: the node REDIRECTs it (podwatch) or its guard rejects it
    assert both(net, "tcp", INET4, 443) == ("OK inet 443", "OK inet 443")


@pytest.mark.root
def test_node_standard_mode_proxy_port_only(net):
    gw = net.gateways["locked"][0]
    assert both(net, "tcp", gw, 1080) == ("OK node 1080", "OK node 1080")
    assert both(net, "tcp", gw, 1081) == ("ERR ECONNREFUSED", "OK node 1081")


@pytest.mark.root
def test_inbound_connections_to_the_locked_pod_work(net):
    ip4, ip6 = net.pod_ips["locked"]
    assert net.connect(net.node, "tcp", ip4, 9000) == "OK podsrv 9000"
    assert net.connect(net.node, "tcp", ip6, 9000) == "OK podsrv 9000"  # needs neighbour discovery


@pytest.mark.root
def test_rerun_is_idempotent_and_restores_the_jump_on_top(net):
    pod = net.pods["locked"]
    before = {c: pod.run(c, "-S").stdout for c in ("iptables", "ip6tables")}
    pod.run("iptables", "-I", "OUTPUT", "1", "-p", "tcp", "--dport", "22", "-j", "ACCEPT")  # a bypass
    assert net.connect(pod, "tcp", INET4, 22) == "OK inet 22"
    for _ in range(2):
        proc = subprocess.run(pod.exec_argv([START]), env=LOCK_ENV, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
    after = pod.run("iptables", "-S", "OUTPUT").stdout.splitlines()
    assert after[1].endswith(f"-j {lock.CHAIN}") and sum(lock.CHAIN in ln for ln in after) == 1
    assert net.connect(pod, "tcp", INET4, 22) == "ERR ECONNREFUSED"
    pod.run("iptables", "-D", "OUTPUT", "-p", "tcp", "--dport", "22", "-j", "ACCEPT")
    assert pod.run("ip6tables", "-S").stdout == before["ip6tables"]
    assert sorted(pod.run("iptables", "-S").stdout.splitlines()) == sorted(before["iptables"].splitlines())


@pytest.mark.root
def test_loopback_is_allowed(net):
    pod = net.pods["locked"]
    assert net.connect(pod, "tcp", "127.0.0.1", 9000) == "OK podsrv 9000"
    assert net.connect(pod, "tcp", "::1", 9000) == "OK podsrv 9000"


@pytest.mark.root
def test_without_allow_dns_only_the_pods_resolvers_and_any_restores_the_original(net, tmp_path):
    """The changed default: ALLOW_DNS unset allows the resolv.conf nameservers only (a DNS tunnel
    to a foreign resolver is refused); ALLOW_DNS=any is the original's 'any resolver'."""
    pod = net.add_pod("dnsdflt")
    resolv = tmp_path / "resolv.conf"
    env = {k: v for k, v in LOCK_ENV.items() if k != "ALLOW_DNS"} | {"TPROXY_RESOLV_CONF": str(resolv)}

    def lock_with(**extra):
        proc = subprocess.run(pod.exec_argv([START]), env={**env, **extra}, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        return proc.stderr

    def dns():
        return (
            net.connect(pod, "udp", DNS_ALLOWED, 53),
            net.connect(pod, "tcp", DNS_ALLOWED, 53),
            net.connect(pod, "udp", DNS_FOREIGN, 53),
            net.connect(pod, "tcp", DNS_FOREIGN, 53),
        )

    resolv.write_text(f"search default.svc.cluster.local\nnameserver {DNS_ALLOWED}\noptions ndots:5\n")
    lock_with()
    allowed_udp, allowed_tcp, foreign_udp, foreign_tcp = dns()
    assert (allowed_udp, allowed_tcp) == ("OK inet hello", "OK inet 53")
    assert foreign_udp in ("ERR EPERM", "ERR ECONNREFUSED") and foreign_tcp == "ERR ECONNREFUSED"

    lock_with(ALLOW_DNS="any")
    assert dns() == ("OK inet hello", "OK inet 53", "OK inet hello", "OK inet 53")

    resolv.write_text("search default.svc.cluster.local\n")  # no nameserver: DNS refused, with a warning
    err = lock_with()
    assert '"event": "no_dns_allowed"' in err
    assert all(r in ("ERR EPERM", "ERR ECONNREFUSED") for r in dns())
