"""Pod volumes materialised as directories under the pod's run directory.

- ``configMap`` / ``secret``: every key (or the listed ``items``) becomes a file; files are rewritten
  atomically (write + rename inside the volume directory) when the object changes, so a bind-mounted
  volume sees updates like a real one does (the chart's policy hot reload relies on it). Volumes used
  through ``subPath`` are, as on a real kubelet, not updated.
- ``emptyDir``: an empty directory per pod, mode 0777 like the kubelet's (any container user writes it).
- ``hostPath``: a path on the *simulated node's* filesystem (``<run dir>/hostfs/<path>``), so two
  hostNetwork pods that share ``/var/run/tproxy`` see each other's files while the real host is untouched.
- the service-account token: ``token``, ``ca.crt`` and ``namespace`` from the SA's token Secret
  (published the 1.7 way), mounted at ``/var/run/secrets/kubernetes.io/serviceaccount``.
"""

from __future__ import annotations

import base64
import os

from controllerkit.errors import NotFound
from controllerkit.kube import resource_path

SA_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"


class VolumeError(Exception):
    """A volume cannot be set up yet (missing ConfigMap/Secret/ServiceAccount token); retried."""


def _write_atomic(path: str, data: bytes) -> bool:
    """Write ``data`` to ``path`` unless it already holds exactly that; True when it changed."""
    try:
        with open(path, "rb") as f:
            if f.read() == data:
                return False
    except OSError:
        pass
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    return True


def _files_from(data: dict[str, bytes], items: list | None, optional_keys: bool = False) -> dict[str, bytes]:
    if not items:
        return dict(data)
    out = {}
    for it in items:
        key, path = it.get("key"), it.get("path") or it.get("key")
        if key not in data:
            raise VolumeError(f"key {key!r} not found")
        out[path] = data[key]
    return out


class PodVolumes:
    """The volumes of one pod: ``setup()`` once, ``refresh()`` periodically, ``path(name)``."""

    def __init__(self, client, pod: dict, pod_dir: str, hostfs: str):
        self.client = client
        self.pod = pod
        self.ns = pod["metadata"].get("namespace", "default")
        self.dir = os.path.join(pod_dir, "volumes")
        self.hostfs = hostfs
        self.paths: dict[str, str] = {}
        self.sa_dir: str | None = None

    # -- sources -----------------------------------------------------------------------------
    def _configmap(self, name: str) -> dict[str, bytes] | None:
        try:
            cm = self.client.get(resource_path("v1", "configmaps", self.ns, name))
        except NotFound:
            return None
        data = {k: v.encode() for k, v in (cm.get("data") or {}).items()}
        data.update({k: base64.b64decode(v) for k, v in (cm.get("binaryData") or {}).items()})
        return data

    def _secret(self, name: str) -> dict[str, bytes] | None:
        try:
            s = self.client.get(resource_path("v1", "secrets", self.ns, name))
        except NotFound:
            return None
        data = {k: base64.b64decode(v) for k, v in (s.get("data") or {}).items()}
        data.update({k: v.encode() for k, v in (s.get("stringData") or {}).items()})
        return data

    def _render(self, vol: dict) -> dict[str, bytes] | None:
        """File contents of a configMap/secret volume; None when optional and missing."""
        if "configMap" in vol:
            src = vol["configMap"]
            data = self._configmap(src.get("name", ""))
            what = f"configmap {self.ns}/{src.get('name')}"
        else:
            src = vol["secret"]
            data = self._secret(src.get("secretName", ""))
            what = f"secret {self.ns}/{src.get('secretName')}"
        if data is None:
            if src.get("optional"):
                return {}
            raise VolumeError(f'volume "{vol["name"]}": {what} not found')
        try:
            return _files_from(data, src.get("items"))
        except VolumeError as e:
            raise VolumeError(f'volume "{vol["name"]}": {what}: {e}') from None

    # -- lifecycle ---------------------------------------------------------------------------
    def setup(self) -> None:
        for vol in self.pod["spec"].get("volumes") or []:
            name = vol["name"]
            path = os.path.join(self.dir, name)
            if "configMap" in vol or "secret" in vol:
                files = self._render(vol)
                os.makedirs(path, exist_ok=True)
                for rel, data in files.items():
                    _write_atomic(os.path.join(path, rel), data)
            elif "emptyDir" in vol:
                os.makedirs(path, exist_ok=True)
                # like the kubelet's (pkg/volume/emptydir: perm 0777): any container user may write
                os.chmod(path, 0o777)
            elif "hostPath" in vol:
                hp = vol["hostPath"]
                path = os.path.join(self.hostfs, hp["path"].lstrip("/"))
                if hp.get("type") in (None, "", "DirectoryOrCreate", "Directory"):
                    os.makedirs(path, exist_ok=True)
                elif hp.get("type") == "FileOrCreate":
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                    open(path, "a").close()
            else:
                kinds = sorted(k for k in vol if k != "name")
                raise VolumeError(f'volume "{name}": type {kinds} is not supported by the netns kubelet')
            self.paths[name] = path
        if self.pod["spec"].get("automountServiceAccountToken", True) is not False:
            self.sa_dir = self._service_account_token()

    def _service_account_token(self) -> str:
        sa_name = self.pod["spec"].get("serviceAccountName") or self.pod["spec"].get("serviceAccount") or "default"
        try:
            sa = self.client.get(resource_path("v1", "serviceaccounts", self.ns, sa_name))
        except NotFound:
            raise VolumeError(f'serviceaccount "{sa_name}" not found in namespace "{self.ns}"') from None
        for ref in sa.get("secrets") or []:
            data = self._secret(ref.get("name", ""))
            if data and "token" in data:
                path = os.path.join(self.dir, "_serviceaccount")
                for key in ("token", "ca.crt", "namespace"):
                    if key in data:
                        _write_atomic(os.path.join(path, key), data[key])
                return path
        raise VolumeError(f'serviceaccount "{self.ns}/{sa_name}" has no token Secret yet')

    def refresh(self) -> None:
        """Bring configMap/secret volumes up to date (errors keep the current files)."""
        for vol in self.pod["spec"].get("volumes") or []:
            if ("configMap" in vol or "secret" in vol) and vol["name"] in self.paths:
                try:
                    files = self._render(vol)
                except Exception:  # noqa: BLE001 - keep the last materialised version
                    continue
                for rel, data in files.items():
                    _write_atomic(os.path.join(self.paths[vol["name"]], rel), data)

    def mounts_for(self, container: dict) -> list[dict]:
        """Launcher mount entries for one container's ``volumeMounts`` (plus the SA token)."""
        out = []
        has_sa_mount = False
        for vm in container.get("volumeMounts") or []:
            name, dst = vm["name"], vm["mountPath"]
            if name not in self.paths:
                raise VolumeError(f'container "{container["name"]}": volumeMount "{name}" has no volume')
            src = self.paths[name]
            if vm.get("subPath"):
                src = os.path.join(src, vm["subPath"])
                if not os.path.exists(src):
                    os.makedirs(src, exist_ok=True)
            if os.path.normpath(dst) == SA_MOUNT:
                has_sa_mount = True
            out.append({"src": src, "dst": os.path.normpath(dst), "ro": bool(vm.get("readOnly")), "file": os.path.isfile(src)})
        if self.sa_dir and not has_sa_mount:
            out.append({"src": self.sa_dir, "dst": SA_MOUNT, "ro": True, "file": False})
        return out
