"""tproxy-sidecar: lock the pod's egress, then prove that its web traffic reaches the proxy.

Runs once as a privileged init container (entrypoint ``sidecar/start.sh``). Standard library
only: the image installs the package without dependencies. Exit status: 0 locked and verified,
1 interception not proven within TPROXY_VERIFY_TIMEOUT, 2 bad configuration, 3 iptables failed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import sys
import time

from controllerkit.cli import ExactArgumentParser

from controllerkit import iptables

from . import lock, verify

EXIT_OK, EXIT_UNVERIFIED, EXIT_CONFIG, EXIT_IPTABLES = 0, 1, 2, 3

ENV_HELP = """environment:
  ALLOW_DNS              resolver address(es) allowed on udp/tcp 53 (comma/space separated);
                         unset = only the nameservers in /etc/resolv.conf (the cluster resolver
                         kubelet configured; the original allowed any resolver when unset);
                         "any" = any resolver (the original's default, a DNS data channel)
  BLOCK_SVC_CIDR         CIDR(s) to reject (e.g. the cluster's service range)
  NODE_NAME              node name; resolved to allow tcp NODE:1080 (standard-mode proxy)
  TPROXY_VERIFY          true (default) | false: prove interception before exiting
  TPROXY_VERIFY_TIMEOUT  seconds to keep probing, finite and >= 0 (default 60)
  TPROXY_RESOLV_CONF     resolv.conf to read when ALLOW_DNS is unset (default /etc/resolv.conf)
  TPROXY_IPTABLES_BACKEND auto (default) | legacy | nft: which iptables to write the lock with;
                         auto = the one this pod's network namespace already uses (nft when
                         it holds no rules, legacy when nf_tables is not usable here)
"""


def log(event: str, level: str = "info", **kw) -> None:
    """One JSON object per line on stderr (structlog-compatible keys, stdlib only)."""
    rec = {
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "level": level,
        "logger": "sidecar",
        "event": event,
        **kw,
    }
    print(json.dumps(rec, default=str), file=sys.stderr, flush=True)


def _truthy(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    v = raw.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise lock.LockConfigError(f"{name}: {raw!r} is not a boolean (true/false)")


def resolve_node(node: str) -> list[str]:
    try:
        infos = socket.getaddrinfo(node, None, proto=socket.IPPROTO_TCP)
    except socket.gaierror as e:
        raise lock.LockConfigError(
            f"NODE_NAME: cannot resolve node {node!r} to an address for the standard-mode proxy "
            f"rule ({e.strerror}); fix the pod's DNS/hosts or unset NODE_NAME"
        ) from None
    out: list[str] = []
    for info in infos:
        ip = str(info[4][0]).split("%")[0]
        if ip not in out:
            out.append(ip)
    return out


def config_from_env() -> lock.LockConfig:
    cfg = lock.LockConfig()
    allow = os.environ.get("ALLOW_DNS", "").strip()
    if allow.lower() == "any":
        cfg.dns_any = True
    elif allow:
        cfg.dns = lock.parse_addresses("ALLOW_DNS", allow)
    else:
        cfg.dns = lock.resolv_conf_nameservers(os.environ.get("TPROXY_RESOLV_CONF", "/etc/resolv.conf"))
    cfg.block = lock.parse_cidrs("BLOCK_SVC_CIDR", os.environ.get("BLOCK_SVC_CIDR"))
    node = os.environ.get("NODE_NAME", "").strip()
    if node:
        cfg.node_ips = resolve_node(node)
    return cfg


def ipv6_disabled() -> bool:
    try:
        with open("/proc/sys/net/ipv6/conf/all/disable_ipv6") as f:
            return f.read().strip() == "1"
    except OSError:
        return True  # no IPv6 stack at all


def apply_family(version: int, cfg: lock.LockConfig, backend: str) -> None:
    """One family's lock in one restore transaction (raises iptables.IptablesError)."""
    family = f"ipv{version}"
    cur = iptables.list_chain(family, "filter", "OUTPUT", backend=backend)
    if cur.returncode != 0:
        raise iptables.IptablesError(
            f"{iptables.binary(family, backend)} -S OUTPUT failed: {cur.stderr.strip()}",
            family=family,
            table="filter",
            stderr=cur.stderr,
        )
    jumps, first = lock.parse_jumps(cur.stdout)
    text = (lock.render_v4 if version == 4 else lock.render_v6)(cfg, jumps, first)
    iptables.restore(family, text, backend=backend, table="filter")
    log("lock_applied", family=family, backend=backend, rules=text.count("\n-A "), replaced_jumps=len(jumps))


def build_parser() -> argparse.ArgumentParser:
    p = ExactArgumentParser(
        prog="tproxy-sidecar",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Apply the pod's IPv4/IPv6 egress lock atomically (iptables-restore), then "
        "prove that tcp/80 is intercepted by the tproxy proxy before the app starts.",
        epilog=ENV_HELP,
    )
    p.add_argument("--dry-run", action="store_true", help="print the rendered restore input and exit")
    p.add_argument("--no-verify", action="store_true", help="skip the interception proof (same as TPROXY_VERIFY=false)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = config_from_env()
        do_verify = _truthy("TPROXY_VERIFY", True) and not args.no_verify
        raw_timeout = os.environ.get("TPROXY_VERIFY_TIMEOUT", "60")
        try:
            timeout = float(raw_timeout)
        except ValueError:
            timeout = math.nan
        # nan/inf/negative would make the proof loop forever (the pod hangs in Init) or end at once
        if not (math.isfinite(timeout) and timeout >= 0):
            raise lock.LockConfigError(f"TPROXY_VERIFY_TIMEOUT: {raw_timeout!r} is not a number of seconds (finite, >= 0)")
        backend_setting = iptables.parse_setting(os.environ.get(iptables.ENV))
    except (lock.LockConfigError, iptables.BackendConfigError) as e:
        log("config_error", level="error", message=str(e))
        print(f"tproxy-sidecar: {e}", file=sys.stderr)
        return EXIT_CONFIG
    if args.dry_run:
        for fam, text in lock.all_families(cfg).items():
            sys.stdout.write(f"# {fam}\n{text}")
        return EXIT_OK
    log("locking", **lock.describe(cfg))
    if not cfg.dns and not cfg.dns_any:
        log(
            "no_dns_allowed",
            level="warning",
            message="ALLOW_DNS is unset and the pod's resolv.conf names no nameserver: DNS will be refused",
        )
    try:
        chosen = iptables.choose(backend_setting)  # in the pod's own network namespace
        log("iptables_backend", setting=backend_setting, **chosen.describe())
        apply_family(4, cfg, chosen.backend)
        try:
            apply_family(6, cfg, chosen.backend)
        except iptables.IptablesError as e:
            if not ipv6_disabled():
                raise
            log("ipv6_skipped", level="warning", reason="IPv6 is disabled in this pod", detail=str(e))
    except (iptables.IptablesError, OSError) as e:
        log("lock_failed", level="error", message=str(e), offending_lines=getattr(e, "lines", []))
        print(f"tproxy-sidecar: egress lock not applied: {e}", file=sys.stderr)
        return EXIT_IPTABLES
    if not do_verify:
        log("verify_skipped", reason="TPROXY_VERIFY=false or --no-verify")
        return EXIT_OK
    node = os.environ.get("NODE_NAME", "")
    ok, detail = verify.verify(timeout, node=node, log=log)
    if not ok:
        log("verify_failed", level="error", message=detail)
        print(f"tproxy-sidecar: {detail}", file=sys.stderr)
        return EXIT_UNVERIFIED
    log("verified", detail=detail)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
