"""Test topology for the capture tests (sidecar lock, podwatch rules): pod(s) -> node -> internet.

::

    pod netns "P"  eth0 198.18.<i>.2/24, 2001:db8:1:<i>::2/64   default via the node
        │ veth (one per pod)
    node netns     198.18.<i>.1, 2001:db8:1:<i>::1; ip_forward on; no default route, so the
        │          probe address 192.0.2.1 is unreachable unless a REDIRECT catches it
    internet netns 203.0.113.10 (+ .53 .54 resolvers), 198.51.100.10 ("service CIDR"),
                   2001:db8:2::10; routes back to the pods via the node

Also a tiny server/client used inside the namespaces (``python capture_topology.py serve|connect``):
servers answer every TCP connection with ``HTTP/1.0 200`` and a body ``<tag> <port>`` (or answer
the sidecar probe, with or without the nonce), and echo UDP datagrams.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from kubesim.polling import wait_for  # noqa: E402 - stdlib only, cheap in the namespace scripts

INET4 = "203.0.113.10"
INET6 = "2001:db8:2::10"
DNS_ALLOWED = "203.0.113.53"
DNS_FOREIGN = "203.0.113.54"
SVC_IP = "198.51.100.10"
SVC_CIDR = "198.51.100.0/24"
PROBE_ENV = {"PYTHONPATH": REPO, "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")}


wait_for = functools.partial(wait_for, timeout=10.0, interval=0.02)  # re-exported to the podwatch tests


class CaptureNet:
    """Build with :meth:`create`; :meth:`add_pod` per pod; :meth:`delete` removes everything."""

    def __init__(self):
        from kubesim.netns import Netns

        self.node = Netns.create("cap-node")
        self.internet = Netns.create("cap-inet")
        self.pods: dict[str, object] = {}
        self.pod_ips: dict[str, tuple[str, str]] = {}
        self.gateways: dict[str, tuple[str, str]] = {}
        self.procs: list[subprocess.Popen] = []

    @classmethod
    def create(cls) -> "CaptureNet":
        from kubesim.netns import veth

        net = cls()
        try:
            veth(net.node, "up0", net.internet, "eth0")
            net.node.add_addr("up0", "203.0.113.1/24")
            net.node.add_addr("up0", "2001:db8:2::1/64")
            for a in (f"{INET4}/24", f"{DNS_ALLOWED}/24", f"{DNS_FOREIGN}/24", f"{SVC_IP}/24", f"{INET6}/64"):
                net.internet.add_addr("eth0", a)
            net.internet.route("198.18.0.0/15", "via", "203.0.113.1")
            net.internet.route("2001:db8:1::/48", "via", "2001:db8:2::1")
            net.node.route(SVC_CIDR, "via", INET4)
            for k in ("net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"):
                net.node.sysctl(k, 1)
        except Exception:
            net.delete()
            raise
        return net

    def add_pod(self, name: str):
        from kubesim.netns import Netns, veth

        i = len(self.pods) + 1
        pod = Netns.create(f"cap-{name}"[:12])
        self.pods[name] = pod
        veth(self.node, f"p{i}", pod, "eth0")
        self.node.add_addr(f"p{i}", f"198.18.{i}.1/24")
        self.node.add_addr(f"p{i}", f"2001:db8:1:{i}::1/64")
        pod.add_addr("eth0", f"198.18.{i}.2/24")
        pod.add_addr("eth0", f"2001:db8:1:{i}::2/64")
        pod.route("default", "via", f"198.18.{i}.1")
        pod.route("default", "via", f"2001:db8:1:{i}::1")
        self.pod_ips[name] = (f"198.18.{i}.2", f"2001:db8:1:{i}::2")
        self.gateways[name] = (f"198.18.{i}.1", f"2001:db8:1:{i}::1")
        pod.write_hosts({f"198.18.{i}.1": "node-1"})
        return pod

    def serve(self, ns, tag: str, *specs: str, mode: str = "tag") -> subprocess.Popen:
        """Start a server in ``ns``; specs like ``tcp:0.0.0.0:80``, ``udp:[::]:53``. Waits until bound."""
        proc = ns.popen(
            [sys.executable, os.path.abspath(__file__), "serve", mode, tag, *specs],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        line = proc.stdout.readline()
        if line.strip() != "ready":
            proc.kill()
            raise RuntimeError(f"server {tag} did not start: {line} {proc.stderr.read()}")
        self.procs.append(proc)
        return proc

    def connect(self, ns, proto: str, host: str, port: int, timeout: float = 2.0) -> str:
        """From ``ns``: 'OK <answer>' or 'ERR <ERRNO>' (see :func:`_client`)."""
        out = ns.run(
            sys.executable,
            os.path.abspath(__file__),
            "connect",
            proto,
            host,
            str(port),
            str(timeout),
            check=False,
            timeout=timeout + 10,
        )
        return out.stdout.strip() or out.stderr.strip()

    def delete(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait(5)
        for ns in [*self.pods.values(), self.node, self.internet]:
            ns.delete()


# -- in-namespace helpers ------------------------------------------------------------------
def _parse(spec: str):
    proto, rest = spec.split(":", 1)
    host, port = rest.rsplit(":", 1)
    return proto, host.strip("[]"), int(port)


def _server(mode: str, tag: str, specs: list[str]) -> None:
    import socket
    import socketserver
    import threading

    from controllerkit import probe

    class TCP(socketserver.StreamRequestHandler):
        def handle(self):
            self.connection.settimeout(2)
            headers = {}
            try:
                first = self.rfile.readline(8192)
                while first:
                    ln = self.rfile.readline(8192)
                    if not ln or ln in (b"\r\n", b"\n"):
                        break
                    k, _, v = ln.decode("latin-1").partition(":")
                    headers[k.strip().lower()] = v.strip()
            except OSError:
                pass
            port = self.server.server_address[1]
            extra = ""
            if mode == "probe-ok":
                extra = f"{probe.ANSWER_HEADER}: {headers.get(probe.NONCE_HEADER.lower(), '')}\r\n"
            body = f"{tag} {port}\n".encode()
            self.wfile.write(f"HTTP/1.0 200 OK\r\n{extra}Content-Length: {len(body)}\r\n\r\n".encode() + body)

    class UDP(socketserver.BaseRequestHandler):
        def handle(self):
            data, sock = self.request
            sock.sendto(f"{tag} ".encode() + data, self.client_address)

    servers = []
    for spec in specs:
        proto, host, port = _parse(spec)
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        base = socketserver.ThreadingTCPServer if proto == "tcp" else socketserver.ThreadingUDPServer
        cls = type("S", (base,), {"address_family": fam, "allow_reuse_address": True, "daemon_threads": True})
        if fam == socket.AF_INET6:

            def bind(self, _orig=base.server_bind):
                self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                _orig(self)

            cls.server_bind = bind
        servers.append(cls((host, port), TCP if proto == "tcp" else UDP))
    for s in servers:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    print("ready", flush=True)
    while True:
        time.sleep(3600)


def _client(proto: str, host: str, port: int, timeout: float) -> str:
    import errno
    import socket

    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        if proto == "tcp":
            s = socket.create_connection((host, port), timeout=timeout)
            s.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
            return "OK " + data.decode(errors="replace").rsplit("\r\n\r\n", 1)[-1].strip()
        s = socket.socket(fam, socket.SOCK_DGRAM)
        s.settimeout(timeout)
        s.sendto(b"hello", (host, port))
        return "OK " + s.recv(4096).decode(errors="replace").strip()
    except socket.timeout:
        return "ERR TIMEOUT"
    except OSError as e:
        return "ERR " + (errno.errorcode.get(e.errno, str(e.errno)) if e.errno else type(e).__name__)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        _server(sys.argv[2], sys.argv[3], sys.argv[4:])
    elif sys.argv[1] == "connect":
        print(_client(sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5])))
