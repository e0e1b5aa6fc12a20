#!/usr/bin/env python3
"""Fetch the Kubernetes 1.28.0 OpenAPI definitions kubesim's 1.28 mode serves into ``.tools/k8s-schemas/``.

``python -m kubesim serve --k8s-version 1.28`` builds discovery's catalog and ``/openapi/v2`` from the
release's own definitions, as 1.13 mode does from the kubernetes-validate 1.13.0 the project installs.
The 1.28.0 definitions (``v1.28.0-local/_definitions.json``: the 1.28 swagger's ``definitions`` with
each kind's ``x-kubernetes-group-version-kind``, unknown fields allowed as the server's document does)
are in the kubernetes-validate 1.28.0 wheel; it is fetched with pip (the configured index, no
dependencies, not installed), its digest checked, and only that file extracted.

Usage: ``python scripts/fetch_k8s_definitions.py [.tools/k8s-schemas]`` (idempotent).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile

from controllerkit.cli import ExactArgumentParser

PACKAGE = "kubernetes-validate==1.28.0"
WHEEL = "kubernetes_validate-1.28.0-py3-none-any.whl"
SHA256 = "a248ff8e00f92c655b2b42aa259e663aee78d2061e2d7b96da51b678ee9b08d6"
MEMBER = "kubernetes_validate/kubernetes-json-schema/v1.28.0-local/_definitions.json"


def main(argv: list[str]) -> int:
    ap = ExactArgumentParser(prog="python scripts/fetch_k8s_definitions.py", description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "dest",
        nargs="?",
        default=os.path.join(".tools", "k8s-schemas"),
        help="directory for the definitions (default %(default)s)",
    )
    dest = os.path.abspath(ap.parse_args(argv).dest)
    target = os.path.join(dest, "v1.28.0-local", "_definitions.json")
    if os.path.exists(target):
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary", ":all:", PACKAGE, "-d", tmp], check=True
        )
        path = os.path.join(tmp, WHEEL)
        digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
        if digest != SHA256:
            print(f"{WHEEL}: sha256 {digest}, expected {SHA256}", file=sys.stderr)
            return 1
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with zipfile.ZipFile(path) as z, open(target + ".tmp", "wb") as out:
            out.write(z.read(MEMBER))
        os.replace(target + ".tmp", target)
    print(f"Kubernetes 1.28.0 definitions in {os.path.dirname(target)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
