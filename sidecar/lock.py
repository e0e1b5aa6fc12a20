"""The pod's egress lock, rendered as ``iptables-restore`` input (IPv4 and IPv6).

Design (why it looks like this):

* The lock lives in an owned chain ``TPROXY-EGRESS`` of the pod's filter table, reached by one
  jump at the top of ``OUTPUT``. It is applied with ONE ``iptables-restore --noflush`` per
  family: declaring the chain replaces its contents atomically, and the jump is fixed up in the
  same transaction (delete every existing copy, insert one at position 1), so running the
  sidecar again (a restarted init container) is idempotent and never opens a window. We do not
  restore the whole filter table: other tooling in the pod's namespace keeps its rules.
* IPv4, in order: loopback; established/related (replies of inbound connections, so servers
  in the pod keep working); DNS (udp+tcp 53) only to the allowed resolvers; REJECT
  ``BLOCK_SVC_CIDR``; tcp 80/443 to anywhere (the node REDIRECTs it to the proxy, and the
  node guard rejects it if it was not redirected; the probe address 192.0.2.1 is covered);
  tcp to ``NODE_NAME``:1080 (the standard-mode proxy); REJECT everything else, so ``ping``
  fails with "Operation not permitted" and UDP/443 (QUIC) fails fast and clients fall back to TCP.
* IPv6: loopback, established/related, neighbour discovery (without it the pod loses IPv6
  altogether), DNS to allowed IPv6 resolvers, the node's IPv6 address on 1080, REJECT the
  rest. Nothing redirects IPv6 web traffic at the node for a 1.7 pod (one IPv4 podIP), so
  IPv6 web traffic is refused rather than let out.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Sequence

from controllerkit import iptables

CHAIN = "TPROXY-EGRESS"
JUMP_COMMENT = "tproxy: egress lock"
STANDARD_PROXY_PORT = 1080
WEB_PORTS = "80,443"
ND_TYPES = ("router-solicitation", "neighbour-solicitation", "neighbour-advertisement")


class LockConfigError(ValueError):
    """Bad sidecar configuration (message names the variable and the offending value)."""


@dataclass
class LockConfig:
    """What the lock allows. ``dns`` empty + ``dns_any`` False means: no DNS at all."""

    dns: list[str] = field(default_factory=list)  # resolver addresses (v4 and/or v6)
    dns_any: bool = False  # ALLOW_DNS=any: original behaviour
    block: list[str] = field(default_factory=list)  # CIDRs (BLOCK_SVC_CIDR)
    node_ips: list[str] = field(default_factory=list)  # NODE_NAME resolved


def _split(value: str | None) -> list[str]:
    return [v for v in re.split(r"[\s,]+", value or "") if v]


def parse_addresses(name: str, value: str | None) -> list[str]:
    out = []
    for item in _split(value):
        try:
            out.append(str(ipaddress.ip_address(item)))
        except ValueError:
            raise LockConfigError(f"{name}: {item!r} is not an IP address") from None
    return out


def parse_cidrs(name: str, value: str | None) -> list[str]:
    out = []
    for item in _split(value):
        try:
            out.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError:
            raise LockConfigError(f"{name}: {item!r} is not a CIDR (e.g. 10.11.240.0/20)") from None
    return out


def resolv_conf_nameservers(path: str = "/etc/resolv.conf") -> list[str]:
    """The pod's resolvers (kubelet writes the cluster DNS here); invalid entries ignored."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    out = []
    for ln in lines:
        parts = ln.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            try:
                out.append(str(ipaddress.ip_address(parts[1].split("%")[0])))
            except ValueError:
                pass
    return out


def _version(addr: str) -> int:
    return ipaddress.ip_network(addr, strict=False).version


def _common_head(existing_jumps: Sequence[str], first: bool) -> list[str]:
    return [
        "*filter",
        f":{CHAIN} - [0:0]",
        *iptables.jump_fixup("OUTPUT", CHAIN, JUMP_COMMENT, existing_jumps, first),
        f"-A {CHAIN} -o lo -j ACCEPT",
        f"-A {CHAIN} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
    ]


def _dns_lines(cfg: LockConfig, version: int) -> list[str]:
    if cfg.dns_any:
        return [f"-A {CHAIN} -p udp -m udp --dport 53 -j ACCEPT", f"-A {CHAIN} -p tcp -m tcp --dport 53 -j ACCEPT"]
    out = []
    for ip in cfg.dns:
        if _version(ip) != version:
            continue
        d = f"{ip}/{32 if version == 4 else 128}"
        out += [f"-A {CHAIN} -d {d} -p udp -m udp --dport 53 -j ACCEPT", f"-A {CHAIN} -d {d} -p tcp -m tcp --dport 53 -j ACCEPT"]
    return out


def _node_lines(cfg: LockConfig, version: int) -> list[str]:
    return [
        f"-A {CHAIN} -d {ip}/{32 if version == 4 else 128} -p tcp -m tcp --dport {STANDARD_PROXY_PORT} -j ACCEPT"
        for ip in cfg.node_ips
        if _version(ip) == version
    ]


def render_v4(cfg: LockConfig, existing_jumps: Sequence[str] = (), first: bool = False) -> str:
    """IPv4 restore input. ``existing_jumps``: current ``-A OUTPUT ... -j TPROXY-EGRESS`` lines."""
    lines = _common_head(existing_jumps, first)
    lines += _dns_lines(cfg, 4)
    lines += [f"-A {CHAIN} -d {c} -j REJECT --reject-with icmp-port-unreachable" for c in cfg.block if _version(c) == 4]
    lines += _node_lines(cfg, 4)
    lines += [
        f"-A {CHAIN} -p tcp -m multiport --dports {WEB_PORTS} -j ACCEPT",
        f"-A {CHAIN} -j REJECT --reject-with icmp-port-unreachable",
        "COMMIT",
    ]
    return "\n".join(lines) + "\n"


def render_v6(cfg: LockConfig, existing_jumps: Sequence[str] = (), first: bool = False) -> str:
    """IPv6 restore input: no web traffic (nothing redirects it), neighbour discovery kept."""
    lines = _common_head(existing_jumps, first)
    lines += [f"-A {CHAIN} -p ipv6-icmp -m icmp6 --icmpv6-type {t} -j ACCEPT" for t in ND_TYPES]
    lines += _dns_lines(cfg, 6)
    lines += [f"-A {CHAIN} -d {c} -j REJECT --reject-with icmp6-port-unreachable" for c in cfg.block if _version(c) == 6]
    lines += _node_lines(cfg, 6)
    lines += [f"-A {CHAIN} -j REJECT --reject-with icmp6-port-unreachable", "COMMIT"]
    return "\n".join(lines) + "\n"


def parse_jumps(save_output: str) -> tuple[list[str], bool]:
    """From ``iptables -S OUTPUT`` output: our jump lines, and whether the first rule is ours."""
    return iptables.find_jumps(save_output, "OUTPUT", CHAIN)


def describe(cfg: LockConfig) -> dict:
    return {"dns": "any" if cfg.dns_any else cfg.dns, "block": cfg.block, "node_ips": cfg.node_ips}


def all_families(cfg: LockConfig, jumps: dict[int, tuple[list[str], bool]] | None = None) -> dict[str, str]:
    jumps = jumps or {}
    return {"ipv4": render_v4(cfg, *jumps.get(4, ((), False))), "ipv6": render_v6(cfg, *jumps.get(6, ((), False)))}


__all__ = [
    "LockConfig",
    "LockConfigError",
    "render_v4",
    "render_v6",
    "parse_jumps",
    "parse_addresses",
    "parse_cidrs",
    "resolv_conf_nameservers",
    "CHAIN",
]
