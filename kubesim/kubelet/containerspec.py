"""What starts a container: its environment (``env``, ``valueFrom``, ``$(VAR)`` expansion), the
launcher spec (:mod:`kubesim.kubelet.launch`: argv, mounts, securityContext) and the argv of the
launcher in the pod's namespace or of ``podman run`` (:mod:`kubesim.kubelet.engine`).
"""

from __future__ import annotations

import base64
import json
import os
import re
import sys
from typing import TYPE_CHECKING

from controllerkit.errors import NotFound
from controllerkit.kube import resource_path

from kubesim.kubelet import pyimage
from kubesim.kubelet.images import REPO_ROOT, container_argv
from kubesim.kubelet.launch import DEFAULT_CAPS
from kubesim.kubelet.volumes import VolumeError
from kubesim.topology import API_PORT, NODE_IP

if TYPE_CHECKING:
    from kubesim.kubelet.runtime import ContainerProc

#: the container's view of the host virtualenv's bin/ (see :mod:`kubesim.kubelet.pyimage`)
VENV_BIN = pyimage.bin_dir()
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: interpreters an image's ENTRYPOINT may name by absolute path (python:3.11-slim puts them in
#: /usr/local/bin); they map to the virtualenv, which has every pinned dependency
EXEC_MAP = {f"/usr/local/bin/{n}": os.path.join(VENV_BIN, n) for n in ("python", "python3", "mitmdump")}


_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.\-]*)\)")


def expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion: defined names are replaced, ``$$`` escapes, others stay."""

    def sub(m):
        if m.group(0) == "$$":
            return "$"
        name = m.group(1)
        return env[name] if name in env else m.group(0)

    return _VAR.sub(sub, value)


class ContainerSpecMixin:
    """Container start descriptions of :class:`~kubesim.kubelet.runtime.PodRuntime`."""

    def _env(self, c: dict) -> dict[str, str]:
        meta, spec = self.pod["metadata"], self.pod["spec"]
        image = self.kubelet.images.resolve(c.get("image", ""))
        env = {
            "PATH": f"{VENV_BIN}:{BASE_PATH}",
            "HOSTNAME": self.name,
            "HOME": "/root",
            "PYTHONUNBUFFERED": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
            "KUBERNETES_SERVICE_HOST": NODE_IP,
            "KUBERNETES_SERVICE_PORT": str(API_PORT),
            "KUBERNETES_SERVICE_PORT_HTTPS": str(API_PORT),
            "KUBERNETES_PORT": f"tcp://{NODE_IP}:{API_PORT}",
        }
        if os.environ.get("TERM"):
            env["TERM"] = "dumb"
        env.update(pyimage.env())
        env.update(image.env)
        fields = {
            "metadata.name": self.name,
            "metadata.namespace": self.ns,
            "metadata.uid": self.uid,
            "spec.nodeName": self.kubelet.node_name,
            "spec.serviceAccountName": spec.get("serviceAccountName", "default"),
            "status.podIP": self.net.ip if self.net else "",
            "status.hostIP": NODE_IP,
        }
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
        sysmounts = [
            {"src": self.kubelet.ca_bundle, "dst": pyimage.container_path(p) or p, "ro": True, "file": True}
            for p in self.kubelet.trust_paths
        ]
        imgmounts = [{"src": src, "dst": dst, "ro": True, "file": os.path.isfile(src)} for src, dst in image.copies]
        volmounts = sorted(self.volumes.mounts_for(spec), key=lambda m: m["dst"].count("/"))
        sc = spec.get("securityContext") or {}
        psc = self.pod["spec"].get("securityContext") or {}
        caps = sc.get("capabilities") or {}
        os.makedirs(scratch, exist_ok=True)
        os.chmod(scratch, 0o755)
        return {
            "argv": argv,
            "env": env,
            "cwd": spec.get("workingDir") or image.workdir or "/",
            "mounts": pymounts + sysmounts + imgmounts + volmounts,
            "netns": self.net.name,
            "scratch": scratch,
            "privileged": bool(sc.get("privileged")),
            "cap_add": caps.get("add") or [],
            "cap_drop": caps.get("drop") or [],
            "run_as_user": sc.get("runAsUser", psc.get("runAsUser")),
            "run_as_group": sc.get("runAsGroup", psc.get("runAsGroup")),
            "run_as_non_root": bool(sc.get("runAsNonRoot", psc.get("runAsNonRoot"))),
        }

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
        argv = engine.podman_argv() + [
            "run",
            "--rm",
            "--name",
            name,
            *engine.LIMITS,
            "--network",
            f"ns:/run/netns/{self.net.name}",
            "--hostname",
            self.name,
        ]
        etc = f"/etc/netns/{self.net.name}"
        for f in ("hosts", "resolv.conf"):
            if os.path.exists(os.path.join(etc, f)):
                argv += ["-v", f"{os.path.join(etc, f)}:/etc/{f}:ro"]
        env = self._env(spec)
        emulated = (
            set(pyimage.env())
            | {"PATH", "HOME", "PYTHONDONTWRITEBYTECODE"}
            | set(self.kubelet.images.resolve(spec.get("image", "")).env)
        )
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
