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
"""
from __future__ import annotations

import base64
import copy
import datetime as dt
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

from controllerkit.backoff import Backoff as _Backoff
from controllerkit.errors import ApiError, Conflict, NotFound
from controllerkit.kube import resource_path

from kubesim.kubelet import pyimage
from kubesim.kubelet.images import REPO_ROOT, container_argv
from kubesim.kubelet.launch import DEFAULT_CAPS
from kubesim.kubelet.volumes import PodVolumes, VolumeError
from kubesim.topology import API_PORT, NODE_IP, run_in_netns

#: the container's view of the host virtualenv's bin/ (see :mod:`kubesim.kubelet.pyimage`)
VENV_BIN = pyimage.bin_dir()
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: interpreters an image's ENTRYPOINT may name by absolute path (python:3.11-slim puts them in
#: /usr/local/bin); they map to the virtualenv, which has every pinned dependency
EXEC_MAP = {f"/usr/local/bin/{n}": os.path.join(VENV_BIN, n) for n in ("python", "python3", "mitmdump")}


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.\-]*)\)")


def expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion: defined names are replaced, ``$$`` escapes, others stay."""
    def sub(m):
        if m.group(0) == "$$":
            return "$"
        name = m.group(1)
        return env[name] if name in env else m.group(0)
    return _VAR.sub(sub, value)


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
        st = {"name": self.name, "image": self.spec.get("image", ""), "imageID": image_id,
              "restartCount": self.restarts, "ready": self.ready, "state": self.state}
        if self.last_term:
            st["lastState"] = {"terminated": self.last_term}
        if self.proc is not None:
            st["containerID"] = f"kubesim://{self.proc.pid}"
        return st


class PodRuntime(threading.Thread):
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
        meta = {"namespace": self.ns, "name": self.name, "uid": self.uid,
                "labels": self.pod["metadata"].get("labels") or {},
                "initContainers": [c.name for c in self.inits], "containers": [c.name for c in self.containers],
                "podIP": self.net.ip if self.net else None, "netns": self.net.name if self.net else None}
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
        st = {"phase": self.phase, "hostIP": NODE_IP, "startTime": self.started, "conditions": self._conditions(),
              "initContainerStatuses": [c.status(self.kubelet.image_id(c.spec.get("image", ""))) for c in self.inits],
              "containerStatuses": [c.status(self.kubelet.image_id(c.spec.get("image", ""))) for c in self.containers]}
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
                c.state = {"waiting": {"reason": "CrashLoopBackOff",
                                       "message": f"back-off {delay:.0f}s restarting failed container={c.name}"}}
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
                    c.last_term = {"exitCode": rc, "reason": "Completed" if rc == 0 else "Error",
                                   "startedAt": c.started_at, "finishedAt": now()}
                    delay = backoffs[c.name].next()
                    c.state = {"waiting": {"reason": "CrashLoopBackOff",
                                           "message": f"back-off {delay:.0f}s restarting failed container={c.name}"}}
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

    def _wait_exit(self, c: ContainerProc) -> int | None:
        while c.proc.poll() is None:
            if self._halt.wait(0.05):
                return None
        rc = c.proc.returncode
        c.state = {"terminated": {"exitCode": rc, "reason": "Completed" if rc == 0 else "Error",
                                  "startedAt": c.started_at, "finishedAt": now()}}
        if rc != 0:
            c.last_term = c.state["terminated"]
        return rc

    # -- processes ------------------------------------------------------------------------------
    def _env(self, c: dict) -> dict[str, str]:
        meta, spec = self.pod["metadata"], self.pod["spec"]
        image = self.kubelet.images.resolve(c.get("image", ""))
        env = {"PATH": f"{VENV_BIN}:{BASE_PATH}", "HOSTNAME": self.name, "HOME": "/root",
               "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1",
               "KUBERNETES_SERVICE_HOST": NODE_IP, "KUBERNETES_SERVICE_PORT": str(API_PORT),
               "KUBERNETES_SERVICE_PORT_HTTPS": str(API_PORT),
               "KUBERNETES_PORT": f"tcp://{NODE_IP}:{API_PORT}"}
        if os.environ.get("TERM"):
            env["TERM"] = "dumb"
        env.update(pyimage.env())
        env.update(image.env)
        fields = {"metadata.name": self.name, "metadata.namespace": self.ns, "metadata.uid": self.uid,
                  "spec.nodeName": self.kubelet.node_name, "spec.serviceAccountName": spec.get("serviceAccountName", "default"),
                  "status.podIP": self.net.ip if self.net else "", "status.hostIP": NODE_IP}
        for e in c.get("env") or []:
            name = e["name"]
            if "value" in e:
                env[name] = expand(str(e["value"]), env)
                continue
            vf = e.get("valueFrom") or {}
            if "fieldRef" in vf:
                fp = vf["fieldRef"].get("fieldPath", "")
                m = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", fp)
                if m:
                    env[name] = (meta.get(m.group(1)) or {}).get(m.group(2), "")
                else:
                    env[name] = fields.get(fp, "")
            elif "configMapKeyRef" in vf or "secretKeyRef" in vf:
                ref = vf.get("configMapKeyRef") or vf.get("secretKeyRef")
                kind = "configmaps" if "configMapKeyRef" in vf else "secrets"
                try:
                    obj = self.kubelet.client.get(resource_path("v1", kind, self.ns, ref["name"]))
                    val = (obj.get("data") or {}).get(ref["key"])
                    if val is not None and kind == "secrets":
                        val = base64.b64decode(val).decode()
                except NotFound:
                    val = None
                if val is None and not ref.get("optional"):
                    raise VolumeError(f'env {name}: {kind[:-1]} "{ref["name"]}" key "{ref["key"]}" not found')
                if val is not None:
                    env[name] = val
            else:
                env[name] = ""
        return env

    def launch_spec(self, spec: dict, scratch: str, argv: list[str] | None = None) -> dict:
        """The launcher spec of a container (``argv`` overrides its command: ``kubectl exec``)."""
        image = self.kubelet.images.resolve(spec.get("image", ""))
        env = self._env(spec)
        if argv is None:
            argv = [expand(a, env) for a in container_argv(image, spec.get("command"), spec.get("args"))]
        if argv:
            argv = [EXEC_MAP.get(argv[0], argv[0])] + list(argv[1:])
        # the image's Python runtime first (the trust bundle is bound over a file inside it)
        # where the image holds the product (its WORKDIR, /opt/tproxy, when its COPYs land there)
        wd = (image.workdir or "").rstrip("/")
        product = image.workdir if wd and any(dst == wd or dst.startswith(wd + "/") for _, dst in image.copies) else None
        pymounts = pyimage.mounts(self.kubelet.run_dir, product)
        sysmounts = [{"src": self.kubelet.ca_bundle, "dst": pyimage.container_path(p) or p, "ro": True, "file": True}
                     for p in self.kubelet.trust_paths]
        imgmounts = [{"src": src, "dst": dst, "ro": True, "file": os.path.isfile(src)} for src, dst in image.copies]
        volmounts = sorted(self.volumes.mounts_for(spec), key=lambda m: m["dst"].count("/"))
        sc = spec.get("securityContext") or {}
        psc = self.pod["spec"].get("securityContext") or {}
        caps = sc.get("capabilities") or {}
        os.makedirs(scratch, exist_ok=True)
        os.chmod(scratch, 0o755)
        return {"argv": argv, "env": env, "cwd": spec.get("workingDir") or image.workdir or "/",
                "mounts": pymounts + sysmounts + imgmounts + volmounts, "netns": self.net.name, "scratch": scratch,
                "privileged": bool(sc.get("privileged")), "cap_add": caps.get("add") or [],
                "cap_drop": caps.get("drop") or [],
                "run_as_user": sc.get("runAsUser", psc.get("runAsUser")),
                "run_as_group": sc.get("runAsGroup", psc.get("runAsGroup")),
                "run_as_non_root": bool(sc.get("runAsNonRoot", psc.get("runAsNonRoot")))}

    def launcher_argv(self, launch: dict, scratch: str) -> list[str]:
        spec_path = os.path.join(scratch, "launch.json")
        with open(spec_path, "w") as f:
            json.dump(launch, f)
        return ["ip", "netns", "exec", self.net.name, sys.executable, "-m", "kubesim.kubelet.launch", spec_path]

    LAUNCHER_ENV = {"PATH": BASE_PATH, "PYTHONPATH": REPO_ROOT, "PYTHONDONTWRITEBYTECODE": "1"}

    def podman_argv(self, c: ContainerProc, launch: dict) -> list[str]:
        """``podman run`` of the container's real image with what the launch spec says, translated:
        the pod's network namespace (the node's for hostNetwork), its /etc/hosts and resolv.conf, the
        pod spec's env (not the emulation's PATH/PYTHON* additions: the image has its own), volumes
        and the service-account token, the trust bundle over the image's CA files, command/args,
        working directory, securityContext (privileged, capabilities, runAsUser/Group)."""
        from kubesim.kubelet import engine
        spec = c.spec
        name = self._podman_name(c)
        argv = engine.podman_argv() + ["run", "--rm", "--name", name, *engine.LIMITS,
                                       "--network", f"ns:/run/netns/{self.net.name}", "--hostname", self.name]
        etc = f"/etc/netns/{self.net.name}"
        for f in ("hosts", "resolv.conf"):
            if os.path.exists(os.path.join(etc, f)):
                argv += ["-v", f"{os.path.join(etc, f)}:/etc/{f}:ro"]
        env = self._env(spec)
        emulated = (set(pyimage.env()) | {"PATH", "HOME", "PYTHONDONTWRITEBYTECODE"}
                    | set(self.kubelet.images.resolve(spec.get("image", "")).env))
        declared = {e["name"] for e in spec.get("env") or []}
        for k, v in env.items():
            if k in emulated and k not in declared:
                continue
            argv += ["-e", f"{k}={v}"]
        volumes = self.volumes.mounts_for(spec)
        for m in volumes:
            argv += ["-v", f"{m['src']}:{m['dst']}" + (":ro" if m.get("ro") else "")]
        if self.kubelet.ca_bundle:
            # under the pod's own volumes (the injected CA bundle at /etc/ssl/certs/ wins), as in the emulation
            for dst in engine.TRUST_PATHS:
                if not any(dst == m["dst"] or dst.startswith(m["dst"].rstrip("/") + "/") for m in volumes):
                    argv += ["-v", f"{self.kubelet.ca_bundle}:{dst}:ro"]
        if launch["privileged"]:
            argv.append("--privileged")
        # Docker's and containerd's default set, which Kubernetes pods get (podman's own lacks NET_RAW,
        # which Debian's ping needs as a file capability), then the securityContext's changes
        drops = {c.upper().removeprefix("CAP_") for c in launch["cap_drop"]}
        if "ALL" not in drops:
            for cap in sorted(DEFAULT_CAPS):
                if cap.removeprefix("CAP_") not in drops:
                    argv += ["--cap-add", cap]
        for cap in launch["cap_drop"]:
            argv += ["--cap-drop", cap]
        for cap in launch["cap_add"]:
            argv += ["--cap-add", cap]
        user = launch["run_as_user"]
        if user is not None:
            argv += ["--user", f"{user}:{launch['run_as_group']}" if launch["run_as_group"] is not None else str(user)]
        elif launch["run_as_non_root"] and engine.image_user(spec.get("image", "")) in ("", "0", "root", "0:0"):
            raise VolumeError(f"container has runAsNonRoot and image {spec.get('image')} will run as root")
        if spec.get("workingDir"):
            argv += ["-w", spec["workingDir"]]
        command = [expand(a, env) for a in spec.get("command") or []]
        args = [expand(a, env) for a in spec.get("args") or []]
        if command:
            argv += ["--entrypoint", json.dumps(command)]
        argv.append(engine.image_ref(spec.get("image", "")))
        return argv + args

    def _podman_name(self, c: ContainerProc) -> str:
        return f"kubesim-{self.uid[:8]}-{c.name}-{c.restarts}"

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
            c.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                                      start_new_session=True, cwd=REPO_ROOT, env=self.LAUNCHER_ENV)
        finally:
            logf.close()
        c.started_at = now()
        c._started_mono = time.monotonic()
        c.state = {"running": {"startedAt": c.started_at}}
        c.ready = False
        self.log.info("container started", container=c.name, init=c.init, pid=c.proc.pid, argv=launch["argv"])

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
            engine.podman("stop", "-t", str(max(1, int(grace))), self._podman_name(c), check=False,
                          timeout=grace + 30)
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
