"""The benchmark's network: client netns → node netns (nat REDIRECT, the proxy) → internet netns.

Same shape as the proxy end-to-end tests and the real node: the client (a pod) routes through the
node; the node's nat PREROUTING REDIRECTs the client's tcp 80/443 to a local port where
``mitmdump --mode transparent`` listens; the internet namespace runs ``kubesim.upstream``.
Only namespaces created here are touched.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time

from kubesim.netns import Netns, stop, veth

CLIENT_IP = "198.18.1.2"
NODE_CLIENT_SIDE = "198.18.1.1"
NODE_INTERNET_SIDE = "203.0.113.1"
UPSTREAM_IP = "203.0.113.10"
UPSTREAM_HOSTS = ("www.google.com", "storage.googleapis.com")


def wait_listening(ns: Netns, port: int, timeout: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = ns.run("ss", "-ltnH", check=False).stdout
        if any(line.split()[3].endswith(f":{port}") for line in out.splitlines() if len(line.split()) > 3):
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process for port {port} exited {proc.returncode} before listening")
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on port {port} in {ns.name} after {timeout} s")


class Topology:
    """Build with :meth:`up`, tear down with :meth:`down` (kills every process it started)."""

    def __init__(self, prefix: str = "bpx"):
        self.prefix = prefix
        self.procs: list[subprocess.Popen] = []
        self.tmp = tempfile.mkdtemp(prefix="tproxy-bench-")
        self.client = self.node = self.internet = None

    def up(self, *, upstream: bool = True, upstream_args: tuple[str, ...] = ()) -> "Topology":
        self.client = Netns.create(f"{self.prefix}c")
        self.node = Netns.create(f"{self.prefix}n")
        self.internet = Netns.create(f"{self.prefix}i")
        veth(self.node, "pods0", self.client, "eth0")
        veth(self.node, "inet0", self.internet, "eth0")
        self.node.add_addr("pods0", f"{NODE_CLIENT_SIDE}/24")
        self.node.add_addr("inet0", f"{NODE_INTERNET_SIDE}/24")
        self.client.add_addr("eth0", f"{CLIENT_IP}/24")
        self.internet.add_addr("eth0", f"{UPSTREAM_IP}/24")
        self.client.route("default", "via", NODE_CLIENT_SIDE)
        self.internet.route("default", "via", NODE_INTERNET_SIDE)
        self.node.sysctl("net.ipv4.ip_forward", 1)
        hosts = {UPSTREAM_IP: list(UPSTREAM_HOSTS)}
        self.client.write_hosts(hosts)
        self.node.write_hosts(hosts)
        self.ca_dir = os.path.join(self.tmp, "ca")
        if upstream:
            self.upstream = self.spawn(
                self.internet,
                [
                    sys.executable,
                    "-m",
                    "kubesim.upstream",
                    "--bind",
                    UPSTREAM_IP,
                    "--http-port",
                    "80",
                    "--https-port",
                    "443",
                    "--cert-dir",
                    self.ca_dir,
                    "--hosts",
                    ",".join(UPSTREAM_HOSTS),
                    *upstream_args,
                ],
                log="upstream.log",
            )
            wait_listening(self.internet, 443, proc=self.upstream)
            from kubesim.testca import TestCA

            self.ca_file = TestCA(self.ca_dir).ca_file
        return self

    def spawn(self, ns: Netns, argv: list[str], *, log: str, env: dict | None = None) -> subprocess.Popen:
        from bench.common import REPO

        f = open(os.path.join(self.tmp, log), "ab")
        p = ns.popen(argv, stdout=f, stderr=subprocess.STDOUT, cwd=REPO, env={**os.environ, **(env or {})})
        f.close()
        self.procs.append(p)
        return p

    def log_tail(self, log: str, n: int = 1500) -> str:
        try:
            with open(os.path.join(self.tmp, log), "rb") as f:
                return f.read()[-n:].decode(errors="replace")
        except OSError:
            return ""

    def redirect(self, port: int | str | None, dports: str = "80,443", flush: bool = True) -> None:
        """Node nat PREROUTING: the client's tcp ``dports`` → ``port``, one port or a worker range
        ``"A-B"`` (podwatch's own target: ``--random`` over the range); None: no redirect (direct).
        ``flush=False`` adds to the rules already there."""
        from podwatch.rules import redirect_target

        if flush:
            self.node.run("iptables", "-t", "nat", "-F", "PREROUTING")
        if port:
            self.node.run(
                "iptables",
                "-t",
                "nat",
                "-A",
                "PREROUTING",
                "-s",
                CLIENT_IP,
                "-p",
                "tcp",
                "-m",
                "multiport",
                "--dports",
                dports,
                "-j",
                *redirect_target(port).split(),
            )

    def down(self) -> None:
        stop(self.procs, (self.client, self.node, self.internet))
        shutil.rmtree(self.tmp, ignore_errors=True)
