"""Image name → what the netns kubelet runs, read from the repository's own Dockerfiles.

There is no container runtime here, so an "image" is the recipe its Dockerfile declares:

- the image is found by name: every ``Dockerfile`` in the checkout carries its build command in a
  comment (``docker build -f initializer/Dockerfile -t tproxy-initializer .``); the ``-t`` tag's name
  (registry and tag stripped) is the image name, the last argument the build context;
- ``ENTRYPOINT`` (exec form) and ``CMD`` become the container's entrypoint/cmd, combined with the
  manifest's ``command``/``args`` exactly as Kubernetes does;
- ``COPY src dst`` becomes a bind mount of the context's ``src`` at ``dst`` (``COPY . /opt/tproxy``
  binds the checkout at ``/opt/tproxy``), ``WORKDIR`` the working directory;
- ``RUN`` lines are ignored: the host (Debian) already has iptables, curl and ping, and the
  virtualenv stands in for ``pip install``.

Images that are not in the checkout run on the host's root filesystem with the manifest's command.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from dataclasses import dataclass, field

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclass
class Image:
    name: str
    dockerfile: str | None = None
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    workdir: str | None = None
    env: dict = field(default_factory=dict)
    #: (host source path, container destination)
    copies: list[tuple[str, str]] = field(default_factory=list)

    @property
    def local(self) -> bool:
        """True when the image is built from this checkout (else: host rootfs, manifest command)."""
        return self.dockerfile is not None


def image_name(ref: str) -> str:
    """``gcr.io/proj/tproxy-sidecar:0.1`` → ``tproxy-sidecar``; digests and tags are dropped."""
    ref = ref.split("@", 1)[0]
    last = ref.rsplit("/", 1)[-1]
    return last.split(":", 1)[0]


def _exec_form(value: str) -> list[str]:
    value = value.strip()
    if value.startswith("["):
        return [str(x) for x in json.loads(value)]
    return ["/bin/sh", "-c", value]


def parse_dockerfile(path: str) -> Image | None:
    """The :class:`Image` a Dockerfile declares, or None when it names no ``docker build -t`` tag."""
    with open(path) as f:
        text = f.read()
    tag = context = None
    for m in re.finditer(r"docker build\s+([^\n]+)", text):
        argv = shlex.split(m.group(1))
        positional = []
        i = 0
        while i < len(argv):
            if argv[i] in ("-t", "--tag", "-f", "--file"):
                if argv[i] in ("-t", "--tag"):
                    tag = argv[i + 1]
                i += 2
                continue
            if not argv[i].startswith("-"):
                positional.append(argv[i])
            i += 1
        if positional:
            context = positional[-1]
        break
    if not tag:
        return None
    here = os.path.dirname(os.path.abspath(path))
    # the comment's context is relative to where the command is run: the repo root, or the image dir
    ctx = os.path.normpath(os.path.join(REPO_ROOT, context or "."))
    if not os.path.isdir(ctx):
        ctx = here
    img = Image(name=image_name(tag), dockerfile=os.path.relpath(path, REPO_ROOT))
    # join continuation lines, drop comments
    logical = re.sub(r"\\\n", " ", "\n".join(l for l in text.splitlines() if not l.lstrip().startswith("#")))
    for line in logical.splitlines():
        if not line.strip():
            continue
        instr, _, rest = line.strip().partition(" ")
        instr = instr.upper()
        if instr == "ENTRYPOINT":
            img.entrypoint = _exec_form(rest)
        elif instr == "CMD":
            img.cmd = _exec_form(rest)
        elif instr == "WORKDIR":
            img.workdir = rest.strip()
        elif instr == "ENV":
            parts = shlex.split(rest)
            if len(parts) == 2 and "=" not in parts[0]:
                img.env[parts[0]] = parts[1]
            else:
                for p in parts:
                    k, _, v = p.partition("=")
                    img.env[k] = v
        elif instr in ("COPY", "ADD"):
            parts = [p for p in shlex.split(rest) if not p.startswith("--")]
            if len(parts) >= 2:
                dst = parts[-1]
                for src in parts[:-1]:
                    host = os.path.normpath(os.path.join(ctx, src))
                    if dst.endswith("/") and src not in (".", "./"):
                        target = os.path.join(dst, os.path.basename(host))
                    else:
                        target = dst
                    img.copies.append((host, target.rstrip("/") or "/"))
    return img


class ImageIndex:
    """Every image the checkout can "build", by name."""

    def __init__(self, root: str = REPO_ROOT):
        self.root = root
        self.images: dict[str, Image] = {}
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if not d.startswith(".") and d not in ("node_modules", "__pycache__")]
            for fn in filenames:
                if fn == "Dockerfile" or fn.startswith("Dockerfile."):
                    img = parse_dockerfile(os.path.join(dirpath, fn))
                    if img:
                        self.images.setdefault(img.name, img)

    def resolve(self, ref: str) -> Image:
        return self.images.get(image_name(ref)) or Image(name=image_name(ref))


def container_argv(image: Image, command: list[str] | None, args: list[str] | None) -> list[str]:
    """Kubernetes' rule: ``command`` replaces ENTRYPOINT (and drops CMD), ``args`` replaces CMD."""
    if command:
        return list(command) + list(args or [])
    return list(image.entrypoint) + (list(args) if args else list(image.cmd))
