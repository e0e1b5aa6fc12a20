"""The container engine the real images run on: podman, configured as scripts/podman-env.sh does.

podman rather than docker: it joins an existing network namespace (``--network ns:/run/netns/NAME``),
which is what a kubelet needs to put a container into the pod's (or the node's) namespace; docker
has no such join. It also has no daemon to start and stop, and the same tool builds the images.

Every call uses the private store of ``make images`` (``$TPROXY_IMAGES_DIR``, default ``.images`` in
the checkout), cgroupfs (no systemd), runc (crun refuses this host's hybrid cgroup layout) and
explicit rlimits (podman's defaults cannot be set here).
"""

from __future__ import annotations

import os
import shutil
import subprocess

from kubesim.kubelet.images import REPO_ROOT

#: the chart's tags (chart/values.yaml) and the example app's; `make images` builds all of them
IMAGES = {
    "tproxy-initializer": "tproxy-initializer:0.1.0",
    "tproxy-podwatch": "tproxy-podwatch:0.1.0",
    "tproxy-sidecar": "tproxy-sidecar:0.1.0",
    "tproxy-proxy": "tproxy-proxy:0.1.0",
    "example-app": "example-app:debian",
}
#: the CA files of the images (Debian's system bundle, certifi's in the image's Python), over which the
#: kubelet binds its trust bundle (the simulated internet's CA is then "public", as on the host)
TRUST_PATHS = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/usr/local/lib/python3.11/dist-packages/certifi/cacert.pem",  # pip on Debian's python3
    "/usr/local/lib/python3.11/site-packages/certifi/cacert.pem",
]  # the official python image
LIMITS = ["--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096"]


class EngineError(RuntimeError):
    pass


def images_dir() -> str:
    return os.environ.get("TPROXY_IMAGES_DIR") or os.path.join(REPO_ROOT, ".images")


def podman_argv() -> list[str]:
    d = images_dir()
    return [
        "podman",
        "--root",
        os.path.join(d, "storage"),
        "--runroot",
        os.path.join(d, "run"),
        "--cgroup-manager",
        "cgroupfs",
        "--events-backend",
        "file",
        "--storage-driver",
        "overlay",
        "--runtime",
        "runc",
    ]


def podman(*args: str, check: bool = True, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(podman_argv() + list(args), capture_output=True, text=True, timeout=timeout, **kw)
    if check and proc.returncode != 0:
        raise EngineError(f"podman {' '.join(args[:3])}: {proc.stderr.strip()[-500:]}")
    return proc


def available() -> bool:
    return shutil.which("podman") is not None and shutil.which("runc") is not None


def image_ref(ref: str) -> str:
    """``tproxy-proxy:0.1.0`` and ``gcr.io/x/tproxy-proxy:0.1.0`` → ``localhost/tproxy-proxy:0.1.0``."""
    ref = ref.split("@", 1)[0]
    last = ref.rsplit("/", 1)[-1]
    if ":" not in last:
        last += ":latest"
    return f"localhost/{last}"


def has_image(ref: str) -> bool:
    if not available():
        return False
    return podman("image", "exists", image_ref(ref), check=False).returncode == 0


def missing_images(refs) -> list[str]:
    return [r for r in refs if not has_image(r)]


def require(refs) -> None:
    """A clear error naming the images that are not built, and how to build them."""
    if not available():
        raise EngineError(
            "podman (and runc) are not installed: run `make images` as root, which installs them and builds the images"
        )
    missing = missing_images(refs)
    if missing:
        raise EngineError(
            f"image(s) not built: {', '.join(missing)}; build them with `make images` "
            f"(or scripts/images.sh {' '.join(sorted({r.split(':')[0].rsplit('/', 1)[-1] for r in missing}))})"
        )


def image_user(ref: str) -> str:
    return podman("image", "inspect", "--format", "{{.Config.User}}", image_ref(ref), check=False).stdout.strip()
