"""bench/topology.py: the benchmark network lets a load generator open new connections for minutes.

Without TIME_WAIT reuse and a wide port range, a client opening ~20,000 connections/s to one
address:port ran out of ephemeral ports within a few 3 s runs (20,900 → 1,090 req/s, 2026-12-05),
and every later new-connection figure measured the client's port search, not the proxy.
"""

import pytest

from bench.topology import Topology

pytestmark = pytest.mark.root


def _read(ns, key):
    return ns.run("sysctl", "-n", key).stdout.split()


def test_client_and_node_reuse_time_wait_ports_and_have_a_wide_range():
    topo = Topology(prefix="btt").up(upstream=False)
    try:
        for ns in (topo.client, topo.node):
            assert _read(ns, "net.ipv4.tcp_tw_reuse") == ["1"], ns.name
            low, high = map(int, _read(ns, "net.ipv4.ip_local_port_range"))
            assert (low, high) == (10240, 65535), ns.name
            assert high - low > 50_000
        # the proxies' listening ports (bench/egress_bench.py) stay below the ephemeral range
        from bench.egress_bench import PORTS, SQUID_BUMP, SQUID_HTTP, SQUID_SPLICE

        assert max([*PORTS.values(), SQUID_HTTP, SQUID_BUMP, SQUID_SPLICE]) + 10 < low
        # the upstream's namespace is left as the kernel made it (nothing there dials out)
        assert _read(topo.internet, "net.ipv4.tcp_tw_reuse") != ["1"]
    finally:
        topo.down()
