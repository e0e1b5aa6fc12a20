"""iptables for the sidecar and podwatch: which backend, which binary, one atomic restore.

Standard library only: the sidecar image installs the package with ``--no-deps``.

**Backends.** A node runs either iptables-legacy (the kernel's x_tables; Kubernetes 1.7–1.13 era
nodes) or iptables-nft (nf_tables; newer nodes, and Debian's default ``iptables``). The kernel
evaluates both, so rules written into the backend the node's other tooling (kube-proxy) does not
use are not ordered with its rules: our jump "at the top of PREROUTING" is only at the top of
*one* of two PREROUTINGs. So we never mix: pick the backend the namespace already uses and call
its binaries by name (``iptables-legacy-restore``, ``ip6tables-nft-restore``, ...), never the
unqualified ``iptables`` (that is whatever the image's alternatives point at).

**Detection** (:func:`detect`) follows kube-proxy's iptables-wrapper (kubernetes-sigs/iptables-wrappers),
in the namespace the process runs in:

1. kubelet >= 1.17 creates ``KUBE-IPTABLES-HINT`` / ``KUBE-KUBELET-CANARY`` in the mangle table of
   the backend it uses: nft checked first, then legacy. That backend wins.
2. Otherwise (the 1.7–1.13 nodes we target have no hint chain) count rule lines (``-A ...``) in
   ``iptables-save`` + ``ip6tables-save`` of each backend: the backend with **more** rules wins.
3. A tie (in practice: both empty, a fresh namespace) picks nft, as the wrapper does, unless the
   nft backend is not usable here (its save failed, e.g. a kernel without nf_tables) while the
   legacy one is.

Which version of the wrapper, and why. kube-proxy's images of the 1.17–1.19 era carried
kubernetes' own ``build/debian-iptables/iptables-wrapper``: legacy when legacy holds >= 10 rules
(without even asking nft: iptables-nft 1.8.3 could hang), else legacy when legacy >= nft, so a tie
went to **legacy**. kubernetes-sigs/iptables-wrappers (the shell wrapper since 2020 and the Go one
now) added the hint chains and breaks ties to **nft** (``-gt``; the Go version defaults to nft when
no hint is found). We take the latter: the >= 10 shortcut only worked around a bug of an
iptables-nft we do not ship (1.8.9), "more rules wins" covers every node that runs kube-proxy,
and a tie means nothing in this namespace to be ordered against, where nft is Debian's default,
the only backend of kernels built without the legacy modules, and what ``iptables`` in our images
is. A kernel without nf_tables (old 1.7-era kernels) still gets legacy through the usability check,
and ``TPROXY_IPTABLES_BACKEND=legacy`` forces it.

**The override** ``TPROXY_IPTABLES_BACKEND`` (``auto`` | ``legacy`` | ``nft``; podwatch also takes
``--iptables-backend``): anything but ``auto`` skips detection. Anything else is a
:class:`BackendConfigError` naming the value.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from typing import Callable, Sequence

BACKENDS = ("legacy", "nft")
SETTINGS = ("auto", *BACKENDS)
DEFAULT_BACKEND = "nft"  # the tie-break, and what library callers get without a detection
ENV = "TPROXY_IPTABLES_BACKEND"
FAMILY_TOOL = {"ipv4": "iptables", "ipv6": "ip6tables"}
HINT_CHAINS = re.compile(r"^:(KUBE-IPTABLES-HINT|KUBE-KUBELET-CANARY)\s", re.M)
OWN_CHAIN = re.compile(r"^:TPROXY-", re.M)

#: runner(argv, input_text) -> CompletedProcess; injectable so tests can wrap ``ip netns exec``.
Runner = Callable[[Sequence[str], "str | None"], subprocess.CompletedProcess]


class BackendConfigError(ValueError):
    """A backend setting that is not auto, legacy or nft (the message names where it came from)."""


class IptablesError(RuntimeError):
    """An iptables(-restore) call failed. ``lines`` are the offending input lines (if known)."""

    def __init__(self, message: str, *, family: str = "", table: str = "", stderr: str = "", lines: Sequence[str] = ()):
        super().__init__(message)
        self.family, self.table, self.stderr, self.lines = family, table, stderr, list(lines)


def default_runner(argv: Sequence[str], input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), input=input, capture_output=True, text=True, timeout=60)


def netns_runner(netns_name: str) -> Runner:
    """A runner that executes every iptables call inside ``ip netns exec NAME``."""

    def run(argv: Sequence[str], input: str | None = None) -> subprocess.CompletedProcess:
        return default_runner(["ip", "netns", "exec", netns_name, *argv], input)

    return run


def binary(family: str, backend: str, suffix: str = "") -> str:
    """``binary("ipv6", "nft", "restore")`` -> ``ip6tables-nft-restore``; ``suffix`` "" | save | restore."""
    if family not in FAMILY_TOOL:
        raise ValueError(f"unknown address family {family!r} (ipv4, ipv6)")
    if backend not in BACKENDS:
        raise ValueError(f"unknown iptables backend {backend!r} (legacy, nft)")
    return "-".join(p for p in (FAMILY_TOOL[family], backend, suffix) if p)


def parse_setting(value: str | None, source: str = ENV) -> str:
    """``auto`` (also for unset/empty), ``legacy`` or ``nft``; anything else raises."""
    v = (value or "").strip().lower()
    if not v:
        return "auto"
    if v not in SETTINGS:
        raise BackendConfigError(f"{source}: {value!r} is not an iptables backend (auto, legacy, nft)")
    return v


def run(argv: Sequence[str], runner: Runner | None = None, input: str | None = None) -> subprocess.CompletedProcess:
    """Run one iptables binary; a missing binary or a timeout becomes :class:`IptablesError`."""
    try:
        return (runner or default_runner)(argv, input)
    except (OSError, subprocess.SubprocessError) as e:
        raise IptablesError(f"{argv[0]} could not run: {e}", stderr=str(e)) from e


# -- detection -------------------------------------------------------------------------------
@dataclass
class Detection:
    """The backend to use and why (logged by both components)."""

    backend: str
    reason: str
    rules: dict[str, int] = field(default_factory=dict)  # backend -> rule lines (v4 + v6)
    unusable: dict[str, str] = field(default_factory=dict)  # backend -> why its save failed
    ours_elsewhere: list[str] = field(default_factory=list)  # other backends holding TPROXY-* chains

    def describe(self) -> dict:
        return {
            "backend": self.backend,
            "reason": self.reason,
            "rules": self.rules,
            **({"unusable": self.unusable} if self.unusable else {}),
            **({"stale_tproxy_chains_in": self.ours_elsewhere} if self.ours_elsewhere else {}),
        }


def _save_all(backend: str, runner: Runner | None) -> tuple[str, str | None]:
    """``iptables-save`` + ``ip6tables-save`` of one backend: (text, error of the IPv4 save or None).

    Only the IPv4 save decides usability: a node without IPv6 still has a usable backend.
    """
    out, err = [], None
    for fam in FAMILY_TOOL:
        try:
            proc = run([binary(fam, backend, "save")], runner)
        except IptablesError as e:
            proc = subprocess.CompletedProcess([], 127, "", str(e))
        if proc.returncode == 0:
            out.append(proc.stdout)
        elif fam == "ipv4":
            err = (proc.stderr or "").strip() or f"exit status {proc.returncode}"
    return "".join(out), err


def detect(runner: Runner | None = None) -> Detection:
    """Which backend this network namespace uses (see the module docstring for the rule)."""
    saved, errors = {}, {}
    for backend in ("nft", "legacy"):  # the hint is looked for in nft first, as the wrapper does
        saved[backend], err = _save_all(backend, runner)
        if err is not None:
            errors[backend] = err
    counts = {b: sum(1 for ln in saved[b].splitlines() if ln.startswith("-")) for b in BACKENDS}

    def done(backend: str, reason: str) -> Detection:
        other = [b for b in BACKENDS if b != backend and OWN_CHAIN.search(saved[b])]
        return Detection(backend, reason, counts, errors, other)

    for backend in ("nft", "legacy"):
        if HINT_CHAINS.search(saved[backend]):
            return done(backend, f"kubelet's hint chain (KUBE-IPTABLES-HINT/KUBE-KUBELET-CANARY) is in {backend}")
    if counts["legacy"] != counts["nft"]:
        more = max(BACKENDS, key=counts.__getitem__)
        return done(more, f"{more} holds more rules ({counts['legacy']} legacy, {counts['nft']} nft)")
    if "nft" in errors and "legacy" not in errors:
        return done("legacy", f"no rules in either backend and nft is not usable here ({errors['nft']})")
    return done(
        DEFAULT_BACKEND,
        f"no rules decide ({counts['nft']} in each backend): {DEFAULT_BACKEND}, Debian's default and iptables-wrapper's",
    )


def choose(setting: str, runner: Runner | None = None) -> Detection:
    """The backend for ``setting`` (already parsed): the override as given, or :func:`detect`."""
    if setting in BACKENDS:
        return Detection(setting, f"set by {ENV} / flag")
    return detect(runner)


# -- rules -----------------------------------------------------------------------------------
def quote(text: str) -> str:
    """Quote a comment for iptables-restore (it tokenises like a shell, double quotes only)."""
    return '"' + text.replace("\\", "").replace('"', "'") + '"'


def find_jumps(listing: str, builtin: str, chain: str) -> tuple[list[str], bool]:
    """From ``iptables -S BUILTIN`` output: the rules jumping to ``chain``, and whether the first is one."""
    rules = [ln for ln in listing.splitlines() if ln.startswith(f"-A {builtin} ")]
    ours = [ln for ln in rules if re.search(rf"(^|\s)-j {re.escape(chain)}(\s|$)", ln)]
    return ours, bool(rules) and rules[0] in ours


def jump_fixup(builtin: str, chain: str, comment: str, existing: Sequence[str], first: bool) -> list[str]:
    """Restore lines leaving exactly one jump to ``chain``, at position 1 of ``builtin``.

    Nothing when that already holds; otherwise every existing copy is deleted and one inserted, in
    the caller's transaction (so no window without the jump).
    """
    if len(existing) == 1 and first:
        return []
    lines = ["-D " + ln[len("-A ") :] for ln in existing]
    lines.append(f"-I {builtin} 1 -m comment --comment {quote(comment)} -j {chain}")
    return lines


def list_chain(
    family: str, table: str, chain: str, *, backend: str = DEFAULT_BACKEND, runner: Runner | None = None
) -> subprocess.CompletedProcess:
    """``iptables-<backend> -w 5 -t TABLE -S CHAIN`` (the caller judges the return code)."""
    return run([binary(family, backend), "-w", "5", "-t", table, "-S", chain], runner)


_ERR_LINE = re.compile(r"line:?\s*(\d+)", re.I)


def offending_lines(text: str, stderr: str) -> list[str]:
    """The input lines an iptables-restore error is about (``N: line``), best effort."""
    lines = text.splitlines()
    bad: list[str] = []
    for m in _ERR_LINE.finditer(stderr):
        n = int(m.group(1))
        if 1 <= n <= len(lines) and lines[n - 1] != "COMMIT":
            bad.append(f"{n}: {lines[n - 1]}")
    if not bad:
        # nf_tables reports errors found at commit time at the COMMIT line: find the rules that
        # mention what the message quotes (e.g. "Chain 'X' does not exist"), else show the rules.
        quoted = [q for q in re.findall(r"[`'\"]([^`'\"]+)'", stderr) if q.strip()]
        bad = [
            f"{i + 1}: {ln}"
            for i, ln in enumerate(lines)
            if ln.startswith(("-A ", "-I ", "-D ")) and any(q in ln for q in quoted)
        ]
    if not bad:
        bad = [f"{i + 1}: {ln}" for i, ln in enumerate(lines) if ln.startswith(("-A ", "-I ", "-D "))][:20]
    return bad


def restore(
    family: str, text: str, *, backend: str = DEFAULT_BACKEND, noflush: bool = True, table: str = "", runner: Runner | None = None
) -> None:
    """Apply ``text`` with ONE ``<family>-<backend>-restore [--noflush]`` call (atomic), or raise
    :class:`IptablesError` carrying the offending input lines. ``table`` only labels the error."""
    tool = binary(family, backend, "restore")
    argv = [tool, "-w", "5", *(["--noflush"] if noflush else [])]
    proc = run(argv, runner, text)
    if proc.returncode == 0:
        return
    what = f"{tool}{' --noflush' if noflush else ''}{f' ({table})' if table else ''}"
    raise IptablesError(
        f"{what} failed: {proc.stderr.strip()}",
        family=family,
        table=table,
        stderr=proc.stderr,
        lines=offending_lines(text, proc.stderr),
    )
