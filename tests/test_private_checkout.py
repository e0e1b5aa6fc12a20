"""A checkout in a private directory (``/root`` is mode 0700 on Debian) works like any other.

Simulated containers that run as a non-root user (the proxy, the initializer) get the interpreter,
the virtualenv and the product through mounts of their own (kubesim.kubelet.pyimage), never through
the host's paths; a machine where that cannot work says so at start-up (kubesim.kubelet.preflight).
The last test does what a new user does: clone into a 0700 directory and run ``make demo`` there.
"""

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile

import pytest

from kubesim.kubelet import preflight, pyimage
from kubesim.kubelet.images import REPO_ROOT
from kubesim.netns import Netns

pytestmark = pytest.mark.root


@pytest.fixture
def netns():
    ns = Netns.create("tppriv")
    try:
        yield ns
    finally:
        ns.kill_all()
        ns.delete()


def _launch(netns, run_dir, code, uid=65534):
    """Run ``python3 -c code`` as ``uid`` in a simulated container, as the kubelet starts one."""
    scratch = os.path.join(run_dir, "scratch")
    os.makedirs(scratch, exist_ok=True)
    os.chmod(scratch, 0o755)
    mounts = pyimage.mounts(run_dir, "/opt/tproxy") + [{"src": REPO_ROOT, "dst": "/opt/tproxy", "ro": True}]
    spec = {
        "argv": ["python3", "-c", code],
        "cwd": "/opt/tproxy",
        "mounts": mounts,
        "netns": netns.name,
        "env": {"PATH": pyimage.bin_dir() + ":/usr/bin:/bin", **pyimage.env()},
        "scratch": scratch,
        "run_as_user": uid,
        "run_as_group": uid,
    }
    with open(os.path.join(scratch, "launch.json"), "w") as f:
        json.dump(spec, f)
    return subprocess.run(
        ["ip", "netns", "exec", netns.name, sys.executable, "-m", "kubesim.kubelet.launch", os.path.join(scratch, "launch.json")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
        env={"PATH": os.environ["PATH"], "PYTHONPATH": REPO_ROOT},
    )


def test_a_non_root_container_sees_the_runtime_at_its_own_paths_only(netns, tmp_path):
    run_dir = tempfile.mkdtemp(dir=tmp_path)  # 0700, like the kubelet's own run directory
    code = (
        "import json, sys, certifi, mitmproxy, yaml, proxy, initializer; "
        "print(json.dumps({'prefix': sys.prefix, 'base': sys.base_prefix, 'path': sys.path, "
        "'exe': sys.executable, 'proxy': proxy.__file__, 'certifi': certifi.where(), "
        "'mitmproxy': mitmproxy.__file__}))"
    )
    proc = _launch(netns, run_dir, code)
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout)
    assert seen["prefix"] == pyimage.VENV and seen["base"] == pyimage.BASE
    assert seen["proxy"] == "/opt/tproxy/proxy/__init__.py"
    assert seen["certifi"].startswith(pyimage.VENV + "/") and seen["mitmproxy"].startswith(pyimage.VENV + "/")
    host_paths = [p for p in (REPO_ROOT, pyimage.HOST_VENV, pyimage.HOST_BASE) if p not in ("/usr", "/")]
    leaked = [p for p in seen["path"] + [seen["exe"]] for h in host_paths if p == h or p.startswith(h + "/")]
    assert leaked == [], f"the container reached host paths: {leaked}"


def test_the_runtime_layer_points_the_virtualenv_at_the_mounted_interpreter(tmp_path):
    assert pyimage.in_venv(), "make test runs the suite from the checkout's virtualenv"
    layer = pyimage.build_layer(str(tmp_path), "/opt/tproxy")
    cfg = (tmp_path / layer / "pyvenv.cfg").read_text()
    assert f"home = {pyimage.BASE}/bin" in cfg and pyimage.HOST_BASE not in cfg
    mitmdump = os.path.join(layer, "bin", "mitmdump")
    assert open(mitmdump).readline().startswith(f"#!{pyimage.VENV}/bin/python")
    assert os.readlink(os.path.join(layer, "bin", "python3")) == f"{pyimage.BASE}/bin/{pyimage.INTERPRETER}"
    pths = [os.path.join(d, f) for d, _, fs in os.walk(layer) for f in fs if f.endswith(".pth")]
    assert pths and all(open(p).read() == "/opt/tproxy\n" for p in pths)
    # a second pod reuses the layer as it is
    assert pyimage.build_layer(str(tmp_path), "/opt/tproxy") == layer


def test_preflight_names_the_cause_when_containers_cannot_start(netns, tmp_path):
    # an overlay layer cannot live under a path with ':' in it: the probe fails like every pod would
    run_dir = tmp_path / "run:dir"
    run_dir.mkdir()
    with pytest.raises(preflight.PreflightError) as e:
        preflight.check(netns.name, str(run_dir))
    msg = str(e.value)
    assert "non-root container cannot start" in msg and "What to do" in msg and "overlay" in msg


def test_preflight_passes_where_containers_can_start(netns, tmp_path):
    preflight.check(netns.name, tempfile.mkdtemp(dir=tmp_path))


def _private_clone(home: str) -> str:
    """The repository as a user has it: a clone (plus this working tree's uncommitted changes)."""
    dest = os.path.join(home, "tproxy")
    if os.path.isdir(os.path.join(REPO_ROOT, ".git")):
        subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", REPO_ROOT, dest], check=True)
        diff = subprocess.run(["git", "-C", REPO_ROOT, "diff", "HEAD", "--binary"], check=True, capture_output=True).stdout
        if diff:
            subprocess.run(["git", "-C", dest, "apply", "--whitespace=nowarn"], input=diff, check=True)
        untracked = (
            subprocess.run(
                ["git", "-C", REPO_ROOT, "ls-files", "--others", "--exclude-standard", "-z"], check=True, capture_output=True
            )
            .stdout.decode()
            .split("\0")
        )
        for rel in filter(None, untracked):
            src = os.path.join(REPO_ROOT, rel)
            # new sources only: not a developer's local state (dot directories: build caches, a
            # container engine's data root with sparse files) and nothing large
            if rel.startswith(".") or "/." in rel or os.path.islink(src) or os.path.getsize(src) > 1 << 20:
                continue
            os.makedirs(os.path.dirname(os.path.join(dest, rel)), exist_ok=True)
            shutil.copy2(src, os.path.join(dest, rel))
    else:
        shutil.copytree(
            REPO_ROOT, dest, ignore=shutil.ignore_patterns(".venv", ".tools", ".images", ".kind", "__pycache__", ".*cache")
        )
    return dest


@pytest.mark.slow
def test_make_demo_passes_from_a_clone_in_a_private_home(tmp_path):
    home = tempfile.mkdtemp(prefix="home-", dir=tmp_path)
    assert stat.S_IMODE(os.stat(home).st_mode) == 0o700
    checkout = _private_clone(home)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "VIRTUAL_ENV", "PYTHON"))}
    env.pop("TPROXY_HELM", None)  # the clone's own setup fetches its own Helm, as a new user's does
    try:
        proc = subprocess.run(["make", "demo"], cwd=checkout, env=env, capture_output=True, text=True, timeout=900)
    finally:
        # nothing was opened up to make it work
        assert stat.S_IMODE(os.stat(home).st_mode) == 0o700
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "OK: the unlocked app reaches everything; the locked app gets 418" in out
    assert "storage.googleapis.com/solutions-public-assets/: 200" in out
