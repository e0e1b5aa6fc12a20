"""A whole simulated cluster on this machine: what the demo, the kubelet CLI and the e2e tests share.

``SimCluster(run_dir)``.start() brings up, in order:

1. the topology (:mod:`kubesim.topology`): node and internet namespaces, hosts files;
2. the simulated internet: ``python -m kubesim.upstream`` inside the internet namespace serving
   www.google.com, storage.googleapis.com and the metadata server with certificates from a test CA;
3. the API server: in-process :class:`kubesim.apiserver.APIServer` (1.7, Initializers) on 127.0.0.1 in
   the root namespace with the node IP in its certificate — or an existing one given by ``kubeconfig`` —
   made reachable at ``198.18.0.1:6443`` from the node and pods by a forwarder;
4. the netns kubelet (:class:`kubesim.kubelet.controller.Kubelet`).

``stop()`` undoes all of it (pods' processes killed, namespaces deleted), also after Ctrl-C.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from urllib.parse import urlparse

from controllerkit.kube import Client, resource_path
from controllerkit.log import get_logger

from kubesim.kubelet.images import REPO_ROOT
from kubesim.topology import API_PORT, NODE_IP, Topology

#: the latest cluster's run directory, for ``python -m kubesim logs`` without --run-dir
CURRENT_LINK = "/run/kubesim/current"


class ClusterError(RuntimeError):
    """A stage of the simulated cluster could not start; the message names the missing piece."""


class SimCluster:
    def __init__(
        self,
        run_dir: str | None = None,
        *,
        node_name: str = "node-1",
        kubeconfig: str | None = None,
        k8s_version: str = "1.7",
        faults=None,
        internet: bool = True,
        ipv6: bool = True,
        kubelet_options: dict | None = None,
        keep_run_dir: bool | None = None,
    ):
        self.own_run_dir = run_dir is None
        self.run_dir = os.path.abspath(run_dir or tempfile.mkdtemp(prefix="kubesim-"))
        os.makedirs(self.run_dir, exist_ok=True)
        self.keep_run_dir = (not self.own_run_dir) if keep_run_dir is None else keep_run_dir
        self.node_name = node_name
        self.external_kubeconfig = kubeconfig
        self.k8s_version = k8s_version
        self.faults = faults
        self.internet = internet
        self.topology = Topology(node_name=node_name, ipv6=ipv6)
        self.kubelet_options = kubelet_options or {}
        self.server = None
        self.upstream: subprocess.Popen | None = None
        self.kubelet = None
        self.client: Client | None = None
        self.kubeconfig = os.path.join(self.run_dir, "admin.kubeconfig")
        self.ca_dir = os.path.join(self.run_dir, "internet-ca")
        self.log = get_logger(component="kubesim-cluster")

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self, progress=lambda msg: None) -> "SimCluster":
        try:
            self._start(progress)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, progress) -> None:
        progress("network: node and internet namespaces")
        self.topology.up()
        extra_ca = []
        if self.internet:
            progress("internet: www.google.com, storage.googleapis.com, metadata server")
            from kubesim.testca import TestCA

            ca = TestCA(self.ca_dir)
            extra_ca.append(ca.ca_file)
            self._start_upstream()
        progress(
            f"API server: {self.external_kubeconfig}"
            if self.external_kubeconfig
            else f"API server: Kubernetes {self.k8s_version} with the Initializers admission plugin"
        )
        target = self._start_apiserver()
        self.topology.forward(target, API_PORT)
        progress(f"kubelet: node {self.node_name} ({NODE_IP})")
        from kubesim.kubelet.controller import Kubelet

        self.kubelet = Kubelet(
            self.client,
            self.topology,
            run_dir=self.run_dir,
            node_name=self.node_name,
            extra_ca_files=extra_ca,
            **self.kubelet_options,
        )
        self.kubelet.start()
        self._point_current()

    def _start_upstream(self) -> None:
        log = open(os.path.join(self.run_dir, "internet.log"), "ab")
        argv = [
            sys.executable,
            "-m",
            "kubesim.upstream",
            "--cert-dir",
            self.ca_dir,
            "--metadata",
            "--hosts",
            "www.google.com,storage.googleapis.com",
        ]
        for b in self.topology.internet_binds():
            argv += ["--bind", b]
        self.upstream = self.topology.internet.popen(
            argv, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": REPO_ROOT}
        )
        log.close()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.upstream.poll() is not None:
                raise ClusterError(
                    f"the simulated internet (kubesim.upstream) exited {self.upstream.returncode}; "
                    f"see {self.run_dir}/internet.log"
                )
            r = self.topology.internet.run("sh", "-c", "ss -Hltn 'sport = :443' | grep -c 203.0.113", check=False)
            if r.stdout.strip() not in ("", "0"):
                return
            time.sleep(0.1)
        raise ClusterError("the simulated internet did not start listening within 15 s")

    def _start_apiserver(self) -> tuple[str, int]:
        if self.external_kubeconfig:
            self.client = Client.from_config(self.external_kubeconfig)
            shutil.copyfile(self.external_kubeconfig, self.kubeconfig)
            u = urlparse(self.client.host)
            return u.hostname, u.port or 443
        try:
            from kubesim.apiserver import APIServer
        except ImportError as e:
            raise ClusterError(f"the kubesim API server (kubesim.apiserver.APIServer) is not available yet: {e}") from e
        self.server = APIServer(
            k8s_version=self.k8s_version, faults=self.faults, sans=[NODE_IP, self.node_name, "kubernetes.default.svc"]
        )
        self.server.log_source = self.log_path  # pods/{name}/log reads the kubelet's files
        self.server.webhook_dialer = self.topology.dial  # webhook Services' pods, on the pod network
        self.server.start(host="127.0.0.1", port=0)
        self.server.write_kubeconfig(self.kubeconfig)
        self.client = Client.from_config(self.kubeconfig)
        u = urlparse(self.server.url)
        return u.hostname, u.port

    def _point_current(self) -> None:
        try:
            os.makedirs(os.path.dirname(CURRENT_LINK), exist_ok=True)
            tmp = f"{CURRENT_LINK}.{os.getpid()}"
            if os.path.lexists(tmp):
                os.unlink(tmp)
            os.symlink(self.run_dir, tmp)
            os.replace(tmp, CURRENT_LINK)
        except OSError:
            pass

    def stop(self) -> None:
        if self.kubelet is not None:
            try:
                self.kubelet.stop()
            except Exception as e:  # noqa: BLE001 - keep tearing down
                self.log.warning("kubelet stop failed", error=repr(e))
            self.kubelet = None
        if self.upstream is not None and self.upstream.poll() is None:
            self.upstream.terminate()
            try:
                self.upstream.wait(5)
            except subprocess.TimeoutExpired:
                self.upstream.kill()
        self.upstream = None
        self.topology.down()
        if self.server is not None:
            try:
                self.server.stop()
            except Exception:  # noqa: BLE001
                pass
            self.server = None
        try:
            if os.path.realpath(CURRENT_LINK) == self.run_dir:
                os.unlink(CURRENT_LINK)
        except OSError:
            pass
        if not self.keep_run_dir:
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def __enter__(self) -> "SimCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- helpers for the demo and tests ------------------------------------------------------
    def pods(self, namespace: str | None = None, selector: str | None = None) -> list[dict]:
        path = resource_path("v1", "pods", namespace)
        return self.client.list(path, **({"labelSelector": selector} if selector else {})).get("items", [])

    def wait_pods(
        self,
        selector: str,
        namespace: str = "default",
        *,
        count: int = 1,
        ready: bool = True,
        timeout: float = 60.0,
        phase: str | None = None,
    ) -> list[dict]:
        """Wait until ``count`` pods match and are Ready (or in ``phase``); raise with their status if not.
        ``timeout`` is multiplied by ``TPROXY_TEST_TIMEOUT_SCALE`` (:func:`kubesim.polling.scaled`)."""
        from kubesim.polling import scaled

        timeout = scaled(timeout)
        deadline = time.monotonic() + timeout
        pods: list[dict] = []
        while time.monotonic() < deadline:
            pods = self.pods(namespace, selector)
            ok = [p for p in pods if self._pod_ok(p, ready, phase)]
            if len(ok) >= count:
                return ok
            time.sleep(0.2)
        summary = [
            (
                p["metadata"]["name"],
                (p.get("status") or {}).get("phase"),
                [
                    (c["name"], c.get("state"), c.get("restartCount"))
                    for c in (p.get("status") or {}).get("initContainerStatuses", [])
                    + (p.get("status") or {}).get("containerStatuses", [])
                ],
            )
            for p in pods
        ]
        raise TimeoutError(
            f"pods {namespace}/{selector!r}: wanted {count} {'ready' if ready else phase} within {timeout:g}s, got {summary}"
        )

    @staticmethod
    def _pod_ok(p: dict, ready: bool, phase: str | None) -> bool:
        st = p.get("status") or {}
        if phase:
            return st.get("phase") == phase
        if ready:
            return any(c.get("type") == "Ready" and c.get("status") == "True" for c in st.get("conditions") or [])
        return True

    def pod_runtime(self, pod: dict):
        return self.kubelet.runtimes.get(pod["metadata"]["uid"])

    def log_path(self, pod: dict, container: str) -> str:
        """Where the kubelet keeps the container's log (also before it starts and after the pod is gone)."""
        meta = pod["metadata"]
        return os.path.join(
            self.run_dir,
            "pods",
            f"{meta.get('namespace', 'default')}_{meta['name']}_{meta.get('uid', '')[:8]}",
            "logs",
            f"{container}.log",
        )

    def read_log(self, pod: dict, container: str) -> str:
        try:
            with open(self.log_path(pod, container), errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def exec_in_pod(
        self, pod: dict, argv: list[str], *, container: str | None = None, timeout: float = 30, check: bool = False
    ) -> subprocess.CompletedProcess:
        """``kubectl exec``: run ``argv`` in the pod's network namespace with ``container``'s mounts,
        environment and privileges (default: the first container)."""
        rt = self.pod_runtime(pod)
        if rt is None or rt.net is None or rt.volumes is None:
            raise KeyError(f"pod {pod['metadata']['name']} is not running on this kubelet")
        specs = {c.name: c.spec for c in rt.containers}
        spec = specs[container] if container else rt.containers[0].spec
        scratch = tempfile.mkdtemp(prefix="exec-", dir=os.path.join(rt.dir, "scratch"))
        try:
            launch = rt.launch_spec(spec, scratch, argv=list(argv))
            return subprocess.run(
                rt.launcher_argv(launch, scratch),
                capture_output=True,
                text=True,
                timeout=timeout,
                check=check,
                cwd=REPO_ROOT,
                env=rt.LAUNCHER_ENV,
            )
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
