"""The images and the installed distribution carry the product only.

The product is the four images' packages and the shared kit. kubesim/ (the simulated cluster),
bench/ and tests/ are development tools run from the checkout. Each image's Dockerfile copies only
the product, and what it runs imports with exactly what that image installs: no kubesim, no bench,
no tests, and for the sidecar (``pip install --no-deps``) nothing beyond the standard library.
"""

import configparser
import os
import shutil
import subprocess
import sys
import sysconfig

import pytest
from setuptools import find_packages

from kubesim.kubelet.images import REPO_ROOT, ImageIndex

PRODUCT = {"controllerkit", "initializer", "podwatch", "sidecar", "proxy"}
DEV_ONLY = ("kubesim", "bench", "soak", "tests")
PACKAGING_FILES = {"setup.py", "setup.cfg", "README.md"}

#: what each image runs (Dockerfile ENTRYPOINT and the chart's commands), as modules to import
IMAGES = {
    "tproxy-initializer": [
        "initializer.__main__",
        "initializer.controller",
        "initializer.mutate",
        "initializer.config",
        "initializer.rootcerts",
        "initializer.webhook",
        "initializer.admission",
    ],
    "tproxy-podwatch": ["podwatch.__main__", "podwatch.controller", "podwatch.rules", "podwatch.identity"],
    "tproxy-proxy": [
        "proxy.core",
        "proxy.policy",
        "proxy.identity",
        "proxy.metrics",
        "proxy.request_target",
        "proxy.mitm",
        "proxy.decision",
        "proxy.audit",
        "proxy.pinning",
        "proxy.dns",
        "proxy.authority",
        "proxy.clients",
        "proxy.probe_answer",
        "proxy.options",
        "proxy.trust",
        "proxy.health",
        "proxy.policy_watch",
        "proxy.workers",
        "proxy.cpus",
        "proxy.audit_relay",
        "proxy.worker_metrics",
    ],
    "tproxy-sidecar": ["sidecar.__main__", "sidecar.lock", "sidecar.verify"],
}

#: refuses any import of the development trees, so that "absent" cannot be faked by a path accident
BLOCKER = """
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {dev!r}:
            raise ImportError(f'{{name}} is development code and is not in the image')
sys.meta_path.insert(0, _Block())
"""


def _setup_cfg():
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(REPO_ROOT, "setup.cfg"))
    return cfg


def test_the_distribution_packages_the_product_only():
    include = _setup_cfg()["options.packages.find"]["include"].split()
    found = set(find_packages(REPO_ROOT, include=include))
    assert {p.split(".")[0] for p in found} == PRODUCT
    assert not [p for p in found if p.split(".")[0] in DEV_ONLY]
    # and every subpackage of the product is included
    assert set(find_packages(REPO_ROOT, include=[f"{p}*" for p in PRODUCT])) <= found


def test_no_console_script_of_a_development_tool_is_installed():
    scripts = _setup_cfg()["options.entry_points"]["console_scripts"]
    names = {line.split("=")[0].strip() for line in scripts.strip().splitlines()}
    assert names == {"tproxy-initializer", "tproxy-podwatch", "tproxy-sidecar"}


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_each_image_copies_the_product_only(image):
    img = ImageIndex().resolve(image)
    assert img.local, f"{image}: no Dockerfile"
    sources = {os.path.relpath(src, REPO_ROOT) for src, _ in img.copies}
    assert sources <= PRODUCT | PACKAGING_FILES, sources - PRODUCT - PACKAGING_FILES
    assert PRODUCT | PACKAGING_FILES <= sources  # pip install /opt/tproxy needs all of setup.cfg's packages


def _image_tree(image: str, root) -> str:
    """The image's /opt/tproxy as its COPY lines build it."""
    img = ImageIndex().resolve(image)
    dest = os.path.join(str(root), image)
    for src, dst in img.copies:
        target = os.path.join(dest, os.path.relpath(dst, img.workdir))
        if os.path.isdir(src):
            shutil.copytree(src, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copy2(src, target)
    return dest


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_what_each_image_runs_imports_without_the_development_trees(image, tmp_path):
    tree = _image_tree(image, tmp_path)
    code = (
        BLOCKER.format(dev=set(DEV_ONLY))
        + f"sys.path.insert(0, {tree!r})\n"
        + "".join(f"import {m}\n" for m in IMAGES[image])
        + "import json; print(json.dumps({m: sys.modules[m].__file__ for m in "
        + repr(IMAGES[image])
        + "}))"
    )
    if image == "tproxy-sidecar":
        # pip install --no-deps: the base interpreter's standard library and nothing else
        python = [os.path.join(sysconfig.get_config_var("BINDIR"), "python3"), "-I", "-S"]
    else:
        python = [sys.executable, "-I"]
    proc = subprocess.run([*python, "-c", code], capture_output=True, text=True, timeout=120, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json

    files = json.loads(proc.stdout.strip().splitlines()[-1])
    assert all(f.startswith(tree + "/") for f in files.values()), files


def test_the_blocker_would_catch_a_development_import(tmp_path):
    code = BLOCKER.format(dev=set(DEV_ONLY)) + "import kubesim\n"
    proc = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)
    assert proc.returncode != 0 and "development code" in proc.stderr
