"""The simulated cluster's network: one node namespace, one "internet" namespace, a namespace per pod.

::

    root netns (driver, API server on 127.0.0.1) ── TCP forwarder (listener created in the node ns) ─┐
    node netns  198.18.0.1 (lo + every pod-facing veth), ip_forward on, default route → internet  ◄─┘
       ├── veth per pod ──► pod netns  eth0 198.18.1.N/32 + 2001:db8:1::N/128, default via the node
       └── "uplink" 198.51.100.1/24 ──► internet netns  eth0 198.51.100.254/24, routes back to the pods;
                                        www.google.com 203.0.113.10, storage.googleapis.com 203.0.113.20,
                                        metadata 169.254.169.254 (+ 2001:db8:100::10/::20)

Why this shape:

- The root namespace's routes and iptables are never touched. The API server runs wherever the caller
  likes (normally in-process, on 127.0.0.1 in the root namespace); :meth:`Topology.forward` makes it
  reachable at ``198.18.0.1:6443`` from the node and the pods by *creating the listening socket inside
  the node namespace* (a socket stays in the namespace it was created in, whatever thread later uses
  it), then splicing each connection to the real address from the root namespace.
- Pods are routed, not NATed: the internet namespace sees pod source addresses, so a test can count
  packets that reached it from a pod directly (anything that went through the proxy comes from the
  node's uplink address instead).
- Name resolution is per namespace through ``/etc/netns/NAME/hosts`` (``ip netns exec`` bind-mounts
  it over ``/etc/hosts``); the node's name resolves to the node IP, which the sidecar needs.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import socket
import threading
from dataclasses import dataclass, field

from kubesim import netns as nsmod
from kubesim.netns import Netns, NetnsError, veth

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)

NODE_IP = "198.18.0.1"
NODE_IP6_LINKLOCAL = "fe80::1"
UPLINK_NODE = "198.51.100.1"
UPLINK_INET = "198.51.100.254"
UPLINK6_NODE = "2001:db8:ff::1"
UPLINK6_INET = "2001:db8:ff::fe"
POD_CIDR = "198.18.1.0/24"
POD_CIDR6 = "2001:db8:1::/64"
API_PORT = 6443

#: the simulated internet: hostname -> (IPv4, IPv6 or None)
INTERNET_HOSTS = {
    "www.google.com": ("203.0.113.10", "2001:db8:100::10"),
    "storage.googleapis.com": ("203.0.113.20", "2001:db8:100::20"),
    "metadata.google.internal": ("169.254.169.254", None),
}


def run_in_netns(name: str, fn, *args):
    """Call ``fn(*args)`` in a short-lived thread that has joined network namespace ``name``.

    Python 3.11 has no ``os.setns``; ``setns(2)`` through libc changes only the calling thread, so a
    throw-away thread keeps the rest of the process in the root namespace. Sockets created by ``fn``
    stay in ``name`` for their whole life.
    """
    result: dict = {}

    def target():
        try:
            fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns({name}): {os.strerror(err)}")
            finally:
                os.close(fd)
            result["value"] = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            result["error"] = exc

    t = threading.Thread(target=target, name=f"setns {name}")
    t.start()
    t.join()
    if "error" in result:
        raise result["error"]
    return result["value"]


class Forwarder:
    """A TCP forwarder whose listener lives in one namespace and whose dials happen in another.

    ``Forwarder(listen_ns, (addr, port), (target_host, target_port))``: the listener is created in
    ``listen_ns``; connections to the target are opened from the namespace of the process (root).
    Bytes are spliced unchanged (TLS passes through: the API server's certificate must carry the
    listen address as a subjectAltName).
    """

    def __init__(self, listen_ns: str, listen: tuple[str, int], target: tuple[str, int]):
        self.listen = listen
        self.target = target

        def make():
            s = socket.socket(socket.AF_INET6 if ":" in listen[0] else socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(listen)
            s.listen(128)
            return s

        self._sock = run_in_netns(listen_ns, make)
        self._stopped = threading.Event()
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept_loop, name=f"forward {listen}", daemon=True)
        self._thread.start()

    def _accept_loop(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=10)
            upstream.settimeout(None)
        except OSError:
            client.close()
            return
        with self._lock:
            self._conns.update((client, upstream))
        remaining = [2]

        def pump(src: socket.socket, dst: socket.socket) -> None:
            try:
                while True:
                    data = src.recv(65536)
                    if not data:
                        break
                    dst.sendall(data)
            except OSError:
                pass
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            with self._lock:
                remaining[0] -= 1
                last = remaining[0] == 0
                if last:
                    self._conns.difference_update((client, upstream))
            if last:  # both directions are done: release the pair
                client.close()
                upstream.close()

        threading.Thread(target=pump, args=(client, upstream), daemon=True).start()
        threading.Thread(target=pump, args=(upstream, client), daemon=True).start()

    def stop(self) -> None:
        self._stopped.set()
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        with self._lock:
            conns, self._conns = list(self._conns), set()
        for s in conns:
            try:
                s.close()
            except OSError:
                pass


STALE_PREFIXES = ("ksnode", "ksinet", "kspod")


def cleanup_stale(prefixes=STALE_PREFIXES) -> list[str]:
    """Delete namespaces left by kubesim processes that died without cleaning up (kill -9).

    Names are ``<prefix>-<pid>-<n>`` (see :func:`kubesim.netns.unique_name`); only namespaces whose
    creating process no longer exists are touched, so concurrent runs are safe.
    """
    removed = []
    out = nsmod.sh(["ip", "netns", "list"], check=False).stdout
    for line in out.splitlines():
        name = line.split()[0] if line.split() else ""
        parts = name.split("-")
        if len(parts) != 3 or parts[0] not in prefixes or not parts[1].isdigit():
            continue
        if os.path.exists(f"/proc/{parts[1]}"):
            continue
        Netns(name).delete()
        removed.append(name)
    return removed


@dataclass
class PodNet:
    """A pod's network: its namespace, addresses and the node-side interface."""

    netns: Netns
    ip: str
    ip6: str | None
    host_if: str
    host_network: bool = False

    @property
    def name(self) -> str:
        return self.netns.name


@dataclass
class Topology:
    """Node + internet namespaces and the per-pod plumbing. ``up()`` once, ``down()`` at the end."""

    node_name: str = "node-1"
    ipv6: bool = True
    extra_hosts: dict = field(default_factory=dict)
    #: Hand a freed pod address to the next pod (an IPAM that reuses at once), instead of last: the
    #: IP-reuse race tests (tests/test_e2e_policy_scopes.py) need the next pod to get the old address.
    reuse_addresses: bool = False

    def __post_init__(self):
        self.node: Netns | None = None
        self.internet: Netns | None = None
        self._pods: dict[str, PodNet] = {}
        self._free = [str(ip) for ip in list(ipaddress.ip_network(POD_CIDR).hosts())[1:]]
        self._lock = threading.Lock()
        self._forwarders: list[Forwarder] = []

    # -- lifecycle ---------------------------------------------------------------------------
    def up(self) -> "Topology":
        cleanup_stale()
        try:
            self.node = Netns.create("ksnode")
            self.internet = Netns.create("ksinet")
            node, inet = self.node, self.internet
            node.sysctl("net.ipv4.ip_forward", 1)
            node.sysctl("net.ipv6.conf.all.forwarding", 1)
            node.run("ip", "addr", "add", f"{NODE_IP}/32", "dev", "lo")
            veth(node, "uplink", inet, "eth0")
            node.add_addr("uplink", f"{UPLINK_NODE}/24")
            inet.add_addr("eth0", f"{UPLINK_INET}/24")
            node.route("default", "via", UPLINK_INET)
            inet.route(POD_CIDR, "via", UPLINK_NODE)
            inet.route(f"{NODE_IP}/32", "via", UPLINK_NODE)
            if self.ipv6:
                node.add_addr("uplink", f"{UPLINK6_NODE}/64")
                inet.add_addr("eth0", f"{UPLINK6_INET}/64")
                node.route("default", "via", UPLINK6_INET)
                inet.route(POD_CIDR6, "via", UPLINK6_NODE)
            for v4, v6 in INTERNET_HOSTS.values():
                inet.run("ip", "addr", "add", f"{v4}/32", "dev", "lo")
                if v6 and self.ipv6:
                    inet.run("ip", "-6", "addr", "add", f"{v6}/128", "dev", "lo")
            node.write_hosts(self.hosts_mapping())
            if self.ipv6:  # resolve the uplink neighbour now, or pods' first IPv6 packet waits ~1 s for it
                node.run("ping", "-6", "-c1", "-W1", UPLINK6_INET, check=False)
        except Exception:
            self.down()
            raise
        return self

    def down(self) -> None:
        for f in self._forwarders:
            f.stop()
        self._forwarders.clear()
        with self._lock:
            pods = list(self._pods.values())
            self._pods.clear()
        for p in pods:
            if not p.host_network:
                p.netns.delete()
        for ns in (self.internet, self.node):
            if ns is not None:
                ns.delete()
        self.node = self.internet = None

    def __enter__(self) -> "Topology":
        return self.up()

    def __exit__(self, *exc) -> None:
        self.down()

    # -- names -------------------------------------------------------------------------------
    def hosts_mapping(self, extra: dict | None = None) -> dict:
        """address -> names for hosts files (IPv4 only: clients then behave the same everywhere)."""
        mapping: dict[str, list[str]] = {NODE_IP: [self.node_name]}
        for name, (v4, _v6) in INTERNET_HOSTS.items():
            mapping.setdefault(v4, []).append(name)
        for addr, names in {**self.extra_hosts, **(extra or {})}.items():
            mapping.setdefault(addr, []).extend([names] if isinstance(names, str) else names)
        return mapping

    def internet_binds(self) -> list[str]:
        """Every address the simulated internet's servers should listen on."""
        out = []
        for v4, v6 in INTERNET_HOSTS.values():
            out.append(v4)
            if v6 and self.ipv6:
                out.append(v6)
        return out

    # -- pods --------------------------------------------------------------------------------
    def add_pod(self, key: str, hostname: str, *, host_network: bool = False) -> PodNet:
        """Give pod ``key`` (``ns/name``) a network namespace joined to the node (or the node's own)."""
        if self.node is None:
            raise NetnsError("topology is not up")
        if host_network:
            pn = PodNet(self.node, NODE_IP, None, "", host_network=True)
            with self._lock:
                self._pods[key] = pn
            return pn
        with self._lock:
            if not self._free:
                raise NetnsError(f"pod CIDR {POD_CIDR} exhausted")
            ip = self._free.pop(0)
        ns = None
        try:
            ns = Netns.create("kspod")
            host_if = nsmod.unique_ifname("vp")
            veth(self.node, host_if, ns, "eth0")
            ns.add_addr("eth0", f"{ip}/32")
            ns.route(f"{NODE_IP}/32", "dev", "eth0", "scope", "link")
            ns.route("default", "via", NODE_IP, "dev", "eth0")
            self.node.add_addr(host_if, f"{NODE_IP}/32")
            self.node.route(f"{ip}/32", "dev", host_if)
            ip6 = None
            if self.ipv6:
                ip6 = str(ipaddress.ip_network(POD_CIDR6)[int(ipaddress.ip_address(ip)) & 0xFF])
                self.node.add_addr(host_if, f"{NODE_IP6_LINKLOCAL}/64")
                ns.add_addr("eth0", f"{ip6}/128")
                ns.route("default", "via", NODE_IP6_LINKLOCAL, "dev", "eth0")
                self.node.route(f"{ip6}/128", "dev", host_if)
            ns.write_hosts(self.hosts_mapping({ip: hostname}))
        except Exception:
            if ns is not None:
                ns.delete()
            with self._lock:
                self._free.insert(0, ip)
            raise
        pn = PodNet(ns, ip, ip6, host_if)
        with self._lock:
            self._pods[key] = pn
        return pn

    def remove_pod(self, key: str) -> None:
        """Kill what runs in the pod's namespace and delete it (the veth goes with it)."""
        with self._lock:
            pn = self._pods.pop(key, None)
        if pn is None or pn.host_network:
            return
        pn.netns.delete()
        with self._lock:
            if self.reuse_addresses:
                self._free.insert(0, pn.ip)
            else:
                self._free.append(pn.ip)

    def address_free(self, ip: str) -> bool:
        """Whether ``ip`` is back in the pool (its pod's namespace deleted)."""
        with self._lock:
            return ip in self._free

    def pod(self, key: str) -> PodNet | None:
        with self._lock:
            return self._pods.get(key)

    # -- the API server ----------------------------------------------------------------------
    def dial(self, host: str, port: int, timeout: float | None = None) -> socket.socket:
        """A TCP connection from the node namespace to ``host:port`` (a pod IP): what the API server
        uses to reach a webhook Service's pod, as a control plane on the pod network does."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = run_in_netns(self.node.name, socket.socket, family, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect((host, port))
        except OSError:
            sock.close()
            raise
        return sock

    def forward(self, target: tuple[str, int], listen_port: int = API_PORT, ns: Netns | None = None) -> Forwarder:
        """Make ``target`` (reachable from the root ns) answer at ``NODE_IP:listen_port`` in the node ns."""
        f = Forwarder((ns or self.node).name, (NODE_IP, listen_port), target)
        self._forwarders.append(f)
        return f
