"""The Python runtime of a simulated image, presented at paths of the container's own.

A real image holds its interpreter and packages (``python:3.11-slim``: ``/usr/local/bin/python3``,
``/usr/local/lib/python3.11/site-packages``). The netns kubelet has no images: it runs the host's
virtualenv. That virtualenv, and the interpreter it was made from, may live anywhere the user cloned
the checkout, often below a directory others may not enter (``/root`` is mode 0700 on Debian; so is a
``mktemp -d``). A container that runs as a non-root user (the proxy, the initializer) must then never
reach them through the host's paths. So every container gets the runtime mounted where an image would
carry it, independent of where the host keeps it:

- ``BASE`` (``/opt/kubesim/python``): a read-only bind of the base interpreter's installation
  (``sys.base_prefix``: a pyenv build under ``/root/.pyenv``, or ``/usr``).
- ``VENV`` (``/opt/kubesim/venv``): a read-only overlay of the virtualenv under a small generated
  layer that re-points it at ``BASE``: ``pyvenv.cfg``'s ``home``, the ``bin/python*`` links, the
  ``#!`` line of every console script, and the editable install's import hook (which points into the
  host checkout) replaced by the path where the image's Dockerfile copies the checkout, which is what
  ``pip install /opt/tproxy`` in that Dockerfile makes importable.
- ``LD_LIBRARY_PATH`` when the interpreter is linked against ``libpython`` by an absolute RUNPATH into
  the host prefix (pyenv's ``--enable-shared`` builds).

The layer is generated once per kubelet (and per product path) in its run directory; overlay lower
layers may be shared by any number of mounts, so containers share it.
"""

from __future__ import annotations

import os
import sys
import sysconfig

BASE = "/opt/kubesim/python"
VENV = "/opt/kubesim/venv"

HOST_BASE = os.path.realpath(sys.base_prefix)
HOST_VENV = os.path.realpath(sys.prefix) if sys.prefix != sys.base_prefix else None
#: the interpreter binary's name inside BASE/bin (``python3.11``)
INTERPRETER = os.path.basename(os.path.realpath(sys.executable))


def in_venv() -> bool:
    return HOST_VENV is not None


def bin_dir() -> str:
    """Where the container finds ``python3`` and the console scripts (first on its PATH)."""
    return os.path.join(VENV if in_venv() else BASE, "bin")


def container_path(host_path: str) -> str | None:
    """The container path of a file of the runtime (``certifi``'s bundle), or None if not in it."""
    real = os.path.realpath(host_path)
    for host, mounted in ((HOST_VENV, VENV), (HOST_BASE, BASE)):
        if host and (real == host or real.startswith(host.rstrip("/") + "/")):
            return os.path.join(mounted, os.path.relpath(real, host))
    return None


def library_path() -> str | None:
    """``LD_LIBRARY_PATH`` for a shared-libpython interpreter whose library lives in the host prefix."""
    if not sysconfig.get_config_var("Py_ENABLE_SHARED"):
        return None
    libdir = os.path.realpath(sysconfig.get_config_var("LIBDIR") or "")
    if libdir.startswith(HOST_BASE.rstrip("/") + "/"):
        return os.path.join(BASE, os.path.relpath(libdir, HOST_BASE))
    return None


def _rewrite_script(src: str, host_bin: str) -> bytes | None:
    """The script with its ``#!`` pointed at VENV, or None when it does not name the host venv."""
    try:
        with open(src, "rb") as f:
            head = f.read(2)
            if head != b"#!":
                return None
            rest = f.read()
    except OSError:
        return None
    first, nl, body = rest.partition(b"\n")
    if not first.startswith(host_bin.encode() + b"/"):
        return None
    return b"#!" + os.path.join(VENV, "bin").encode() + first[len(host_bin) :] + nl + body


def build_layer(run_dir: str, product_path: str | None) -> str:
    """Write (once) and return the generated top layer for the virtualenv overlay."""
    tag = (product_path or "none").strip("/").replace("/", "_") or "root"
    layer = os.path.join(run_dir, "python-image", f"venv-layer-{tag}")
    if os.path.isdir(layer):
        return layer
    tmp = layer + f".tmp{os.getpid()}"
    os.makedirs(os.path.join(tmp, "bin"))
    # pyvenv.cfg: the base interpreter is found at BASE
    with open(os.path.join(HOST_VENV, "pyvenv.cfg")) as f:
        cfg = [line for line in f.read().splitlines() if line.split("=", 1)[0].strip() not in ("home", "executable", "command")]
    with open(os.path.join(tmp, "pyvenv.cfg"), "w") as f:
        f.write("\n".join([f"home = {BASE}/bin", *cfg, f"executable = {BASE}/bin/{INTERPRETER}", ""]))
    host_bin = os.path.join(HOST_VENV, "bin")
    for name in os.listdir(host_bin):
        src = os.path.join(host_bin, name)
        dst = os.path.join(tmp, "bin", name)
        if os.path.islink(src) and os.path.realpath(src) == os.path.realpath(sys.executable):
            os.symlink(os.path.join(BASE, "bin", INTERPRETER), dst)
            continue
        text = _rewrite_script(src, host_bin) if os.path.isfile(src) and not os.path.islink(src) else None
        if text is not None:
            with open(dst, "wb") as f:
                f.write(text)
            os.chmod(dst, 0o755)
    # the editable install's hook points into the host checkout; the image has the product at product_path
    site = sysconfig.get_path("purelib", vars={"base": HOST_VENV, "platbase": HOST_VENV})
    if os.path.isdir(site):
        rel = os.path.relpath(site, HOST_VENV)
        for name in os.listdir(site):
            if name.endswith(".pth") and name.startswith("__editable__"):
                out = os.path.join(tmp, rel, name)
                os.makedirs(os.path.dirname(out), exist_ok=True)
                with open(out, "w") as f:
                    f.write((product_path + "\n") if product_path else "")
    for dirpath, _dirnames, filenames in os.walk(tmp):
        os.chmod(dirpath, 0o755)
        for fn in filenames:
            p = os.path.join(dirpath, fn)
            if not os.path.islink(p):
                os.chmod(p, os.stat(p).st_mode | 0o444)
    try:
        os.rename(tmp, layer)
    except OSError:  # another pod built it first
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return layer


def mounts(run_dir: str, product_path: str | None) -> list[dict]:
    """The launcher mounts that put the runtime at BASE (and VENV), first in a container's mount list."""
    out = [{"src": HOST_BASE, "dst": BASE, "ro": True}]
    if in_venv():
        out.append({"overlay": [build_layer(run_dir, product_path), HOST_VENV], "dst": VENV})
    return out


def env() -> dict[str, str]:
    lib = library_path()
    return {"LD_LIBRARY_PATH": lib} if lib else {}
