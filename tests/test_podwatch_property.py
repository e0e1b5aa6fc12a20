"""Property: whatever sequence of pod sets podwatch syncs, the node's chains hold exactly one
redirect and one guard rule per locked pod IP of the current set (real iptables, both families)."""

from __future__ import annotations

import ipaddress
import shlex

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from podwatch import rules

NAMES = st.sampled_from(["web", "web-2", "api", "db", "w"])
NAMESPACES = st.sampled_from(["default", "team-a", "team-b"])
IPS = st.one_of(st.integers(1, 40).map(lambda i: f"10.6.0.{i}"), st.integers(1, 10).map(lambda i: f"2001:db8:6::{i:x}"))
POD = st.builds(lambda ip, ns, name: rules.LockedPod(ip=ip, namespace=ns, name=name), IPS, NAMESPACES, NAMES)
POD_SETS = st.lists(st.lists(POD, max_size=12, unique_by=lambda p: p.ip), min_size=1, max_size=4)


@pytest.fixture(scope="module")
def node():
    from kubesim.netns import Netns

    ns = Netns.create("cap-prop")
    yield ns
    ns.delete()


def programmed(node, tool, table, chain, target):
    out = node.run(tool, "-t", table, "-S", chain).stdout
    got = []
    for ln in out.splitlines():
        if f"-j {target}" in ln and " -s " in ln:
            words = shlex.split(ln)
            got.append((words[words.index("-s") + 1].split("/")[0], words[words.index("--comment") + 1]))
    return sorted(got)


def assert_rules_are(node, pods):
    """Exactly one redirect and one guard rule per pod IP of ``pods``, in both families."""
    for fam, tool in (("ipv4", "iptables"), ("ipv6", "ip6tables")):
        want = sorted((str(ipaddress.ip_address(p.ip)), p.key) for p in pods if p.family == fam)
        assert programmed(node, tool, "nat", rules.REDIRECT_CHAIN, "REDIRECT") == want
        assert programmed(node, tool, "filter", rules.GUARD_CHAIN, rules.LOCKED_CHAIN) == want


@pytest.mark.root
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(POD_SETS)
def test_chains_always_equal_the_last_synced_set(node, sets):
    run = rules.netns_runner(node.name)
    for pods in sets:
        res = rules.sync(pods, 8080, run)
        assert not res.failed
    assert_rules_are(node, sets[-1])
    for _fam, tool in (("ipv4", "iptables"), ("ipv6", "ip6tables")):
        for table, builtin, chain in (("nat", "PREROUTING", rules.REDIRECT_CHAIN), ("filter", "FORWARD", rules.GUARD_CHAIN)):
            lines = node.run(tool, "-t", table, "-S", builtin).stdout.splitlines()
            assert sum(f"-j {chain}" in ln for ln in lines) == 1 and f"-j {chain}" in lines[1]


@pytest.mark.root
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(POD_SETS)
def test_incremental_syncs_always_equal_the_last_synced_set(node, sets):
    """The same property through the controller's Syncer, whose event-driven syncs change only the
    rules of pods that came or went (podwatch.rules.render_delta)."""
    syncer = rules.Syncer(8080, rules.netns_runner(node.name))
    for pods in sets:
        res = syncer.sync(pods)
        assert not res.failed
    assert_rules_are(node, sets[-1])
