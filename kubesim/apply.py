"""``python -m kubesim apply -f FILE|-``: create or update objects from multi-document YAML.

Enough of ``kubectl apply`` for ``helm template … | python -m kubesim apply -f -`` and the examples:

- documents are applied in order (Helm's ``template`` output order is its install order);
- the REST path of each kind comes from the server's discovery (``/api/v1``, ``/apis/<group>/<version>``),
  so cluster-scoped kinds (ClusterRole, InitializerConfiguration…) and legacy groups just work;
- an object that does not exist is created (a Deployment create blocks while Initializers run, as in
  1.7); one that exists is replaced with the new content (its resourceVersion carried over; 409 retried);
- ``-n`` sets the namespace of namespaced objects that name none; ``--dry-run`` only prints the plan.

Every object gets one line (``deployment.extensions "x" created``). An object that fails prints why
and the others are still applied; the exit status is 1 when any failed.
"""

from __future__ import annotations

import argparse
import sys
from typing import Iterable

import yaml

from controllerkit.errors import AlreadyExists, ApiError, Conflict, NotFound, StreamError
from controllerkit.kube import Client, ConfigError


class ApplyError(Exception):
    pass


def load_documents(stream_text: str, source: str = "-") -> list[dict]:
    """Every non-empty YAML document (``kind: List`` expanded); raise ApplyError naming the bad one."""
    try:
        docs = list(yaml.safe_load_all(stream_text))
    except yaml.YAMLError as e:
        raise ApplyError(f"{source}: not valid YAML: {e}") from None
    out = []
    for i, d in enumerate(docs):
        if d is None:
            continue
        if not isinstance(d, dict):
            raise ApplyError(f"{source}: document {i + 1} is not a mapping")
        if d.get("kind") == "List" or (d.get("kind", "").endswith("List") and "items" in d):
            out.extend(x for x in d.get("items") or [] if x)
            continue
        for field in ("apiVersion", "kind"):
            if not d.get(field):
                raise ApplyError(f"{source}: document {i + 1} has no {field}")
        if not (d.get("metadata") or {}).get("name"):
            raise ApplyError(f"{source}: document {i + 1} ({d['kind']}) has no metadata.name")
        out.append(d)
    return out


class Discovery:
    """kind → (plural resource, namespaced) per group/version, from the server, cached."""

    def __init__(self, client: Client):
        self.client = client
        self._cache: dict[str, dict[str, tuple[str, bool]]] = {}

    def resource(self, api_version: str, kind: str) -> tuple[str, bool]:
        if api_version not in self._cache:
            path = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
            try:
                doc = self.client.get(path)
            except NotFound:
                raise ApplyError(f'the server does not serve apiVersion "{api_version}"') from None
            self._cache[api_version] = {
                r["kind"]: (r["name"], bool(r.get("namespaced")))
                for r in doc.get("resources", [])
                if "/" not in r.get("name", "")
            }
        try:
            return self._cache[api_version][kind]
        except KeyError:
            raise ApplyError(f'no kind "{kind}" is registered for version "{api_version}"') from None


def object_path(disc: Discovery, obj: dict, default_ns: str) -> tuple[str, str, str]:
    """(collection path, object path, namespace or "") of one manifest."""
    api_version, kind, name = obj["apiVersion"], obj["kind"], obj["metadata"]["name"]
    resource, namespaced = disc.resource(api_version, kind)
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    if namespaced:
        ns = obj["metadata"].get("namespace") or default_ns
        obj["metadata"]["namespace"] = ns
        coll = f"{base}/namespaces/{ns}/{resource}"
    else:
        ns = ""
        coll = f"{base}/{resource}"
    return coll, f"{coll}/{name}", ns


def describe(obj: dict) -> str:
    group = obj["apiVersion"].split("/")[0] if "/" in obj["apiVersion"] else ""
    kind = obj["kind"].lower() + (f".{group}" if group else "")
    return f'{kind} "{obj["metadata"]["name"]}"'


def apply_object(client: Client, disc: Discovery, obj: dict, default_ns: str = "default") -> str:
    """Create or replace one object; return "created" | "configured" | "unchanged"."""
    coll, path, _ns = object_path(disc, obj, default_ns)
    try:
        client.create(coll, obj)
        return "created"
    except AlreadyExists:
        pass
    for _ in range(5):
        cur = client.get(path)
        new = dict(obj)
        meta = dict(new.get("metadata") or {})
        meta["resourceVersion"] = cur["metadata"].get("resourceVersion")
        new["metadata"] = meta
        if obj.get("kind") in ("Service",) and "clusterIP" in (cur.get("spec") or {}):
            new.setdefault("spec", {}).setdefault("clusterIP", cur["spec"]["clusterIP"])
        try:
            client.replace(path, new)
            return "configured"
        except Conflict:
            continue
    raise ApplyError(f"{describe(obj)}: kept conflicting with concurrent writers")


def apply_documents(client: Client, docs: Iterable[dict], *, namespace: str = "default", out=sys.stdout, err=sys.stderr) -> int:
    """Apply in order; one line per object; returns the number of failures."""
    disc = Discovery(client)
    failures = 0
    for obj in docs:
        try:
            result = apply_object(client, disc, obj, namespace)
            print(f"{describe(obj)} {result}", file=out, flush=True)
        except (ApplyError, ApiError, StreamError) as e:
            failures += 1
            print(f"error: {describe(obj)}: {e}", file=err, flush=True)
    return failures


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-f",
        "--filename",
        action="append",
        required=True,
        metavar="FILE",
        help="YAML file with one or more documents; '-' reads stdin (repeatable)",
    )
    p.add_argument(
        "-n", "--namespace", default="default", help="namespace for namespaced objects that name none (default: default)"
    )
    p.add_argument(
        "--kubeconfig",
        help="kubeconfig of the API server (default: $KUBECONFIG, then the current kubesim cluster's admin kubeconfig)",
    )
    p.add_argument("--dry-run", action="store_true", help="parse and print what would be applied")


def default_kubeconfig() -> str | None:
    import os
    from kubesim.kubelet.cluster import CURRENT_LINK

    if os.environ.get("KUBECONFIG"):
        return None
    candidate = os.path.join(CURRENT_LINK, "admin.kubeconfig")
    return candidate if os.path.exists(candidate) else None


def run(args) -> int:
    docs: list[dict] = []
    try:
        for fn in args.filename:
            if fn == "-":
                text, src = sys.stdin.read(), "<stdin>"
            else:
                try:
                    with open(fn) as f:
                        text, src = f.read(), fn
                except OSError as e:
                    raise ApplyError(f"{fn}: {e.strerror}") from None
            docs.extend(load_documents(text, src))
    except ApplyError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.dry_run:
        for d in docs:
            print(f"{describe(d)} (dry run)")
        return 0
    try:
        client = Client.from_config(args.kubeconfig or default_kubeconfig())
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 1 if apply_documents(client, docs, namespace=args.namespace) else 0
