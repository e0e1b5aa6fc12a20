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


NGINX_CONF = """worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  keepalive_requests 10000000;
  server {{
    listen {ip}:80;
    listen {ip}:443 ssl;
    server_name {hosts};
    ssl_certificate {cert};
    ssl_certificate_key {key};
    location / {{ return 200 "ok\\n"; }}
  }}
}}
"""


def nginx_binary() -> str:
    """``$TPROXY_NGINX``, else the one scripts/setup.sh unpacks into ``.tools/nginx`` (the binary of
    Debian's nginx package, not installed as a service: no nginx on the host's port 80), else PATH."""
    from bench.common import REPO, Skip

    for cand in (
        os.environ.get("TPROXY_NGINX"),
        os.path.join(REPO, ".tools", "nginx", "usr", "sbin", "nginx"),
        shutil.which("nginx"),
    ):
        if cand and os.access(cand, os.X_OK):
            return cand
    raise Skip("nginx not found: run scripts/setup.sh (it unpacks Debian's nginx into .tools/nginx)")


def start_nginx(topo: "Topology", cert_key: tuple[str, str]) -> subprocess.Popen:
    """One nginx worker in the internet namespace: ``GET /`` → 200 on 80 and 443 for every benchmark
    host, one certificate from the test CA naming them all, keep-alive without a request cap."""
    d = os.path.join(topo.tmp, "nginx")
    os.makedirs(d, exist_ok=True)
    conf = os.path.join(d, "nginx.conf")
    with open(conf, "w") as f:
        f.write(NGINX_CONF.format(dir=d, ip=UPSTREAM_IP, hosts=" ".join(UPSTREAM_HOSTS), cert=cert_key[0], key=cert_key[1]))
    # -e: the error log before the configuration is read (else the compiled-in /var/log/nginx path)
    p = topo.spawn(topo.internet, [nginx_binary(), "-e", "stderr", "-p", d, "-c", conf], log="nginx.log")
    wait_listening(topo.internet, 443, proc=p)
    return p


class Topology:
    """Build with :meth:`up`, tear down with :meth:`down` (kills every process it started)."""

    def __init__(self, prefix: str = "bpx"):
        self.prefix = prefix
        self.procs: list[subprocess.Popen] = []
        self.tmp = tempfile.mkdtemp(prefix="tproxy-bench-")
        self.client = self.node = self.internet = None

    def up(self, *, upstream: bool | str = True, upstream_args: tuple[str, ...] = ()) -> "Topology":
        """``upstream``: True (``kubesim.upstream``, every test path: ``/bytes/N``, ``/echo``, ...),
        ``"nginx"`` (:func:`start_nginx`: ``GET /`` → 200 ``ok``, for load where the upstream's own CPU
        must stay out of the way) or False (none)."""
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
        # A load generator opening a new connection per request at ~20,000/s (direct HTTP) leaves its
        # closed sockets in TIME_WAIT for 60 s; with the default 28,000 ephemeral ports and no reuse,
        # the next runs from this netns (every mode: the REDIRECT keeps the upstream's address) spent
        # their time searching for a free port: 20,900 → 1,090 req/s over four 3 s runs, and the
        # proxies' new-connection rounds after the first two were capped by the client (2026-12-05).
        # What load testers set: reuse TIME_WAIT ports for outgoing connections (safe with TCP
        # timestamps) and a wider port range; on the node too, where the proxies dial the upstream.
        for ns in (self.client, self.node):
            ns.sysctl("net.ipv4.tcp_tw_reuse", 1)
            ns.sysctl("net.ipv4.ip_local_port_range", "10240 65535")  # above the proxies' ports
        hosts = {UPSTREAM_IP: list(UPSTREAM_HOSTS)}
        self.client.write_hosts(hosts)
        self.node.write_hosts(hosts)
        self.ca_dir = os.path.join(self.tmp, "ca")
        if upstream == "nginx":
            from kubesim.testca import TestCA

            self.ca_file = TestCA(self.ca_dir).ca_file
            self.upstream = start_nginx(self, TestCA(self.ca_dir).issue(list(UPSTREAM_HOSTS)))
        elif upstream:
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
