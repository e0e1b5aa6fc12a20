"""Network-namespace primitives shared by kubesim's topology, the tests and the benchmarks.

Everything here shells out to iproute2 (``ip``), as root. Namespaces are created with a
unique prefix per process so that concurrent test runs never collide, and every namespace
is registered so that :func:`cleanup_all` (called at interpreter exit and by tests) can kill
the processes still running inside and delete it. Deleting a namespace does not kill the
processes in it, so :meth:`Netns.delete` kills them first.

Per-namespace name resolution uses iproute2's convention: files in ``/etc/netns/NAME/`` are
bind-mounted over ``/etc/`` by ``ip netns exec`` (``hosts``, ``resolv.conf``), so a process
started through :meth:`Netns.exec_argv` sees the namespace's own hosts file.
"""

from __future__ import annotations

import atexit
import itertools
import os
import shutil
import signal
import subprocess
import threading
import time
from typing import Iterable, Mapping, Sequence

_counter = itertools.count(1)
_registry: dict[str, "Netns"] = {}
_lock = threading.Lock()


class NetnsError(RuntimeError):
    """A command that manipulates namespaces failed; the message carries its stderr."""


def sh(argv: Sequence[str], *, check: bool = True, input: str | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    """Run a command, capturing text output; raise NetnsError with stderr on failure."""
    proc = subprocess.run(list(argv), input=input, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise NetnsError(f"{' '.join(argv)!s} exited {proc.returncode}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def unique_name(prefix: str) -> str:
    """A namespace name unique to this process: ``<prefix>-<pid>-<n>``."""
    return f"{prefix}-{os.getpid()}-{next(_counter)}"


def unique_ifname(prefix: str) -> str:
    """An interface name (max 15 chars) unlikely to collide across processes."""
    return f"{prefix[:4]}{os.getpid() % 100000:x}{next(_counter):x}"[:15]


class Netns:
    """One network namespace. Create with :meth:`create`; remove with :meth:`delete`."""

    def __init__(self, name: str):
        self.name = name

    # -- lifecycle ---------------------------------------------------------------------------
    @classmethod
    def create(cls, prefix: str = "tp", *, name: str | None = None) -> "Netns":
        ns = cls(name or unique_name(prefix))
        sh(["ip", "netns", "add", ns.name])
        with _lock:
            _registry[ns.name] = ns
        ns.run("ip", "link", "set", "lo", "up")
        return ns

    def pids(self) -> list[int]:
        out = sh(["ip", "netns", "pids", self.name], check=False).stdout.split()
        return [int(p) for p in out if p.isdigit()]

    def kill_all(self, grace: float = 2.0) -> None:
        """SIGTERM every process in the namespace, then SIGKILL what is left after ``grace``."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = self.pids()
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and self.pids():
                time.sleep(0.05)

    def delete(self) -> None:
        self.kill_all()
        sh(["ip", "netns", "del", self.name], check=False)
        shutil.rmtree(f"/etc/netns/{self.name}", ignore_errors=True)
        with _lock:
            _registry.pop(self.name, None)

    def __enter__(self) -> "Netns":
        return self

    def __exit__(self, *exc) -> None:
        self.delete()

    # -- running things inside ---------------------------------------------------------------
    def exec_argv(self, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, *argv: str, check: bool = True, input: str | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
        return sh(self.exec_argv(argv), check=check, input=input, timeout=timeout)

    def popen(self, argv: Sequence[str], **kwargs) -> subprocess.Popen:
        return subprocess.Popen(self.exec_argv(argv), **kwargs)

    def sysctl(self, key: str, value: str | int) -> None:
        self.run("sysctl", "-qw", f"{key}={value}")

    # -- configuration -----------------------------------------------------------------------
    def add_addr(self, ifname: str, cidr: str) -> None:
        argv = ["ip", "addr", "add", cidr, "dev", ifname]
        if ":" in cidr:
            argv.append("nodad")
        self.run(*argv)

    def link_up(self, ifname: str) -> None:
        self.run("ip", "link", "set", ifname, "up")

    def route(self, *spec: str) -> None:
        """``ns.route("default", "via", "198.18.0.1")``; IPv6 is detected from the spec."""
        family = ["-6"] if any(":" in s for s in spec) else []
        self.run("ip", *family, "route", "replace", *spec)

    def write_etc(self, filename: str, content: str) -> str:
        """Write /etc/netns/NAME/<filename>; ``ip netns exec`` bind-mounts it over /etc/<filename>."""
        d = f"/etc/netns/{self.name}"
        os.makedirs(d, exist_ok=True)
        path = os.path.join(d, filename)
        with open(path, "w") as f:
            f.write(content)
        return path

    def write_hosts(self, mapping: Mapping[str, Iterable[str] | str]) -> str:
        """mapping: address -> hostname(s)."""
        lines = ["127.0.0.1 localhost", "::1 localhost ip6-localhost"]
        for addr, names in mapping.items():
            names = [names] if isinstance(names, str) else list(names)
            lines.append(f"{addr} {' '.join(names)}")
        return self.write_etc("hosts", "\n".join(lines) + "\n")

    def __repr__(self) -> str:
        return f"Netns({self.name!r})"


def veth(a: Netns, a_if: str, b: Netns, b_if: str, *, mtu: int | None = None) -> None:
    """Create a veth pair with one end in each namespace and bring both ends up."""
    tmp = unique_ifname("vt")
    sh(["ip", "-n", a.name, "link", "add", tmp, "type", "veth", "peer", "name", b_if, "netns", b.name])
    a.run("ip", "link", "set", tmp, "name", a_if)
    for ns, ifname in ((a, a_if), (b, b_if)):
        if mtu:
            ns.run("ip", "link", "set", ifname, "mtu", str(mtu))
        ns.link_up(ifname)


def stop(procs: Iterable[subprocess.Popen], namespaces: Iterable["Netns | None"] = (), timeout: float = 5.0) -> None:
    """Tear down what a test or benchmark started: terminate every process still running, wait
    up to ``timeout`` s for each (then kill it), and delete ``namespaces`` (None entries skipped)."""
    procs = list(procs)
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
    for ns in namespaces:
        if ns is not None:
            ns.delete()


def cleanup_all() -> None:
    """Delete every namespace this process created and did not delete yet."""
    with _lock:
        leftovers = list(_registry.values())
    for ns in leftovers:
        try:
            ns.delete()
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


def available() -> bool:
    """True when this process can create namespaces (root with iproute2 present)."""
    return os.geteuid() == 0 and shutil.which("ip") is not None


atexit.register(cleanup_all)
