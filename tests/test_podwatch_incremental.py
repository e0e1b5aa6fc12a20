"""podwatch's incremental syncs: a pod that comes or goes changes only its own rules.

Pure tests of :func:`podwatch.rules.render_delta`, and root tests with real iptables in a node
namespace proving that incremental syncs leave exactly the rules a full rewrite would, and that a
failed one is repaired by the forced retry.
"""

from __future__ import annotations

import pytest

from podwatch import rules

PORT = 8080


def lp(i: int, ip: str | None = None, ns: str = "default") -> rules.LockedPod:
    return rules.LockedPod(ip=ip or f"10.6.{i // 200}.{i % 200 + 1}", namespace=ns, name=f"web-{i}")


def rendered(pods, fam="ipv4", port=PORT):
    return rules.render(pods, port)[fam]


# -- the delta, as text ----------------------------------------------------------------------------
def test_one_new_pod_is_two_appended_rules_and_no_chain_declaration():
    before = [lp(i) for i in range(5)]
    delta = rules.render_delta(rendered(before), rendered(before + [lp(9)]))
    assert set(delta) == {"filter", "nat"}
    for table, text in delta.items():
        lines = text.splitlines()
        assert lines[0] == f"*{table}" and lines[-1] == "COMMIT"
        body = lines[1:-1]
        assert len(body) == 1 and body[0].startswith("-A ") and "10.6.0.10/32" in body[0]
        assert not any(ln.startswith(":") for ln in lines), "a chain declaration would flush the chain"


def test_a_pod_that_went_is_deleted_by_its_exact_rule():
    pods = [lp(i) for i in range(5)]
    delta = rules.render_delta(rendered(pods), rendered(pods[:2] + pods[3:]))
    full_before = rendered(pods)
    for table, text in delta.items():
        (line,) = text.splitlines()[1:-1]
        assert line.startswith("-D ") and ("-A " + line[3:]) in full_before[table].splitlines()


def test_a_pod_whose_ip_changed_is_one_delete_and_one_append():
    pods = [lp(i) for i in range(3)]
    moved = pods[:1] + [lp(1, ip="10.6.9.9")] + pods[2:]
    body = rules.render_delta(rendered(pods), rendered(moved))["nat"].splitlines()[1:-1]
    assert [ln[:3] for ln in body] == ["-D ", "-A "] and "10.6.9.9/32" in body[1]


def test_an_unchanged_table_is_left_out():
    v4 = [lp(1)]
    both = rules.render(v4 + [lp(2, ip="2001:db8:6::2")], PORT)
    assert rules.render_delta(rules.render(v4, PORT)["ipv4"], both["ipv4"]) == {}


@pytest.mark.parametrize(
    "before, after, port_after",
    [
        ([], [lp(1)], PORT),  # first pod: the ESTABLISHED rule appears
        ([lp(1)], [], PORT),  # last pod: it goes
        ([lp(0)], [lp(i) for i in range(rules.DELTA_MAX_LINES + 2)], PORT),  # a burst: too many lines
    ],
)
def test_a_changed_skeleton_or_a_burst_is_a_full_rewrite(before, after, port_after):
    assert rules.render_delta(rendered(before), rendered(after, port=port_after)) is None


def test_a_host_port_change_replaces_every_redirect():
    pods = [lp(1), lp(2)]
    body = rules.render_delta(rendered(pods), rendered(pods, port=8081))["nat"].splitlines()[1:-1]
    assert [ln[:3] for ln in body] == ["-D ", "-D ", "-A ", "-A "] and all("8081" in ln for ln in body[2:])


def test_repeated_lines_are_a_full_rewrite():
    applied = rendered([lp(1), lp(2)])
    doubled = {t: text.replace("COMMIT", text.splitlines()[-2] + "\nCOMMIT") for t, text in applied.items()}
    assert rules.render_delta(doubled, rendered([lp(1), lp(2), lp(3)])) is None


# -- real iptables ---------------------------------------------------------------------------------
@pytest.fixture
def nodes():
    from kubesim.netns import Netns

    a, b = Netns.create("pw-incr-a"), Netns.create("pw-incr-b")
    yield a, b
    a.delete()
    b.delete()


def owned_rules(ns) -> dict[str, list[str]]:
    """Our chains' rules (sorted: per-pod rules do not depend on their order) and the hook jumps."""
    out = {}
    for tool in ("iptables", "ip6tables"):
        for table, chains in (
            ("filter", [rules.GUARD_CHAIN, rules.LOCKED_CHAIN, "FORWARD"]),
            ("nat", [rules.REDIRECT_CHAIN, "PREROUTING"]),
        ):
            for chain in chains:
                lines = ns.run(tool, "-w", "5", "-t", table, "-S", chain, check=False).stdout.splitlines()
                out[f"{tool} {table} {chain}"] = sorted(lines) if chain not in ("FORWARD", "PREROUTING") else lines
    return out


@pytest.mark.root
def test_incremental_syncs_leave_exactly_what_a_full_rewrite_leaves(nodes):
    node, reference = nodes
    syncer = rules.Syncer(PORT, rules.netns_runner(node.name))
    v6 = [lp(100, ip="2001:db8:6::64")]
    pods = [lp(i) for i in range(80)] + v6
    assert syncer.sync(pods).incremental == []  # nothing applied before: full
    extra4, extra6 = lp(80), lp(101, ip="2001:db8:6::65")
    steps = [
        (pods + [extra4], ["ipv4"]),  # one more IPv4 pod
        (pods + [extra4, extra6], ["ipv6"]),  # one more IPv6 pod
        ([p for p in pods if p.name != "web-3"] + [extra4, extra6], ["ipv4"]),  # one goes
        ([lp(i) for i in range(10)] + v6 + [extra6], []),  # 71 go: a full rewrite
        ([lp(i) for i in range(10)], []),  # the last IPv6 pods: full
    ]
    for want, incremental in steps:
        res = syncer.sync(want)
        assert not res.failed, res.failed
        assert res.incremental == incremental
        full = rules.sync(want, PORT, rules.netns_runner(reference.name))  # a fresh rewrite, elsewhere
        assert not full.failed
        assert owned_rules(node) == owned_rules(reference), f"after {len(want)} pods ({incremental})"
        assert res.rules == full.rules


@pytest.mark.root
def test_a_failed_incremental_sync_is_repaired_by_the_forced_retry(nodes):
    node, reference = nodes
    syncer = rules.Syncer(PORT, rules.netns_runner(node.name))
    pods = [lp(i) for i in range(5)]
    syncer.sync(pods)
    # somebody removed web-2's redirect behind our back; web-2 then goes: its -D cannot apply
    line = next(
        ln for ln in node.run("iptables", "-t", "nat", "-S", rules.REDIRECT_CHAIN).stdout.splitlines() if "default/web-2" in ln
    )
    node.run("iptables", "-t", "nat", "-D", *__import__("shlex").split(line)[1:])
    want = [p for p in pods if p.name != "web-2"]
    res = syncer.sync(want)
    assert "ipv4" in res.failed and res.incremental == []
    assert syncer.sync(want, force=True).failed == {}  # what the controller does after a failure
    rules.sync(want, PORT, rules.netns_runner(reference.name))
    assert owned_rules(node) == owned_rules(reference)
    assert syncer.sync(want + [lp(7)]).incremental == ["ipv4"]  # and incremental again afterwards
