"""A pod's readiness and liveness probes (httpGet, tcpSocket) run from the pod's network namespace."""

from __future__ import annotations

import socket
import threading
import time
from typing import TYPE_CHECKING

from kubesim.topology import NODE_IP, run_in_netns

if TYPE_CHECKING:
    from kubesim.kubelet.runtime import ContainerProc


class ProbesMixin:
    """Probes of :class:`~kubesim.kubelet.runtime.PodRuntime`'s containers (``ContainerProc``)."""

    def _probe_ready(self, c: ContainerProc) -> bool:
        """readinessProbe httpGet/tcpSocket from the pod's namespace (polled faster than periodSeconds,
        so pods become Ready promptly in tests and the demo)."""
        probe = c.spec.get("readinessProbe")
        if not probe:
            return True
        nowt = time.monotonic()
        if nowt - getattr(c, "_probed", 0) < max(0.5, float(probe.get("periodSeconds", 1)) / 5):
            return c.ready
        c._probed = nowt
        if nowt - getattr(c, "_started_mono", nowt) < float(probe.get("initialDelaySeconds", 0)):
            return False
        return self._probe(c, probe)

    def _check_liveness(self, c: ContainerProc) -> None:
        """livenessProbe: ``failureThreshold`` failures in a row (every ``periodSeconds``) kill the
        container, which the supervisor then restarts with back-off, as a real kubelet does."""
        probe = c.spec.get("livenessProbe")
        if not probe:
            return
        nowt = time.monotonic()
        if nowt - getattr(c, "_started_mono", nowt) < float(probe.get("initialDelaySeconds", 0)):
            return
        if nowt - getattr(c, "_live_at", 0) < float(probe.get("periodSeconds", 10)):
            return
        c._live_at = nowt
        if self._probe(c, probe):
            c._live_failures = 0
            return
        c._live_failures = getattr(c, "_live_failures", 0) + 1
        if c._live_failures >= int(probe.get("failureThreshold", 3)):
            c._live_failures = 0
            self.log.info("liveness probe failed, killing the container", container=c.name)
            threading.Thread(target=self._kill, args=(c, 2.0), daemon=True).start()

    def _probe(self, c: ContainerProc, probe: dict) -> bool:
        target = probe.get("httpGet") or probe.get("tcpSocket")
        if not target:
            return True  # exec probes are not simulated
        port = target.get("port")
        if isinstance(port, str) and not port.isdigit():
            port = next((p.get("containerPort") for p in c.spec.get("ports") or [] if p.get("name") == port), None)
        if port is None:
            return False
        host = target.get("host") or (self.net.ip if self.net else NODE_IP)
        path = target.get("path", "/") if "path" in target or probe.get("httpGet") else None

        def check():
            try:
                with socket.create_connection((host, int(port)), timeout=1) as s:
                    if path is None:
                        return True
                    s.sendall(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
                    data = b""
                    while len(data) < 65536:  # read to the end: closing early resets the server's write
                        chunk = s.recv(4096)
                        if not chunk:
                            break
                        data += chunk
                    head = data[:64].decode("latin-1", "replace")
                    parts = head.split()
                    return len(parts) > 1 and parts[1].isdigit() and 200 <= int(parts[1]) < 400
            except OSError:
                return False

        try:
            return bool(run_in_netns(self.net.name, check))
        except OSError:
            return False
