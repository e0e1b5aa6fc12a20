"""The baseline (bench/podwatch_original.py) is faithful to the original, flaws included: bench/ relies on it."""

from __future__ import annotations

import pytest

from bench import podwatch_original as original
from podwatch import rules


@pytest.fixture
def node():
    from kubesim.netns import Netns

    ns = Netns.create("cap-orig")
    yield ns
    ns.delete()


@pytest.mark.root
def test_original_adds_per_port_and_deleting_web_also_deletes_web_2(node):
    run = rules.netns_runner(node.name)
    original.sync_pod("web", "10.4.0.5", 8080, runner=run)
    original.sync_pod("web-2", "10.4.0.6", 8080, runner=run)
    original.sync_pod("web", "10.4.0.5", 8080, runner=run)  # already there: nothing added
    pre = node.run("iptables", "-t", "nat", "-S", "PREROUTING").stdout
    assert pre.count("REDIRECT") == 4 and pre.count("--dport 443") == 2
    original.sync_pod("web", None, exists=False, runner=run)
    # the original's regex matches by name prefix: web-2 loses its rules too (the bug we fixed)
    assert "REDIRECT" not in node.run("iptables", "-t", "nat", "-S", "PREROUTING").stdout
