"""Container launcher: the first process of every simulated container.

The kubelet starts ``ip netns exec <pod netns> python -m kubesim.kubelet.launch SPEC.json``.
``ip netns exec`` has already put us in the pod's network namespace and in a fresh mount namespace
whose propagation is slave (nothing we mount leaks to the host), with ``/etc/netns/<ns>/*`` bound over
``/etc/*``. Here we finish building the container's view of the filesystem and exec its command:

1. Mount points that do not exist on the host (``/opt/tproxy``, ``/etc/tproxy/policy``,
   ``/var/run/secrets/...``) are created *without touching the host*: the nearest existing ancestor
   directory is covered by an overlayfs whose lower layer is itself and whose upper layer lives in the
   kubelet's run directory, so the new directories exist only in this mount namespace. A mount point
   directly under ``/`` (``/data``) makes the container chroot into a tmpfs that mirrors ``/`` first.
2. The image's Python runtime (:mod:`kubesim.kubelet.pyimage`: the interpreter at
   ``/opt/kubesim/python``, the virtualenv as a read-only overlay at ``/opt/kubesim/venv``), then
   volumes, the image's ``COPY`` sources and the service-account token are mounted in the order given
   (read-only where asked). A container reads nothing through the host's own paths, so a checkout in a
   private directory (``/root``, mode 0700) serves a non-root container user as well as any other.
3. Capabilities: a non-privileged container loses everything outside Docker's default set from its
   bounding set (so ``CAP_NET_ADMIN`` is gone after ``execve``: ``iptables`` fails as in a real pod).
   ``runAsUser``/``runAsGroup`` switch the user last (an unprivileged user has no capabilities anyway).
4. ``execvpe`` the container's argv with its environment and working directory.

Any failure prints one clear line on stderr (it lands in the container log) and exits 127.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys

MS_RDONLY = 1
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
PR_CAPBSET_DROP = 24

#: Docker's default capability set (what a non-privileged container keeps), by number
DEFAULT_CAPS = {
    "CAP_CHOWN": 0,
    "CAP_DAC_OVERRIDE": 1,
    "CAP_FOWNER": 3,
    "CAP_FSETID": 4,
    "CAP_KILL": 5,
    "CAP_SETGID": 6,
    "CAP_SETUID": 7,
    "CAP_SETPCAP": 8,
    "CAP_NET_BIND_SERVICE": 10,
    "CAP_NET_RAW": 13,
    "CAP_SYS_CHROOT": 18,
    "CAP_MKNOD": 27,
    "CAP_AUDIT_WRITE": 29,
    "CAP_SETFCAP": 31,
}
ALL_CAPS = {
    **DEFAULT_CAPS,
    "CAP_DAC_READ_SEARCH": 2,
    "CAP_LINUX_IMMUTABLE": 9,
    "CAP_NET_BROADCAST": 11,
    "CAP_NET_ADMIN": 12,
    "CAP_IPC_LOCK": 14,
    "CAP_IPC_OWNER": 15,
    "CAP_SYS_MODULE": 16,
    "CAP_SYS_RAWIO": 17,
    "CAP_SYS_PTRACE": 19,
    "CAP_SYS_PACCT": 20,
    "CAP_SYS_ADMIN": 21,
    "CAP_SYS_BOOT": 22,
    "CAP_SYS_NICE": 23,
    "CAP_SYS_RESOURCE": 24,
    "CAP_SYS_TIME": 25,
    "CAP_SYS_TTY_CONFIG": 26,
    "CAP_LEASE": 28,
    "CAP_AUDIT_CONTROL": 30,
    "CAP_MAC_OVERRIDE": 32,
    "CAP_MAC_ADMIN": 33,
    "CAP_SYSLOG": 34,
    "CAP_WAKE_ALARM": 35,
    "CAP_BLOCK_SUSPEND": 36,
    "CAP_AUDIT_READ": 37,
    "CAP_PERFMON": 38,
    "CAP_BPF": 39,
    "CAP_CHECKPOINT_RESTORE": 40,
}

_libc = ctypes.CDLL(None, use_errno=True)


class LaunchError(Exception):
    pass


def _mount(src: str | None, dst: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    rc = _libc.mount(
        src.encode() if src else None,
        dst.encode(),
        fstype.encode() if fstype else None,
        ctypes.c_ulong(flags),
        data.encode() if data else None,
    )
    if rc != 0:
        err = ctypes.get_errno()
        raise LaunchError(f"mount {src or fstype} on {dst}: {os.strerror(err)}")


def _nearest_existing(path: str) -> str:
    p = path
    while not os.path.lexists(p):
        p = os.path.dirname(p)
    return p


def needs_private_root(mounts: list[dict]) -> bool:
    """True when a mount point would have to be created directly under ``/``."""
    return any(not os.path.lexists(m["dst"]) and _nearest_existing(os.path.dirname(m["dst"])) == "/" for m in mounts)


def enter_private_root(scratch: str) -> None:
    """chroot into a tmpfs whose top-level entries mirror the host's ``/`` (recursive binds, symlinks
    copied), so that new top-level directories (``/data``) exist for this container only."""
    root = os.path.join(scratch, "rootfs")
    os.makedirs(root, exist_ok=True)
    _mount("tmpfs", root, "tmpfs", 0, "mode=755")
    for name in sorted(os.listdir("/")):
        src, dst = "/" + name, os.path.join(root, name)
        if os.path.islink(src):
            os.symlink(os.readlink(src), dst)
        elif os.path.isdir(src):
            os.mkdir(dst)
            _mount(src, dst, None, MS_BIND | MS_REC)
        else:
            open(dst, "w").close()
            _mount(src, dst, None, MS_BIND)
    os.chroot(root)
    os.chdir("/")


def prepare_mount_points(mounts: list[dict], scratch: str, netns: str | None, chrooted: bool = False) -> None:
    """Create every missing destination inside overlays (never on the host's filesystem)."""
    n = 0
    overlaid: list[str] = []
    for m in mounts:
        dst = m["dst"]
        if os.path.lexists(dst):
            continue
        anc = os.path.realpath(_nearest_existing(os.path.dirname(dst)))
        if anc == "/":
            if not chrooted:
                raise LaunchError(f"cannot create {dst}: no private root")
            # the private root is a tmpfs: top-level directories are created in it directly
        elif anc not in overlaid:
            upper, work = os.path.join(scratch, f"ov{n}", "upper"), os.path.join(scratch, f"ov{n}", "work")
            n += 1
            os.makedirs(upper, exist_ok=True)
            os.makedirs(work, exist_ok=True)
            _mount("overlay", anc, "overlay", 0, f"lowerdir={anc},upperdir={upper},workdir={work}")
            overlaid.append(anc)
            if netns and (anc == "/etc" or anc.startswith("/etc/")):
                rebind_netns_etc(netns)
        if m.get("file"):
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            open(dst, "a").close()
        else:
            os.makedirs(dst, exist_ok=True)


def rebind_netns_etc(netns: str) -> None:
    """Redo what ``ip netns exec`` did (bind /etc/netns/NS/* over /etc/*): an overlay on /etc hid it."""
    d = f"/etc/netns/{netns}"
    if not os.path.isdir(d):
        return
    for fn in os.listdir(d):
        target = os.path.join("/etc", fn)
        if os.path.lexists(target):
            _mount(os.path.join(d, fn), target, None, MS_BIND)


def mount_overlay(lowers: list[str], dst: str) -> None:
    """A read-only overlay of ``lowers`` (first on top) at ``dst``: the image's Python runtime."""
    for d in lowers:
        if not os.path.isdir(d):
            raise LaunchError(f"overlay layer {d} for {dst} does not exist")
        if ":" in d or "," in d:
            raise LaunchError(f"overlay layer {d} for {dst}: a path with ':' or ',' cannot be an overlay layer")
    _mount("overlay", dst, "overlay", MS_RDONLY, "lowerdir=" + ":".join(lowers))


def bind_all(mounts: list[dict]) -> None:
    for m in mounts:
        if "overlay" in m:
            mount_overlay(m["overlay"], m["dst"])
            continue
        src, dst = m["src"], m["dst"]
        if not os.path.exists(src):
            raise LaunchError(f"mount source {src} for {dst} does not exist")
        if os.path.isdir(src) and not os.path.isdir(dst):
            raise LaunchError(f"cannot mount directory {src} over non-directory {dst}")
        _mount(src, dst, None, MS_BIND | MS_REC)
        if m.get("ro"):
            _mount(None, dst, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_REC)


def drop_capabilities(keep: set[str]) -> None:
    for name, num in ALL_CAPS.items():
        if name in keep:
            continue
        if _libc.prctl(PR_CAPBSET_DROP, num, 0, 0, 0) != 0:
            err = ctypes.get_errno()
            if err != 22:  # EINVAL: capability unknown to this kernel
                raise LaunchError(f"prctl(PR_CAPBSET_DROP, {name}): {os.strerror(err)}")


def launch(spec: dict) -> None:
    mounts = spec.get("mounts", [])
    chrooted = needs_private_root(mounts)
    if chrooted:
        enter_private_root(spec["scratch"])
    # destinations inside an overlay (a file of the image's runtime) exist once that overlay is
    # mounted; every other missing one is created before anything is mounted, since a later overlay
    # on an ancestor would hide what was already mounted below it
    overlays = [m["dst"].rstrip("/") + "/" for m in mounts if "overlay" in m]
    outside = [m for m in mounts if not any(m["dst"].startswith(o) for o in overlays)]
    prepare_mount_points(outside, spec["scratch"], spec.get("netns"), chrooted)
    bind_all(mounts)
    if not spec.get("privileged"):
        keep = set(DEFAULT_CAPS) | {("CAP_" + c.upper()).replace("CAP_CAP_", "CAP_") for c in spec.get("cap_add", [])}
        keep -= {("CAP_" + c.upper()).replace("CAP_CAP_", "CAP_") for c in spec.get("cap_drop", [])}
        drop_capabilities(keep)
    uid, gid = spec.get("run_as_user"), spec.get("run_as_group")
    if uid is not None:
        if spec.get("run_as_non_root") and int(uid) == 0:
            raise LaunchError("container has runAsNonRoot and runAsUser 0")
        os.setgroups([])
        os.setgid(int(gid if gid is not None else uid))
        os.setuid(int(uid))
    elif spec.get("run_as_non_root"):
        raise LaunchError("container has runAsNonRoot and the image will run as root")
    cwd = spec.get("cwd") or "/"
    try:
        os.chdir(cwd)
    except OSError as e:
        raise LaunchError(f"working directory {cwd}: {e.strerror}") from None
    argv = spec["argv"]
    if not argv:
        raise LaunchError("no command: the manifest has no command and the image no ENTRYPOINT")
    try:
        os.execvpe(argv[0], argv, spec.get("env", {}))
    except OSError as e:
        raise LaunchError(f"exec {argv[0]}: {e.strerror}") from None


def main(argv=None) -> int:
    from controllerkit.cli import ExactArgumentParser  # standard library only, like this module

    p = ExactArgumentParser(prog="python -m kubesim.kubelet.launch", description=__doc__.split("\n\n")[0])
    p.add_argument("spec", metavar="SPEC.json", help="the launch spec the kubelet wrote for this container")
    args = p.parse_args(argv)
    try:
        with open(args.spec) as f:
            spec = json.load(f)
    except (OSError, ValueError) as e:
        print(f"kubesim: container start failed: launch spec {args.spec}: {e}", file=sys.stderr, flush=True)
        return 127
    try:
        launch(spec)
    except LaunchError as e:
        print(f"kubesim: container start failed: {e}", file=sys.stderr, flush=True)
        return 127
    return 127  # not reached: exec replaced us


if __name__ == "__main__":
    sys.exit(main())
