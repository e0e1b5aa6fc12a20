"""Before the kubelet runs a pod: can a non-root container start the product's Python at all?

The proxy and the initializer run as a non-root user (as the chart asks). If this machine cannot give
such a container the image's Python runtime (:mod:`kubesim.kubelet.pyimage`: no overlayfs, a checkout
already on a nested overlay, a path an overlay cannot name), every pod would crash-loop and the demo
or a test would end in a 502 or a timeout far from the cause. One probe container, started exactly as
a pod's container is (``ip netns exec`` + the launcher, as user 65534), turns that into one clear
error at start-up that says what failed and what to do.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from kubesim.kubelet import pyimage
from kubesim.kubelet.images import REPO_ROOT

#: the user the probe runs as (``nobody``): no capability, no access to private host directories
PROBE_UID = 65534
PROBE_CODE = "import yaml, controllerkit"


class PreflightError(RuntimeError):
    pass


def _hint(message: str) -> str:
    if "overlay" in message:
        return (
            "this kernel or filesystem cannot mount the read-only overlay that presents the "
            "virtualenv to containers (is the overlay module available? is the checkout itself "
            "on a nested overlay, as inside some containers?). Run the demo on the host, or clone "
            "the repository onto a plain filesystem (ext4, xfs, tmpfs)."
        )
    if "Permission denied" in message or "No such file" in message:
        return (
            "a non-root container user cannot read the Python runtime; please report this with "
            "the paths above (the checkout, the virtualenv and sys.base_prefix)."
        )
    return "see the container launcher's message above."


def check(netns: str, run_dir: str, product_path: str | None = "/opt/tproxy", timeout: float = 30.0) -> None:
    """Run the probe container in ``netns``; raise :class:`PreflightError` with the cause and a hint."""
    scratch = os.path.join(run_dir, "preflight")
    os.makedirs(scratch, exist_ok=True)
    os.chmod(scratch, 0o755)
    mounts = pyimage.mounts(run_dir, product_path)
    if product_path:
        mounts.append({"src": REPO_ROOT, "dst": product_path, "ro": True})
    spec = {
        "argv": [os.path.join(pyimage.bin_dir(), "python3"), "-c", PROBE_CODE],
        "env": {"PATH": pyimage.bin_dir() + ":/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1", **pyimage.env()},
        "cwd": product_path or "/",
        "mounts": mounts,
        "netns": netns,
        "scratch": scratch,
        "run_as_user": PROBE_UID,
        "run_as_group": PROBE_UID,
    }
    path = os.path.join(scratch, "launch.json")
    with open(path, "w") as f:
        json.dump(spec, f)
    argv = ["ip", "netns", "exec", netns, sys.executable, "-m", "kubesim.kubelet.launch", path]
    try:
        proc = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=REPO_ROOT,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": REPO_ROOT},
        )
    except subprocess.TimeoutExpired:
        raise PreflightError(f"the probe container did not finish within {timeout:.0f} s") from None
    if proc.returncode != 0:
        out = (proc.stderr or proc.stdout).strip().splitlines()
        message = out[-1] if out else f"exit code {proc.returncode}"
        raise PreflightError(
            f"a non-root container cannot start the product's Python here: {message}. "
            f"(checkout {REPO_ROOT}, interpreter {pyimage.HOST_BASE}, virtualenv {pyimage.HOST_VENV}) "
            f"What to do: {_hint(message)}"
        )
