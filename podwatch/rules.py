"""Node-side capture rules as data: render the whole desired state, apply it in one transaction.

Why this shape (kube-proxy / istio-iptables style, and unlike the original per-pod Go loop):

* Every rule podwatch owns lives in chains it owns, reached by one jump at the *top* of a
  built-in chain:

  - ``nat``/``TPROXY-REDIRECT`` (from ``PREROUTING``): per locked pod IP, tcp 80/443 is
    ``REDIRECT``-ed to the proxy's host port. Each rule carries ``-m comment --comment ns/name``.
  - ``filter``/``TPROXY-GUARD`` (from ``FORWARD``): fail closed at the node. Redirected traffic
    is delivered locally (INPUT) and never reaches FORWARD, so anything a locked pod sends that
    *is* forwarded bypassed the redirect (a deleted jump, a flushed chain, a restart of some
    other agent). The guard lets replies of established flows through; each locked pod IP has
    one rule jumping to ``TPROXY-GUARD-LOCKED``, which lets DNS (udp/tcp 53) pass and rejects
    the rest (tcp with a reset, others with admin-prohibited). One rule per pod keeps a sync
    at thousands of pods cheap.
    The pod-side lock (sidecar) already refuses everything but DNS and web; the guard makes the
    node enforce the same shape even if a privileged app container flushed its own lock.

* Each (family, table) is applied with ONE ``iptables-restore --noflush``: declaring an owned
  chain (``:TPROXY-REDIRECT - [0:0]``) atomically replaces its contents, so a resync or a
  restart never opens a window (never flush in one call and re-add in another). The jump is
  (re)inserted at position 1 in the same transaction when it is missing, duplicated or not
  first; reading the built-in chain (``iptables -S PREROUTING``) is the only extra call.

* The filter table is applied before nat on additions (guard before redirect) so that, for a
  moment, a pod is rejected rather than let out.

Public API (used by the controller, the tests and bench/):

``locked_pods(pods, annotation)``, ``render(pods, host_port, live=None)``,
``apply(rendered, runner=None)``, ``sync(pods, host_port, runner=None)``,
``read_live(family, runner=None)``, ``read_programmed(family, runner=None)``, ``render_cleanup(live)``,
``cleanup(runner=None)``. Every call that touches iptables also takes ``backend`` ("legacy" or
"nft", default nft); the controller passes the one :func:`controllerkit.iptables.detect` chose, and
all binaries are named for it (``iptables-legacy-restore``, ...). The restore call, the jump
fix-up and the error type are shared with the sidecar (:mod:`controllerkit.iptables`).
"""

from __future__ import annotations

import ipaddress
import shlex
from dataclasses import dataclass, field
from typing import Collection, Iterable, Mapping, Sequence

from controllerkit import iptables, optin
from controllerkit.iptables import (
    DEFAULT_BACKEND,
    IptablesError,
    Runner,
    default_runner,  # noqa: F401
    netns_runner,  # noqa: F401  (re-exported: tests and bench import it from here)
)

FAMILIES = ("ipv4", "ipv6")
TABLES = ("filter", "nat")  # application order: guard first, then redirect
REDIRECT_CHAIN = "TPROXY-REDIRECT"
GUARD_CHAIN = "TPROXY-GUARD"
LOCKED_CHAIN = "TPROXY-GUARD-LOCKED"  # what a locked pod may still forward: DNS; the rest is rejected
REDIRECT_JUMP_COMMENT = "tproxy: redirect locked pods web traffic to the proxy"
GUARD_JUMP_COMMENT = "tproxy: reject locked pods traffic that escaped the redirect"
WEB_PORTS = "80,443"

#: table -> (built-in chain, owned chain, comment on the jump)
OWNED = {
    "nat": ("PREROUTING", REDIRECT_CHAIN, REDIRECT_JUMP_COMMENT),
    "filter": ("FORWARD", GUARD_CHAIN, GUARD_JUMP_COMMENT),
}
REJECT_OTHER = {"ipv4": "icmp-admin-prohibited", "ipv6": "icmp6-adm-prohibited"}


@dataclass(frozen=True, order=True)
class LockedPod:
    """One annotated pod IP on this node. A dual-stack pod yields one LockedPod per IP."""

    ip: str
    namespace: str
    name: str
    uid: str = field(default="", compare=False)
    service_account: str = field(default="", compare=False)
    labels: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False)

    @property
    def family(self) -> str:
        # called for every pod in every render: a ':' test, not an ipaddress parse (an IPv6
        # address always has one, an IPv4 address never)
        return "ipv6" if ":" in self.ip else "ipv4"

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


_annotation_true = optin.is_true


def annotated(pod: Mapping, annotation: str) -> bool:
    """Whether the pod's ``annotation`` says "true" (case-insensitive)."""
    return _annotation_true(((pod.get("metadata") or {}).get("annotations") or {}).get(annotation))


def pod_ips(pod: Mapping) -> list[str]:
    """status.podIPs (newer clusters) or status.podIP (1.7); valid addresses only, deduplicated."""
    status = pod.get("status") or {}
    raw = [p.get("ip") for p in (status.get("podIPs") or []) if isinstance(p, Mapping)]
    raw.append(status.get("podIP"))
    out: list[str] = []
    for ip in raw:
        if not ip:
            continue
        try:
            norm = str(ipaddress.ip_address(ip))
        except ValueError:
            continue
        if norm not in out:
            out.append(norm)
    return out


def locked_pods(
    pods: Iterable[Mapping],
    annotation: str = optin.DEFAULT_ANNOTATION,
    *,
    namespace: str | None = None,
    also_uids: Collection[str] = (),
) -> list[LockedPod]:
    """The desired state: pods whose ``annotation`` is "true", with an IP, not terminated.

    ``also_uids``: pods (by uid) that stay locked whatever their annotation says now. The
    controller passes the pods it has already seen locked: removing the annotation from a running
    pod must not lift the node's redirect and guard while the pod's own lock still lets tcp
    80/443 out (that would be a bypass, not an opt-out).

    A pod being deleted (``deletionTimestamp`` set) keeps its rules: its containers still run
    during the grace period, and dropping the redirect early would let them out unfiltered.
    Rules go once the pod object is gone or its phase is Succeeded/Failed. A ``hostNetwork`` pod is
    never locked: its IP is the node's, and rules for it would capture or reject the node itself.
    """
    out: set[LockedPod] = set()
    for pod in pods:
        meta = pod.get("metadata") or {}
        if namespace and meta.get("namespace") != namespace:
            continue
        if not (annotated(pod, annotation) or (meta.get("uid") and meta.get("uid") in also_uids)):
            continue
        if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            continue
        spec = pod.get("spec") or {}
        if spec.get("hostNetwork"):
            continue
        for ip in pod_ips(pod):
            out.add(
                LockedPod(
                    ip=ip,
                    namespace=meta.get("namespace", ""),
                    name=meta.get("name", ""),
                    uid=meta.get("uid", ""),
                    service_account=spec.get("serviceAccountName") or spec.get("serviceAccount") or "default",
                    labels=dict(meta.get("labels") or {}),
                )
            )
    return sorted(out, key=lambda p: (p.family, ipaddress.ip_address(p.ip), p.namespace, p.name))


# -- live state ------------------------------------------------------------------------------
@dataclass
class LiveJumps:
    """The jumps to our chains currently in the built-in chains of one family.

    ``jumps[table]`` is the list of rule specs (``-A PREROUTING ...`` lines, exactly as
    ``iptables -S`` prints them) that jump to our chain; ``first[table]`` says whether the
    built-in chain's first rule is our jump; ``chains`` are the owned chains that exist.
    """

    jumps: dict[str, list[str]] = field(default_factory=dict)
    first: dict[str, bool] = field(default_factory=dict)
    chains: set[str] = field(default_factory=set)


def read_live(family: str, runner: Runner | None = None, *, chains: bool = False, backend: str = DEFAULT_BACKEND) -> LiveJumps:
    """Read the built-in chains we hook into (cheap: ``-S CHAIN`` lists one chain).

    ``chains=True`` also checks which owned chains exist (only :func:`cleanup` needs that: a sync
    declares its chains, which creates them when missing).
    """
    live = LiveJumps()
    for table, (builtin, chain, _) in OWNED.items():
        proc = iptables.list_chain(family, table, builtin, backend=backend, runner=runner)
        if proc.returncode != 0:
            raise IptablesError(
                f"{iptables.binary(family, backend)} -t {table} -S {builtin} failed: {proc.stderr.strip()}",
                family=family,
                table=table,
                stderr=proc.stderr,
            )
        live.jumps[table], live.first[table] = iptables.find_jumps(proc.stdout, builtin, chain)
        for owned in ([chain, LOCKED_CHAIN] if table == "filter" else [chain]) if chains else ():
            chk = iptables.list_chain(family, table, owned, backend=backend, runner=runner)
            if chk.returncode == 0:
                live.chains.add(owned)
    return live


def read_programmed(family: str, runner: Runner | None = None, *, backend: str = DEFAULT_BACKEND) -> set[tuple[str, str]]:
    """``(ip, "ns/name")`` of the redirect rules now in our nat chain (empty if it does not exist).

    The rules survive a podwatch restart, so they are its memory of which pods were locked.
    """
    proc = iptables.list_chain(family, "nat", REDIRECT_CHAIN, backend=backend, runner=runner)
    out: set[tuple[str, str]] = set()
    if proc.returncode != 0:
        return out
    for ln in proc.stdout.splitlines():
        try:
            words = shlex.split(ln)
            ip = str(ipaddress.ip_network(words[words.index("-s") + 1], strict=False).network_address)
            out.add((ip, words[words.index("--comment") + 1]))
        except (ValueError, IndexError):
            continue
    return out


# -- rendering -------------------------------------------------------------------------------
_q = iptables.quote


def _cidr(ip: str) -> str:
    return f"{ip}/{128 if ':' in ip else 32}"


def _jump_lines(table: str, live: LiveJumps | None) -> list[str]:
    """Lines that leave exactly one jump, at position 1 (nothing when that is already true)."""
    builtin, chain, comment = OWNED[table]
    if not live:
        return iptables.jump_fixup(builtin, chain, comment, [], False)
    return iptables.jump_fixup(builtin, chain, comment, live.jumps.get(table, []), live.first.get(table, False))


MAX_PROXY_PORTS = 64


def port_range(host_port: int | str) -> tuple[int, int]:
    """``8080`` or ``"8080-8081"`` (the proxy workers' ports, proxy/workers.py) → ``(first, last)``;
    ValueError naming the problem."""
    text = str(host_port).strip()
    first_s, _, last_s = text.partition("-")
    try:
        first, last = int(first_s), int(last_s or first_s)
    except ValueError:
        raise ValueError(f"proxy port {host_port!r} is not a port or a range A-B") from None
    if not (1 <= first <= last <= 65535):
        raise ValueError(f"proxy port {host_port!r} is not a TCP port or an ascending range (1-65535)")
    if last - first + 1 > MAX_PROXY_PORTS:
        raise ValueError(f"proxy port range {host_port!r} has more than {MAX_PROXY_PORTS} ports")
    return first, last


def redirect_target(host_port: int | str) -> str:
    """The REDIRECT target: one port, or a range picked at random per connection.

    ``--random`` is needed: without it the kernel keeps the first port of a destination range
    whenever the tuple is unique, which it always is (the client's port differs), so every
    connection would reach the first worker. A worker that is down leaves its port without a
    listener: the connections picked for it are reset (refused), never forwarded past the proxy."""
    first, last = port_range(host_port)
    return f"REDIRECT --to-ports {first}" if first == last else f"REDIRECT --to-ports {first}-{last} --random"


def read_ports_file(path: str, host_port: int) -> tuple[int | str, str | None]:
    """The proxy's port range from its ports file (``A-B``, written by proxy/workers.py), checked to
    start at ``host_port``; ``(host_port, reason)`` when the file is missing or unusable (the first
    worker always listens on ``host_port``, so one port is always served)."""
    try:
        with open(path, encoding="ascii") as f:
            text = f.read().strip()
    except OSError as e:
        return host_port, f"{path}: {e.strerror or e}"
    try:
        first, last = port_range(text)
    except ValueError as e:
        return host_port, f"{path}: {e}"
    if first != int(host_port):
        return host_port, f"{path}: range {text} does not start at the host port {host_port}"
    return (f"{first}-{last}" if last > first else first), None


def render_table(family: str, table: str, pods: Sequence[LockedPod], host_port: int | str, live: LiveJumps | None = None) -> str:
    """The restore input for one (family, table): chain header, jump fix-up, full chain body.
    ``host_port``: the proxy's port or its workers' range ``"A-B"`` (:func:`redirect_target`)."""
    builtin, chain, _ = OWNED[table]
    mine = [p for p in pods if p.family == family]
    out = [f"*{table}", f":{chain} - [0:0]", *_jump_lines(table, live)]
    if table == "nat":
        target = redirect_target(host_port)
        for p in mine:
            out.append(
                f"-A {chain} -s {_cidr(p.ip)} -p tcp -m multiport --dports {WEB_PORTS} "
                f"-m comment --comment {_q(p.key)} -j {target}"
            )
    else:
        out.insert(2, f":{LOCKED_CHAIN} - [0:0]")
        if mine:
            out.append(f"-A {chain} -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN")
        for p in mine:
            out.append(f"-A {chain} -s {_cidr(p.ip)} -m comment --comment {_q(p.key)} -j {LOCKED_CHAIN}")
        out += [
            f"-A {LOCKED_CHAIN} -p udp -m udp --dport 53 -j RETURN",
            f"-A {LOCKED_CHAIN} -p tcp -m tcp --dport 53 -j RETURN",
            f"-A {LOCKED_CHAIN} -p tcp -j REJECT --reject-with tcp-reset",
            f"-A {LOCKED_CHAIN} -j REJECT --reject-with {REJECT_OTHER[family]}",
        ]
    out.append("COMMIT")
    return "\n".join(out) + "\n"


def render(
    pods: Iterable[LockedPod], host_port: int | str, live: Mapping[str, LiveJumps] | None = None
) -> dict[str, dict[str, str]]:
    """Desired state -> ``{family: {table: restore_text}}`` for both families and both tables.

    Both families are always rendered (an empty chain is how stale rules of the other family
    disappear). ``live`` (per family, from :func:`read_live`) only decides the jump fix-up;
    without it the jump is inserted as on a fresh node.
    """
    pods = list(pods)
    port_range(host_port)  # ValueError for a bad port or range
    return {fam: {t: render_table(fam, t, pods, host_port, (live or {}).get(fam)) for t in TABLES} for fam in FAMILIES}


def render_cleanup(live: LiveJumps) -> dict[str, str]:
    """Restore input per table removing every jump and owned chain (for ``--cleanup``)."""
    out = {}
    for table in TABLES:
        builtin, chain, _ = OWNED[table]
        chains = [c for c in ([chain, LOCKED_CHAIN] if table == "filter" else [chain]) if c in live.chains]
        lines = [f"*{table}", *(f":{c} - [0:0]" for c in chains)]
        lines += ["-D " + ln[len("-A ") :] for ln in live.jumps.get(table, [])]
        lines += [f"-X {c}" for c in chains]  # the referencing chain first
        lines.append("COMMIT")
        out[table] = "\n".join(lines) + "\n"
    return out


# -- applying --------------------------------------------------------------------------------
def restore(family: str, table: str, text: str, runner: Runner | None = None, *, backend: str = DEFAULT_BACKEND) -> None:
    """Apply one table with one ``iptables-restore --noflush`` (atomic), or raise IptablesError."""
    iptables.restore(family, text, backend=backend, table=table, runner=runner)


def apply(
    rendered: Mapping[str, Mapping[str, str]],
    runner: Runner | None = None,
    families: Iterable[str] | None = None,
    *,
    backend: str = DEFAULT_BACKEND,
) -> None:
    """Apply rendered restore input: per family, filter (guard) then nat (redirect)."""
    for fam in families or rendered.keys():
        for table in TABLES:
            if table in rendered[fam]:
                restore(fam, table, rendered[fam][table], runner, backend=backend)


@dataclass
class SyncResult:
    rules: dict[str, int]  # family -> number of rules in owned chains
    failed: dict[str, IptablesError]  # family -> error (families that did not apply)
    skipped: list[str] = field(default_factory=list)  # families left alone (unchanged, not forced)
    incremental: list[str] = field(default_factory=list)  # families changed by per-pod lines only


def count_rules(rendered_table: str) -> int:
    return sum(1 for ln in rendered_table.splitlines() if ln.startswith("-A "))


def sync(
    pods: Iterable[LockedPod], host_port: int, runner: Runner | None = None, *, backend: str = DEFAULT_BACKEND
) -> SyncResult:
    """Make the node's owned chains equal to ``pods``: read the jumps, render, apply (stateless,
    every family rewritten; the controller uses :class:`Syncer`).

    One family failing does not stop the other; the caller judges the errors (an IPv6 failure on
    a node without IPv6 and without IPv6 pods is harmless).
    """
    pods = list(pods)
    result = SyncResult(rules={}, failed={})
    for fam in FAMILIES:
        try:
            live = read_live(fam, runner, backend=backend)
            text = render(pods, host_port, {fam: live})[fam]
            apply({fam: text}, runner, backend=backend)
            result.rules[fam] = sum(count_rules(t) for t in text.values())
        except IptablesError as e:
            result.failed[fam] = e
    return result


# An incremental change larger than this is applied as a full rewrite (a burst, a host-port change).
DELTA_MAX_LINES = 64


def _per_pod(table: str):
    """Predicate: is a rendered line one pod's rule (order-independent within its chain)?"""
    prefix = f"-A {OWNED[table][1]} -s "
    return lambda line: line.startswith(prefix)


def render_delta(applied: Mapping[str, str], desired: Mapping[str, str]) -> dict[str, str] | None:
    """Restore input changing only per-pod rules: ``{table: text}`` (tables that differ), or None.

    ``applied`` and ``desired`` are one family's :func:`render` output (without ``live``) for what
    was last applied and what is wanted. When they differ only in per-pod lines, each table gets
    ``-D`` for the rules that went and ``-A`` for the new ones, with no chain declaration, so the
    chain is not flushed and rewritten: a new pod costs a few ms instead of re-adding every rule
    (about 80 ms at 1,000 pods). Per-pod rules are independent of their order (each matches one
    source address; the filter chain's shared ESTABLISHED rule is part of the skeleton), so
    appending gives the same behaviour as the full render. None (rewrite everything) when anything
    else differs (the first pod or the last one, the host port, the skeleton), when the change is
    larger than ``DELTA_MAX_LINES``, or when lines repeat.
    """
    out: dict[str, str] = {}
    for table in TABLES:
        old, new = applied.get(table), desired.get(table)
        if old is None or new is None:
            return None
        if old == new:
            continue
        is_pod = _per_pod(table)
        old_lines, new_lines = old.splitlines(), new.splitlines()
        if [ln for ln in old_lines if not is_pod(ln)] != [ln for ln in new_lines if not is_pod(ln)]:
            return None
        old_pods = [ln for ln in old_lines if is_pod(ln)]
        new_pods = [ln for ln in new_lines if is_pod(ln)]
        old_set, new_set = set(old_pods), set(new_pods)
        if len(old_set) != len(old_pods) or len(new_set) != len(new_pods):
            return None
        gone = [ln for ln in old_pods if ln not in new_set]
        added = [ln for ln in new_pods if ln not in old_set]
        if len(gone) + len(added) > DELTA_MAX_LINES:
            return None
        out[table] = "\n".join([f"*{table}", *("-D " + ln[len("-A ") :] for ln in gone), *added, "COMMIT"]) + "\n"
    return out


class Syncer:
    """:func:`sync` with memory: an unforced sync leaves a family alone when its desired rules
    are exactly what this syncer last applied successfully (no iptables call at all), and changes
    only the rules of pods that came or went when that is all that differs (:func:`render_delta`).

    The controller forces the periodic resync (which repairs drift: a deleted jump, a flushed
    chain) and every retry after a failure; event-driven syncs skip the family that did not
    change (an IPv4 pod event does not rewrite the IPv6 tables), like kube-proxy's partial syncs.
    A failed incremental change (e.g. ``-D`` of a rule somebody removed) fails the family like
    any sync: the controller's forced retry rewrites it whole.
    """

    def __init__(self, host_port: int | str, runner: Runner | None = None, backend: str = DEFAULT_BACKEND):
        self.host_port, self.runner, self.backend = host_port, runner, backend
        self._applied: dict[str, dict[str, str]] = {}

    def sync(self, pods: Iterable[LockedPod], *, force: bool = False) -> SyncResult:
        pods = list(pods)
        desired = render(pods, self.host_port)
        result = SyncResult(rules={}, failed={})
        for fam in FAMILIES:
            if not force and self._applied.get(fam) == desired[fam]:
                result.skipped.append(fam)
                result.rules[fam] = sum(count_rules(t) for t in desired[fam].values())
                continue
            previous = None if force else self._applied.get(fam)
            self._applied.pop(fam, None)
            try:
                delta = render_delta(previous, desired[fam]) if previous is not None else None
                if delta is not None:
                    apply({fam: delta}, self.runner, backend=self.backend)
                    result.incremental.append(fam)
                else:
                    live = read_live(fam, self.runner, backend=self.backend)
                    apply({fam: render(pods, self.host_port, {fam: live})[fam]}, self.runner, backend=self.backend)
            except IptablesError as e:
                result.failed[fam] = e
                continue
            self._applied[fam] = desired[fam]
            result.rules[fam] = sum(count_rules(t) for t in desired[fam].values())
        return result


def cleanup(runner: Runner | None = None, *, backend: str = DEFAULT_BACKEND) -> dict[str, IptablesError]:
    """Remove every jump and chain podwatch owns, both families. Returns per-family errors."""
    errors = {}
    for fam in FAMILIES:
        try:
            live = read_live(fam, runner, chains=True, backend=backend)
            for table, text in render_cleanup(live).items():
                if text.count("\n") > 2:
                    restore(fam, table, text, runner, backend=backend)
        except IptablesError as e:
            errors[fam] = e
    return errors


def shell_quote(argv: Sequence[str]) -> str:
    return " ".join(shlex.quote(a) for a in argv)
