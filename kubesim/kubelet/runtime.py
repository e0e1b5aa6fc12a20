"""One pod on the netns kubelet: network, volumes, init containers, containers, status, teardown.

A :class:`PodRuntime` is a thread that owns everything of one pod:

1. network: a namespace joined to the node (or the node's own for ``hostNetwork``), podIP/hostIP
   reported through ``/status`` straight away (podwatch needs the IP before the init container probes);
2. volumes (:mod:`kubesim.kubelet.volumes`); a missing ConfigMap/Secret/token is retried, the pod
   stays ``Pending`` with the reason in its status;
3. init containers in order, each to completion; a failure restarts it with exponential backoff and
   the pod stays ``Pending`` (``Init:Error`` / ``Init:CrashLoopBackOff``), as on a real kubelet;
4. then every container; one that exits is restarted with backoff (restartPolicy Always);
5. ``stop()``: SIGTERM to each container's process group, SIGKILL after the grace period, then the
   network namespace is deleted.

Every container process is ``ip netns exec <ns> python -m kubesim.kubelet.launch <spec>`` (the default
runtime, ``emulate``: the image's Dockerfile read, its entrypoint run on the host's Python), or with
``runtime="podman"`` an attached ``podman run`` of the real image (:mod:`kubesim.kubelet.engine`) joined
to the pod's network namespace; either way its stdout+stderr go to ``<pod dir>/logs/<container>.log``
(appended across restarts).

What starts a container (environment, launcher spec, podman argv) is in
:mod:`kubesim.kubelet.containerspec`; the readiness and liveness probes in :mod:`kubesim.kubelet.probes`.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import os
import signal
import subprocess
import threading
import time

from controllerkit.backoff import Backoff as _Backoff
from controllerkit.errors import ApiError, Conflict, NotFound
from controllerkit.kube import resource_path

from kubesim.kubelet.containerspec import ContainerSpecMixin
from kubesim.kubelet.images import REPO_ROOT
from kubesim.kubelet.probes import ProbesMixin
from kubesim.kubelet.volumes import PodVolumes, VolumeError
from kubesim.topology import NODE_IP


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def Backoff(initial: float, cap: float) -> _Backoff:
    """A container's restart delays: 10 s -> 5 min on a real kubelet; here ``initial`` doubling up to
    ``cap`` (both configurable), without jitter, like the kubelet's."""
    return _Backoff(initial, cap, jitter=0)


class ContainerProc:
    """One running (or last run) container process and what the status needs to know about it."""

    def __init__(self, spec: dict, init: bool):
        self.spec = spec
        self.name = spec["name"]
        self.init = init
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self.started_at: str | None = None
        self.last_term: dict | None = None
        self.state: dict = {"waiting": {"reason": "PodInitializing" if not init else "Waiting"}}
        self.ready = False

    def status(self, image_id: str) -> dict:
        st = {
            "name": self.name,
            "image": self.spec.get("image", ""),
            "imageID": image_id,
            "restartCount": self.restarts,
            "ready": self.ready,
            "state": self.state,
        }
        if self.last_term:
            st["lastState"] = {"terminated": self.last_term}
        if self.proc is not None:
            st["containerID"] = f"kubesim://{self.proc.pid}"
        return st


class PodRuntime(ProbesMixin, ContainerSpecMixin, threading.Thread):
    def __init__(self, kubelet, pod: dict):
        super().__init__(name=f"pod {pod['metadata'].get('namespace')}/{pod['metadata']['name']}", daemon=True)
        self.kubelet = kubelet
        self.pod = copy.deepcopy(pod)
        meta = self.pod["metadata"]
        self.ns, self.name, self.uid = meta.get("namespace", "default"), meta["name"], meta.get("uid", "")
        self.key = f"{self.ns}/{self.name}"
        self.dir = os.path.join(kubelet.run_dir, "pods", f"{self.ns}_{self.name}_{self.uid[:8]}")
        self.log_dir = os.path.join(self.dir, "logs")
        self._halt = threading.Event()
        self.net = None
        self.volumes: PodVolumes | None = None
        spec = self.pod["spec"]
        self.inits = [ContainerProc(c, True) for c in spec.get("initContainers") or []]
        self.containers = [ContainerProc(c, False) for c in spec.get("containers") or []]
        self.phase = "Pending"
        self.reason = ""
        self.message = ""
        self.initialized = not self.inits
        self.started = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.log = kubelet.log.bind(pod=self.key)
        self._status_lock = threading.Lock()

    # -- helpers ------------------------------------------------------------------------------
    @property
    def host_network(self) -> bool:
        return bool(self.pod["spec"].get("hostNetwork"))

    def log_path(self, container: str) -> str:
        return os.path.join(self.log_dir, f"{container}.log")

    def _write_meta(self) -> None:
        """``pod.json`` next to the logs: what ``kubesim logs`` needs (labels, containers) without an API."""
        os.makedirs(self.log_dir, exist_ok=True)
        meta = {
            "namespace": self.ns,
            "name": self.name,
            "uid": self.uid,
            "labels": self.pod["metadata"].get("labels") or {},
            "initContainers": [c.name for c in self.inits],
            "containers": [c.name for c in self.containers],
            "podIP": self.net.ip if self.net else None,
            "netns": self.net.name if self.net else None,
        }
        tmp = os.path.join(self.dir, ".pod.json.tmp")
        with open(tmp, "w") as f:
            json.dump(meta, f)
        os.replace(tmp, os.path.join(self.dir, "pod.json"))

    # -- status -------------------------------------------------------------------------------
    def _conditions(self) -> list[dict]:
        ready = self.phase == "Running" and all(c.ready for c in self.containers)
        t = self.started
        return [
            {"type": "Initialized", "status": str(self.initialized), "lastTransitionTime": t},
            {"type": "Ready", "status": str(ready), "lastTransitionTime": t},
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": t},
        ]

    def status(self) -> dict:
        st = {
            "phase": self.phase,
            "hostIP": NODE_IP,
            "startTime": self.started,
            "conditions": self._conditions(),
            "initContainerStatuses": [c.status(self.kubelet.image_id(c.spec.get("image", ""))) for c in self.inits],
            "containerStatuses": [c.status(self.kubelet.image_id(c.spec.get("image", ""))) for c in self.containers],
        }
        if not st["initContainerStatuses"]:
            del st["initContainerStatuses"]
        if self.net:
            st["podIP"] = self.net.ip
        if self.reason:
            st["reason"], st["message"] = self.reason, self.message
        return st

    def push_status(self) -> None:
        """GET + PUT /status with the current view; conflicts are retried, a deleted pod ends it."""
        with self._status_lock:
            path = resource_path("v1", "pods", self.ns, self.name)
            for _ in range(5):
                try:
                    cur = self.kubelet.client.get(path)
                    if cur["metadata"].get("uid") != self.uid:
                        return
                    cur["status"] = self.status()
                    self.kubelet.client.replace(path + "/status", cur)
                    return
                except Conflict:
                    continue
                except NotFound:
                    return
                except Exception as e:  # noqa: BLE001 - status is best effort; next change retries
                    self.log.warning("status update failed", error=str(e))
                    return

    # -- the pod's life -----------------------------------------------------------------------
    def stop(self) -> None:
        self._halt.set()

    def run(self) -> None:
        try:
            self._run()
        except Exception as e:  # noqa: BLE001 - a pod thread must never die silently
            self.log.error("pod runtime failed", error=repr(e))
        finally:
            self._teardown()

    def _sleep(self, seconds: float) -> bool:
        """Sleep unless stopped; True when the pod should go on."""
        return not self._halt.wait(seconds)

    def _run(self) -> None:
        os.makedirs(self.log_dir, exist_ok=True)
        self.net = self.kubelet.topology.add_pod(self.key, self.name, host_network=self.host_network)
        self._write_meta()
        self.push_status()
        self.log.info("pod network ready", podIP=self.net.ip, netns=self.net.name)
        backoff = Backoff(self.kubelet.backoff_initial, self.kubelet.backoff_cap)
        while not self._halt.is_set():
            try:
                self.volumes = PodVolumes(self.kubelet.client, self.pod, self.dir, self.kubelet.hostfs)
                self.volumes.setup()
                break
            except (VolumeError, ApiError) as e:
                self.reason, self.message = "ContainerCreating", str(e)
                for c in self.inits + self.containers:
                    c.state = {"waiting": {"reason": "ContainerCreating", "message": str(e)}}
                self.push_status()
                self.log.warning("volumes not ready", error=str(e))
                if not self._sleep(backoff.next()):
                    return
        self.reason = self.message = ""
        # init containers, in order, each to success
        for c in self.inits:
            backoff = Backoff(self.kubelet.backoff_initial, self.kubelet.backoff_cap)
            while True:
                if self._halt.is_set():
                    return
                self._start(c)
                self.push_status()
                rc = self._wait_exit(c)
                if rc is None:
                    return
                if rc == 0:
                    break
                delay = backoff.next()
                c.restarts += 1
                c.state = {
                    "waiting": {
                        "reason": "CrashLoopBackOff",
                        "message": f"back-off {delay:.0f}s restarting failed container={c.name}",
                    }
                }
                self.push_status()
                self.log.info("init container failed, backing off", container=c.name, exit_code=rc, delay=delay)
                if not self._sleep(delay):
                    return
        self.initialized = True
        if self._halt.is_set():
            return
        for c in self.containers:
            self._start(c)
        self.phase = "Running"
        self.push_status()
        self._supervise()

    def _supervise(self) -> None:
        backoffs = {c.name: Backoff(self.kubelet.backoff_initial, self.kubelet.backoff_cap) for c in self.containers}
        restart_at: dict[str, float] = {}
        last_refresh = time.monotonic()
        while not self._halt.wait(0.1):
            changed = False
            for c in self.containers:
                if c.proc is not None and c.proc.poll() is not None and c.name not in restart_at:
                    rc = c.proc.returncode
                    self._reap_group(c)
                    c.last_term = {
                        "exitCode": rc,
                        "reason": "Completed" if rc == 0 else "Error",
                        "startedAt": c.started_at,
                        "finishedAt": now(),
                    }
                    delay = backoffs[c.name].next()
                    c.state = {
                        "waiting": {
                            "reason": "CrashLoopBackOff",
                            "message": f"back-off {delay:.0f}s restarting failed container={c.name}",
                        }
                    }
                    c.ready = False
                    restart_at[c.name] = time.monotonic() + delay
                    self.log.info("container exited, restarting", container=c.name, exit_code=rc, delay=delay)
                    changed = True
                elif c.name in restart_at and time.monotonic() >= restart_at[c.name]:
                    del restart_at[c.name]
                    c.restarts += 1
                    self._start(c)
                    changed = True
                elif c.proc is not None and c.proc.poll() is None:
                    self._check_liveness(c)
                    ready = self._probe_ready(c)
                    if ready != c.ready:
                        c.ready = ready
                        changed = True
            if changed:
                self.push_status()
            if time.monotonic() - last_refresh > self.kubelet.volume_refresh and self.volumes:
                last_refresh = time.monotonic()
                self.volumes.refresh()

    def _wait_exit(self, c: ContainerProc) -> int | None:
        while c.proc.poll() is None:
            if self._halt.wait(0.05):
                return None
        rc = c.proc.returncode
        c.state = {
            "terminated": {
                "exitCode": rc,
                "reason": "Completed" if rc == 0 else "Error",
                "startedAt": c.started_at,
                "finishedAt": now(),
            }
        }
        if rc != 0:
            c.last_term = c.state["terminated"]
        return rc

    def _start(self, c: ContainerProc) -> None:
        scratch = os.path.join(self.dir, "scratch", f"{c.name}-{c.restarts}")
        try:
            launch = self.launch_spec(c.spec, scratch)
            if self.kubelet.runtime == "podman":
                from kubesim.kubelet import engine

                engine.require([c.spec.get("image", "")])
                argv = self.podman_argv(c, launch)
                launch["argv"] = argv
                engine.podman("rm", "-f", "-t", "0", self._podman_name(c), check=False)
        except (VolumeError, Exception) as e:  # noqa: BLE001 - EngineError too: a missing image is a config error
            self._fail_start(c, str(e))
            return
        if self.kubelet.runtime != "podman":
            argv = self.launcher_argv(launch, scratch)
        logf = open(self.log_path(c.name), "ab")
        try:
            c.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=REPO_ROOT,
                env=self.LAUNCHER_ENV,
            )
        finally:
            logf.close()
        c.started_at = now()
        c._started_mono = time.monotonic()
        c.state = {"running": {"startedAt": c.started_at}}
        c.ready = False
        self.log.info("container started", container=c.name, init=c.init, pid=c.proc.pid, argv=launch["argv"])

    def _reap_group(self, c: ContainerProc) -> None:
        """A container ends with its main process: a runtime runs it as PID 1 of its own PID namespace,
        and when PID 1 exits the kernel kills every other process in it. Here the container is a
        session of its own (``start_new_session``), so whatever it left running (children, forked
        workers) is killed the same way before the restart, or they would hold its ports and files."""
        if self.kubelet.runtime == "podman" or c.proc is None:
            return
        try:
            os.killpg(c.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def _fail_start(self, c: ContainerProc, message: str) -> None:
        """Configuration errors (missing env source…) look like a crashing container, as on a kubelet."""
        with open(self.log_path(c.name), "ab") as f:
            f.write(f"kubesim: container start failed: {message}\n".encode())
        c.proc = subprocess.Popen(["false"])
        c.state = {"waiting": {"reason": "CreateContainerConfigError", "message": message}}

    def _kill(self, c: ContainerProc, grace: float) -> None:
        p = c.proc
        if self.kubelet.runtime == "podman" and p is not None and p.poll() is None:
            # the engine stops the container (SIGTERM, then SIGKILL after the grace period); the
            # attached `podman run` then exits with it
            from kubesim.kubelet import engine

            engine.podman("stop", "-t", str(max(1, int(grace))), self._podman_name(c), check=False, timeout=grace + 30)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                pass
            engine.podman("rm", "-f", "-t", "0", self._podman_name(c), check=False)
        if p is None or p.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 2.0)):
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                return
            try:
                p.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def _teardown(self) -> None:
        grace = min(float(self.pod["spec"].get("terminationGracePeriodSeconds", 30)), self.kubelet.max_grace)
        threads = [threading.Thread(target=self._kill, args=(c, grace)) for c in self.inits + self.containers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        try:
            self.kubelet.topology.remove_pod(self.key)
        except Exception as e:  # noqa: BLE001
            self.log.warning("removing the pod network failed", error=str(e))
        self.log.info("pod stopped")
