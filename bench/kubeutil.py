"""Start kubesim's API server for a benchmark and talk to it with the official client.

The server runs as its own process (``python -m kubesim serve``) on loopback so that it does not
share the benchmark's GIL; clients use ``controllerkit.kube.Client`` (raw REST over the official
``kubernetes`` ApiClient, HTTPS with the server's CA and a bearer token from its kubeconfig).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time

from bench import common

NO_FAULTS = {"X-Kubesim-No-Faults": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class KubeSim:
    """``with KubeSim(faults=...) as ks: ks.client(pool=64)``."""

    def __init__(self, faults: str | None = None, extra_args: list[str] | None = None):
        common.need_module("kubesim.apiserver.cli")
        self.tmp = tempfile.mkdtemp(prefix="tproxy-bench-kubesim-")
        self.kubeconfig = os.path.join(self.tmp, "kubeconfig")
        self.port = free_port()
        argv = [
            sys.executable,
            "-m",
            "kubesim",
            "serve",
            "--listen",
            f"127.0.0.1:{self.port}",
            "--kubeconfig",
            self.kubeconfig,
            "--log-level",
            "warning",
            *(extra_args or []),
        ]
        if faults:
            argv += ["--faults", faults]
        self.log_path = os.path.join(self.tmp, "kubesim.log")
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, cwd=common.REPO)
        deadline = time.monotonic() + 30
        while not os.path.exists(self.kubeconfig):
            if self.proc.poll() is not None:
                raise RuntimeError(f"kubesim serve exited {self.proc.returncode}: {self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError("kubesim serve did not write its kubeconfig within 30 s")
            time.sleep(0.05)

    def log_tail(self, n: int = 1500) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f.read()[-n:].decode(errors="replace")
        except OSError:
            return ""

    def client(self, pool: int = 16, timeout: float = 60.0):
        from kubernetes import client as k8s_client
        from kubernetes import config as k8s_config
        from controllerkit.kube import Client

        cfg = k8s_client.Configuration()
        k8s_config.load_kube_config(config_file=self.kubeconfig, client_configuration=cfg, persist_config=False)
        cfg.connection_pool_maxsize = pool
        return Client(k8s_client.ApiClient(configuration=cfg), default_timeout=timeout)

    def rss_mb(self) -> float | None:
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return round(int(line.split()[1]) / 1024, 1)
        except OSError:
            return None
        return None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._log.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def ensure_namespace(client, name: str) -> None:
    from controllerkit.errors import ApiError

    try:
        client.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    except ApiError as e:
        if getattr(e, "code", None) != 409 and "AlreadyExists" not in str(e):
            raise
