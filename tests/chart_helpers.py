"""Shared helpers for the chart tests: run the real Helm binary, parse what it renders, validate it.

Not a test module (no ``test_`` prefix). The Helm binary is ``$TPROXY_HELM`` or the one the setup
script fetched into ``.tools/bin/helm``.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "chart"
HELM = os.environ.get("TPROXY_HELM", str(REPO / ".tools" / "bin" / "helm"))
INITIALIZER_API = "admissionregistration.k8s.io/v1alpha1"

# The flags the tests render with: a 1.13 cluster (the newest with Initializers) that serves the
# v1alpha1 admissionregistration API.
BASE_ARGS = ["--kube-version", "1.13.0", "--api-versions", INITIALIZER_API]
# Appended to render for a 1.7 cluster instead (the last --kube-version wins): extensions/v1beta1
# workloads and rbac v1beta1, the versions 1.7 serves.
K17 = ("--kube-version", "1.7.16")


def require_helm() -> str:
    if not (os.path.isfile(HELM) and os.access(HELM, os.X_OK)):
        pytest.fail(f"Helm binary not found at {HELM}: run `make setup` (scripts/fetch_helm.py) or set TPROXY_HELM")
    return HELM


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([require_helm(), *args], capture_output=True, text=True, timeout=60)
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def set_args(values: dict[str, Any] | None) -> list[str]:
    """``--set`` arguments for flat ``{"tproxy.useRBAC": True}`` values (lists and maps as ``--set-json``)."""
    out: list[str] = []
    for key, value in (values or {}).items():
        if isinstance(value, bool):
            value = "true" if value else "false"
        elif isinstance(value, (list, dict)):
            out += ["--set-json", f"{key}={json.dumps(value)}"]
            continue
        out += ["--set", f"{key}={value}"]
    return out


def render_text(
    values: dict[str, Any] | None = None,
    *extra: str,
    release: str = "tproxy",
    namespace: str = "tproxy-system",
    chart: Path = CHART,
) -> str:
    return helm("template", release, str(chart), "--namespace", namespace, *BASE_ARGS, *set_args(values), *extra).stdout


def render(values: dict[str, Any] | None = None, *extra: str, **kw) -> list[dict]:
    """Render the chart and return the objects in Helm's output order (its install order)."""
    return [d for d in yaml.safe_load_all(render_text(values, *extra, **kw)) if d]


def find(objs: list[dict], kind: str, name: str | None = None, namespace: str | None = None) -> list[dict]:
    return [
        o
        for o in objs
        if o["kind"] == kind
        and (name is None or o["metadata"]["name"] == name)
        and (namespace is None or o["metadata"].get("namespace") == namespace)
    ]


def one(objs: list[dict], kind: str, name: str | None = None, namespace: str | None = None) -> dict:
    found = find(objs, kind, name, namespace)
    assert len(found) == 1, f"expected one {kind} {name or ''} in {namespace or 'any namespace'}, got {len(found)}"
    return found[0]


def container(pod_spec: dict, name: str) -> dict:
    by_name = {c["name"]: c for c in pod_spec.get("containers", [])}
    assert name in by_name, f"no container {name!r}; have {sorted(by_name)}"
    return by_name[name]


def render_notes(values: dict[str, Any] | None, tmp_path: Path) -> str:
    """NOTES.txt as Helm would print it after install. ``helm template`` skips NOTES.txt and
    ``helm install --dry-run`` needs a cluster, so render a copy of the chart where the notes are
    wrapped into a YAML template (a ``define`` holding NOTES.txt verbatim, emitted as a JSON string)."""
    copy = tmp_path / "chart"
    shutil.copytree(CHART, copy)
    notes = copy / "templates" / "NOTES.txt"
    wrapper = '{{ define "zz.notes" }}' + notes.read_text() + '{{ end }}\nnotes: {{ include "zz.notes" . | toJson }}\n'
    (copy / "templates" / "zz-notes.yaml").write_text(wrapper)
    notes.unlink()
    text = render_text(values, "--show-only", "templates/zz-notes.yaml", chart=copy)
    return yaml.safe_load(text)["notes"]


# The installed kubernetes-validate (1.13.0) has 1.8-1.13; the other versions the chart is checked
# against are fetched by setup (scripts/fetch_k8s_schemas.py) into .tools/k8s-schemas.
SCHEMAS = REPO / ".tools" / "k8s-schemas"
SCHEMAS_17 = SCHEMAS / "v1.7.0-local-strict"
LOCAL_VERSIONS = ("1.7.0", "1.14.0", "1.15.0", "1.16.0", "1.22.0", "1.28.0", "1.37.0")
NEWEST = "1.37.0"  # the newest schemas the validator ships (kubernetes-validate 1.37.0)


def _validate_local(obj: dict, version: str) -> None:
    import jsonschema

    root = SCHEMAS / f"v{version}-local-strict"
    if not (root / "_definitions.json").exists():
        pytest.fail(f"the Kubernetes {version} schemas are missing ({root}): run `make setup` (scripts/fetch_k8s_schemas.py)")
    group, _, api_version = obj["apiVersion"].rpartition("/")
    name = f"{obj['kind'].lower()}-{group.split('.')[0] + '-' if group else ''}{api_version}.json"
    path = root / name
    if not path.exists():
        raise jsonschema.ValidationError(f"Kubernetes {version} has no schema for {obj['kind']} in {obj['apiVersion']}")
    schema = json.loads(path.read_text())
    # From 1.25 the schemas name their definitions by an https $id; resolve it to the local file.
    store = {"https://kubernetes.io/api/_definitions.json": _definitions(root)} if "$id" in schema else {}
    resolver = jsonschema.RefResolver(base_uri=f"file://{root}/", referrer=schema, store=store)
    jsonschema.validate(obj, schema, resolver=resolver)


@functools.lru_cache(maxsize=None)
def _definitions(root: Path) -> dict:
    return json.loads((root / "_definitions.json").read_text())


@functools.lru_cache(maxsize=None)
def _validate_json(text: str, version: str) -> None:
    if version in LOCAL_VERSIONS:
        return _validate_local(json.loads(text), version)
    import kubernetes_validate

    kubernetes_validate.validate(json.loads(text), version, strict=True)


def validate_strict(obj: dict, version: str) -> None:
    """``kubernetes_validate.validate(obj, version, strict=True)`` (unknown fields refused), with a
    clear error. Each call loads and resolves the schema again (~0.1 s), and the flag combinations
    render many identical objects, so an object already valid for ``version`` is not validated twice."""
    import jsonschema

    try:
        _validate_json(json.dumps(obj, sort_keys=True), version)
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path)
        raise AssertionError(
            f"{obj['kind']} {obj['metadata'].get('name')} is invalid for Kubernetes "
            f"{version} at {where or '<root>'}: {exc.message}"
        ) from None


def api_path(obj: dict, name: str | None = None) -> str:
    """The REST path of a rendered object's collection (or of ``name`` in it), for the kubesim tests."""
    from controllerkit.kube import resource_path
    from kubesim.apiserver.resources import RESOURCES

    group, _, version = obj["apiVersion"].rpartition("/")
    rt = next(r for r in RESOURCES if r.kind == obj["kind"] and r.group == group and r.version == version)
    namespace = obj["metadata"].get("namespace") if rt.namespaced else None
    return resource_path(obj["apiVersion"], rt.name, namespace, name)
