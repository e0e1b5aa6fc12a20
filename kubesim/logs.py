"""``python -m kubesim logs``: container logs of the netns kubelet's pods, like ``kubectl logs``.

    python -m kubesim logs [-n NS] POD [-c CONTAINER] [--tail N] [-f]
    python -m kubesim logs [-n NS] --selector app=debian-app,variant=locked --tail=4

The kubelet keeps each container's stdout+stderr in ``<run dir>/pods/<ns>_<pod>_<uid>/logs/<container>.log``
(appended across restarts) next to a ``pod.json`` with the pod's labels, so logs are readable without the
API server (also after a pod was deleted, until the cluster's run directory is removed). The run
directory defaults to the most recently started kubesim cluster (``/run/kubesim/current``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import deque

from kubesim.kubelet.cluster import CURRENT_LINK


class LogsError(Exception):
    pass


def parse_selector(selector: str) -> list[tuple[str, str, str | None]]:
    """``a=b,c!=d,e`` → [(key, op, value)]; op is "=", "!=" or "exists"."""
    out = []
    for part in (p.strip() for p in selector.split(",") if p.strip()):
        if "!=" in part:
            k, v = part.split("!=", 1)
            out.append((k.strip(), "!=", v.strip()))
        elif "=" in part:
            k, v = part.split("=", 1)
            out.append((k.strip(), "=", v.strip().lstrip("=")))
        else:
            out.append((part, "exists", None))
    if not out:
        raise LogsError(f"empty selector {selector!r}")
    return out


def matches(labels: dict, sel: list[tuple[str, str, str | None]]) -> bool:
    for k, op, v in sel:
        if op == "=" and labels.get(k) != v:
            return False
        if op == "!=" and labels.get(k) == v:
            return False
        if op == "exists" and k not in labels:
            return False
    return True


def find_pods(run_dir: str, namespace: str, name: str | None = None, selector: str | None = None) -> list[dict]:
    """pod.json records (plus ``dir``) of matching pods, oldest first."""
    pods_dir = os.path.join(run_dir, "pods")
    if not os.path.isdir(pods_dir):
        raise LogsError(f"no pods under {run_dir} (is a kubesim cluster running? use --run-dir)")
    sel = parse_selector(selector) if selector else None
    found = []
    for d in os.listdir(pods_dir):
        meta_path = os.path.join(pods_dir, d, "pod.json")
        try:
            with open(meta_path) as f:
                meta = json.load(f)
        except (OSError, ValueError):
            continue
        if meta.get("namespace") != namespace:
            continue
        if name is not None and meta.get("name") != name:
            continue
        if sel is not None and not matches(meta.get("labels") or {}, sel):
            continue
        meta["dir"] = os.path.join(pods_dir, d)
        meta["mtime"] = os.path.getmtime(meta_path)
        found.append(meta)
    found.sort(key=lambda m: m["mtime"])
    return found


def pick_container(meta: dict, container: str | None) -> str:
    names = list(meta.get("containers") or [])
    inits = list(meta.get("initContainers") or [])
    if container:
        if container not in names + inits:
            raise LogsError(f"container {container} is not valid for pod {meta['name']}: choose one of: {names + inits}")
        return container
    if len(names) == 1:
        return names[0]
    raise LogsError(
        f"a container name must be specified for pod {meta['name']}, choose one of: {names} "
        f"or one of the init containers: {inits}"
    )


def tail_lines(path: str, n: int | None) -> list[str]:
    try:
        with open(path, errors="replace") as f:
            return list(deque(f, maxlen=n)) if n is not None and n >= 0 else f.readlines()
    except FileNotFoundError:
        return []


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("pod", nargs="?", help="pod name (or use --selector)")
    p.add_argument("-n", "--namespace", default="default", help="namespace (default: default)")
    p.add_argument("-l", "--selector", help="label selector, e.g. app=debian-app,variant=locked")
    p.add_argument("-c", "--container", help="container name (needed when the pod has several)")
    p.add_argument(
        "--tail", type=int, default=None, help="lines of recent log to show (default: all; with --selector: 10, like kubectl)"
    )
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new lines (Ctrl-C to stop)")
    p.add_argument("--run-dir", default=None, help=f"the cluster's run directory (default: {CURRENT_LINK})")


def run(args) -> int:
    run_dir = args.run_dir or os.environ.get("KUBESIM_RUN_DIR") or CURRENT_LINK
    try:
        if bool(args.pod) == bool(args.selector):
            raise LogsError("give exactly one of POD or --selector")
        pods = find_pods(run_dir, args.namespace, args.pod, args.selector)
        if args.pod and not pods:
            raise LogsError(f'pods "{args.pod}" not found in namespace "{args.namespace}"')
        if args.pod:
            pods = pods[-1:]
        tail = args.tail if args.tail is not None else (10 if args.selector else None)
        paths = []
        for meta in pods:
            c = pick_container(meta, args.container)
            path = os.path.join(meta["dir"], "logs", f"{c}.log")
            paths.append(path)
            sys.stdout.writelines(tail_lines(path, tail))
        sys.stdout.flush()
        if args.follow:
            offsets = {p: (os.path.getsize(p) if os.path.exists(p) else 0) for p in paths}
            try:
                while True:
                    for p in paths:
                        if os.path.exists(p) and os.path.getsize(p) > offsets[p]:
                            with open(p, errors="replace") as f:
                                f.seek(offsets[p])
                                data = f.read()
                                offsets[p] = f.tell()
                            sys.stdout.write(data)
                            sys.stdout.flush()
                    time.sleep(0.2)
            except KeyboardInterrupt:
                return 0
    except LogsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
