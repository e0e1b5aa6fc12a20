#!/usr/bin/env python3
"""Fetch the Kubernetes 1.7.0 JSON schemas into ``.tools/k8s-schemas/`` (for the chart tests).

kubernetes-validate's wheels carry schemas from 1.8 on; the 1.11.0.2 *source distribution* still
carries 1.7.0 (``v1.7.0-local-strict``: the release's definitions with unknown fields refused). The
chart tests validate what the chart renders for ``--kube-version 1.7.0`` against them, as a 1.7
server's ``kubectl --validate`` or Tiller did. The sdist is fetched with pip (the configured index),
its digest checked, and only the 1.7.0 schema directories are extracted.

Usage: ``python scripts/fetch_k8s_schemas.py [.tools/k8s-schemas]`` (idempotent).
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile

from controllerkit.cli import ExactArgumentParser

PACKAGE = "kubernetes-validate==1.11.0.2"
SDIST = "kubernetes-validate-1.11.0.2.tar.gz"
SHA256 = "bfbf505f281ea67a1431cb4d1ea7a257d93047aa3f6c2425a025ffe034695d6a"
PREFIX = "kubernetes-validate-1.11.0.2/src/kubernetes_validate/kubernetes-json-schema/"
WANTED = ("v1.7.0-local-strict/", "v1.7.0-local/")


def main(argv: list[str]) -> int:
    ap = ExactArgumentParser(prog="python scripts/fetch_k8s_schemas.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("dest", nargs="?", default=os.path.join(".tools", "k8s-schemas"),
                    help="directory for the schemas (default %(default)s)")
    dest = os.path.abspath(ap.parse_args(argv).dest)
    if os.path.exists(os.path.join(dest, "v1.7.0-local-strict", "_definitions.json")):
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                        PACKAGE, "-d", tmp], check=True)
        path = os.path.join(tmp, SDIST)
        digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
        if digest != SHA256:
            print(f"{SDIST}: sha256 {digest}, expected {SHA256}", file=sys.stderr)
            return 1
        staging = dest + ".tmp"
        with tarfile.open(path) as tar:
            members = [m for m in tar.getmembers() if m.isfile() and m.name.startswith(PREFIX)
                       and m.name[len(PREFIX):].startswith(WANTED)]
            for m in members:
                m.name = m.name[len(PREFIX):]
            tar.extractall(staging, members=members, filter="data")
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        os.replace(staging, dest) if not os.path.exists(dest) else None
    print(f"Kubernetes 1.7.0 schemas in {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
