"""podwatch's node rules with real iptables in a node namespace: where packets end up."""

from __future__ import annotations

import shlex

import pytest

from capture_topology import DNS_FOREIGN, INET4, INET6, CaptureNet
from podwatch import rules

HOST_PORT = 18080


@pytest.fixture(scope="module")
def net():
    net = CaptureNet.create()
    try:
        net.add_pod("web")
        net.add_pod("plain")
        net.serve(
            net.internet,
            "inet",
            f"tcp:{INET4}:80",
            f"tcp:{INET4}:443",
            f"tcp:{INET4}:22",
            f"tcp:[{INET6}]:80",
            f"udp:{DNS_FOREIGN}:53",
        )
        net.serve(net.node, "proxy", f"tcp:0.0.0.0:{HOST_PORT}", f"tcp:[::]:{HOST_PORT}")
        yield net
    finally:
        net.delete()


@pytest.fixture
def run(net):
    return rules.netns_runner(net.node.name)


def web_pods(net, *names):
    out = []
    for n in names:
        ip4, ip6 = net.pod_ips[n]
        out += [rules.LockedPod(ip=ip4, namespace="default", name=n), rules.LockedPod(ip=ip6, namespace="default", name=n)]
    return out


def sync(pods, run):
    res = rules.sync(pods, HOST_PORT, run)
    assert not res.failed, res.failed
    return res


def curl(net, pod, url):
    out = net.pods[pod].run("curl", "-sS", "-g", "-m", "3", url, check=False)
    return out.stdout.strip() if out.returncode == 0 else f"curl exit {out.returncode}"


def saved(net, tool="iptables"):
    return net.node.run(tool, "-S").stdout + net.node.run(tool, "-t", "nat", "-S").stdout


@pytest.mark.root
def test_annotated_pod_web_traffic_lands_on_the_node_port(net, run):
    sync(web_pods(net, "web"), run)
    for url in (f"http://{INET4}/", f"http://{INET4}:443/", f"http://[{INET6}]/"):
        assert curl(net, "web", url) == f"proxy {HOST_PORT}", url
    assert curl(net, "plain", f"http://{INET4}/") == "inet 80"
    assert curl(net, "plain", f"http://[{INET6}]/") == "inet 80"


@pytest.mark.root
def test_guard_rejects_what_escaped_the_redirect_but_lets_dns_through(net, run):
    sync(web_pods(net, "web"), run)
    # drift: someone deletes the PREROUTING jump; the FORWARD guard still refuses, nothing leaks
    jump = next(
        ln for ln in net.node.run("iptables", "-t", "nat", "-S", "PREROUTING").stdout.splitlines() if rules.REDIRECT_CHAIN in ln
    )
    net.node.run("iptables", "-t", "nat", "-D", *shlex.split(jump)[1:])
    assert net.connect(net.pods["web"], "tcp", INET4, 80) == "ERR ECONNREFUSED"
    assert net.connect(net.pods["web"], "tcp", INET4, 22) == "ERR ECONNREFUSED"
    assert net.connect(net.pods["web"], "udp", DNS_FOREIGN, 53) == "OK inet hello"
    assert net.connect(net.pods["plain"], "tcp", INET4, 22) == "OK inet 22"
    sync(web_pods(net, "web"), run)  # the periodic resync repairs the jump
    assert curl(net, "web", f"http://{INET4}/") == f"proxy {HOST_PORT}"


@pytest.mark.root
def test_inbound_connections_to_an_annotated_pod_pass_the_guard(net, run):
    """Servers in a locked pod keep working from outside the node: the SYN is not the pod's, and
    the pod's replies (even from port 80) are established flows, neither redirected nor rejected."""
    sync(web_pods(net, "web"), run)
    net.serve(net.pods["web"], "podsrv", "tcp:0.0.0.0:9000", "tcp:[::]:9000", "tcp:0.0.0.0:80")
    ip4, ip6 = net.pod_ips["web"]
    assert net.connect(net.internet, "tcp", ip4, 9000) == "OK podsrv 9000"
    assert net.connect(net.internet, "tcp", ip6, 9000) == "OK podsrv 9000"
    assert net.connect(net.internet, "tcp", ip4, 80) == "OK podsrv 80"
    # while the pod's own new connections are still captured or refused
    assert curl(net, "web", f"http://{INET4}/") == f"proxy {HOST_PORT}"
    assert net.connect(net.pods["web"], "tcp", INET4, 22) == "ERR ECONNREFUSED"


@pytest.mark.root
def test_deleting_a_pod_removes_exactly_its_rules(net, run):
    everyone = [
        rules.LockedPod(ip="10.4.0.5", namespace="default", name="web"),
        rules.LockedPod(ip="10.4.0.6", namespace="default", name="web-2"),
        rules.LockedPod(ip="10.4.0.7", namespace="team-b", name="web"),
        rules.LockedPod(ip="2001:db8:9::7", namespace="team-b", name="web"),
    ]
    sync(everyone, run)
    before4, before6 = saved(net), saved(net, "ip6tables")
    sync(everyone[1:], run)
    after4, after6 = saved(net), saved(net, "ip6tables")
    gone = set(before4.splitlines()) - set(after4.splitlines())
    assert gone and all("10.4.0.5/32" in ln for ln in gone) and len(gone) == 2  # redirect + guard
    assert set(after4.splitlines()) <= set(before4.splitlines())
    assert after6 == before6
    assert '"default/web-2"' in after4 and '"team-b/web"' in after4


@pytest.mark.root
def test_resync_repairs_drift_and_keeps_one_jump_on_top(net, run):
    pods = web_pods(net, "web")
    sync(pods, run)
    want = saved(net)
    node = net.node
    node.run("iptables", "-t", "nat", "-F", rules.REDIRECT_CHAIN)
    node.run("iptables", "-D", "FORWARD", "-m", "comment", "--comment", rules.GUARD_JUMP_COMMENT, "-j", rules.GUARD_CHAIN)
    node.run("iptables", "-t", "nat", "-I", "PREROUTING", "1", "-p", "udp", "-j", "ACCEPT")  # someone else's rule
    node.run("iptables", "-t", "nat", "-A", "PREROUTING", "-j", rules.REDIRECT_CHAIN)  # a stray duplicate
    # with both the redirect and the guard gone the pod's lock alone lets web traffic out: exactly
    # the drift the periodic resync exists to repair
    assert curl(net, "web", f"http://{INET4}/") == "inet 80"
    sync(pods, run)
    pre = node.run("iptables", "-t", "nat", "-S", "PREROUTING").stdout.splitlines()
    assert rules.REDIRECT_CHAIN in pre[1] and sum(rules.REDIRECT_CHAIN in ln for ln in pre) == 1
    assert "-A PREROUTING -p udp -j ACCEPT" in pre  # other owners' rules are untouched
    node.run("iptables", "-t", "nat", "-D", "PREROUTING", "-p", "udp", "-j", "ACCEPT")
    assert saved(net) == want
    assert curl(net, "web", f"http://{INET4}/") == f"proxy {HOST_PORT}"


@pytest.mark.root
def test_iptables_errors_name_the_offending_line(net, run):
    bad = f"*nat\n:{rules.REDIRECT_CHAIN} - [0:0]\n-A {rules.REDIRECT_CHAIN} -s 10.9.9.9/32 -j NO-SUCH-TARGET\nCOMMIT\n"
    before = saved(net)
    with pytest.raises(rules.IptablesError) as info:
        rules.restore("ipv4", "nat", bad, run)
    assert any("NO-SUCH-TARGET" in ln and ln.startswith("3: ") for ln in info.value.lines)
    assert saved(net) == before  # the failed transaction changed nothing


@pytest.mark.root
def test_cleanup_removes_everything_owned_and_nothing_else(net, run):
    sync(web_pods(net, "web"), run)
    net.node.run("iptables", "-A", "FORWARD", "-p", "icmp", "-j", "ACCEPT")
    assert rules.cleanup(run) == {}
    for tool in ("iptables", "ip6tables"):
        assert "TPROXY" not in saved(net, tool)
    assert "-A FORWARD -p icmp -j ACCEPT" in saved(net)
    assert rules.cleanup(run) == {}  # idempotent
    net.node.run("iptables", "-D", "FORWARD", "-p", "icmp", "-j", "ACCEPT")
    assert curl(net, "web", f"http://{INET4}/") == "inet 80"
