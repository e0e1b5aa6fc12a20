"""``/openapi/v2``: the OpenAPI (Swagger 2.0) document a 1.13 server publishes, in JSON and protobuf.

kubectl and Helm (client-go) validate manifests client-side against this document before they send
them: ``kubectl apply -f`` and ``helm install`` fail with "failed to download openapi" when it is
missing, and with ``unknown field "x" in io.k8s.api...`` when a manifest carries a field the schema
does not have. They ask for the protobuf form only (``Accept:
application/com.github.proto-openapi.spec.v2@v1.0+protobuf``, gnostic's ``openapi.v2.Document``);
``kubectl`` and browsers also read the JSON form.

The definitions are the Kubernetes release's own, as shipped by ``kubernetes-validate`` (its
``v1.13.0-local/_definitions.json`` is the 1.13 swagger's ``definitions`` section, with each kind's
``x-kubernetes-group-version-kind``); the two ``oneOf`` rewrites that package makes are undone so
the document reads as the real server's (``IntOrString``: string / int-or-string; ``Quantity``:
string). A 1.7 server had no ``/openapi/v2`` (it served ``/swagger.json``, which current clients
do not read), so kubesim answers 404 there, as 1.7 did; clients then need ``--validate=false`` or
``--disable-openapi-validation`` (see kubesim/README.md).
"""

from __future__ import annotations

import functools
import json
import os

import yaml

from . import protobuf

PROTO_MEDIA_TYPE = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf"
# What the server names the protobuf answer: '@' is not valid in a Content-Type (Go's mime parser
# refuses it), so kube-openapi answers the deprecated '@' request with the dotted subtype.
PROTO_CONTENT_TYPE = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf"
SCHEMA_VERSIONS = {"1.13": "v1.13.0", "1.28": "v1.28.0"}  # k8s version served -> schema directory
#: where scripts/fetch_k8s_definitions.py puts the 1.28.0 definitions (make setup runs it)
TOOLS_SCHEMAS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", ".tools", "k8s-schemas")


def schema_dir(version: str) -> str:
    if version == "v1.28.0":
        path = os.path.normpath(os.path.join(TOOLS_SCHEMAS, f"{version}-local"))
        if not os.path.exists(os.path.join(path, "_definitions.json")):
            raise RuntimeError(
                f"{path}/_definitions.json is missing: kubesim's 1.28 mode serves /openapi/v2 from "
                f"it; run `python scripts/fetch_k8s_definitions.py` (make setup does)"
            )
        return path
    import importlib.util  # locate the data without importing it (its import drags in pkg_resources)

    spec = importlib.util.find_spec("kubernetes_validate")
    if spec is None:
        raise RuntimeError("kubernetes-validate is not installed: kubesim needs its schemas for /openapi/v2")
    return os.path.join(spec.submodule_search_locations[0], "kubernetes-json-schema", f"{version}-local")


@functools.lru_cache(maxsize=None)
def document(k8s_version: str, git_version: str) -> dict | None:
    """The Swagger 2.0 document of ``k8s_version``, or None when that version did not serve one."""
    version = SCHEMA_VERSIONS.get(k8s_version)
    if version is None:
        return None
    with open(os.path.join(schema_dir(version), "_definitions.json")) as f:
        defs = json.load(f)["definitions"]
    ios = "io.k8s.apimachinery.pkg.util.intstr.IntOrString"
    if "oneOf" in defs.get(ios, {}):
        defs[ios] = {"type": "string", "format": "int-or-string", "description": defs[ios].get("description", "")}
    q = "io.k8s.apimachinery.pkg.api.resource.Quantity"
    if "oneOf" in defs.get(q, {}):
        defs[q] = {"type": "string", "description": defs[q].get("description", "")}
    return {"swagger": "2.0", "info": {"title": "Kubernetes", "version": git_version}, "paths": {}, "definitions": defs}


@functools.lru_cache(maxsize=None)
def json_bytes(k8s_version: str, git_version: str) -> bytes | None:
    doc = document(k8s_version, git_version)
    return None if doc is None else json.dumps(doc, separators=(",", ":")).encode()


@functools.lru_cache(maxsize=None)
def proto_bytes(k8s_version: str, git_version: str) -> bytes | None:
    """gnostic's ``openapi.v2.Document`` for the document (what client-go's OpenAPISchema() parses)."""
    doc = document(k8s_version, git_version)
    if doc is None:
        return None
    Document = protobuf.message_class("openapi.v2.Document")
    d = Document(swagger=doc["swagger"])
    d.info.title, d.info.version = doc["info"]["title"], doc["info"]["version"]
    d.paths.SetInParent()
    for name, schema in doc["definitions"].items():
        named = d.definitions.additional_properties.add(name=name)
        _schema(named.value, schema)
    return d.SerializeToString()


def _any(msg, value) -> None:
    msg.yaml = yaml.safe_dump(value, default_flow_style=False)


def _schema(msg, s: dict) -> None:
    """One JSON schema object -> ``openapi.v2.Schema`` (gnostic's field mapping)."""
    for key, value in s.items():
        if key == "$ref":
            msg._ref = value
        elif key in ("format", "title", "description", "pattern", "discriminator"):
            setattr(msg, key, value)
        elif key == "type":
            msg.type.value.extend([value] if isinstance(value, str) else value)
        elif key == "required":
            msg.required.extend(value)
        elif key == "enum":
            for v in value:
                _any(msg.enum.add(), v)
        elif key == "properties":
            msg.properties.SetInParent()
            for pname, pschema in value.items():
                _schema(msg.properties.additional_properties.add(name=pname).value, pschema)
        elif key == "additionalProperties":
            if isinstance(value, bool):
                msg.additional_properties.boolean = value
            else:
                _schema(msg.additional_properties.schema, value)
        elif key == "items":
            for item in value if isinstance(value, list) else [value]:
                _schema(msg.items.schema.add(), item)
        elif key == "allOf":
            for item in value:
                _schema(msg.all_of.add(), item)
        elif key == "readOnly":
            msg.read_only = bool(value)
        elif key.startswith("x-"):
            _any(msg.vendor_extension.add(name=key).value, value)


def serve(h, k8s_version: str, git_version: str) -> bool:
    """Answer ``GET /openapi/v2`` on handler ``h`` (protobuf when asked for, else JSON); False when
    ``k8s_version`` has no such endpoint (the caller answers 404)."""
    if SCHEMA_VERSIONS.get(k8s_version) is None:
        return False
    accept = [m for m, _ in protobuf.accepted(h.headers.get("Accept") or "*/*")]
    for media in accept or ["application/json"]:
        if media in (PROTO_MEDIA_TYPE, PROTO_CONTENT_TYPE):
            data, ctype = proto_bytes(k8s_version, git_version), PROTO_CONTENT_TYPE
            break
        if media in ("application/json", "*/*", "application/*"):
            data, ctype = json_bytes(k8s_version, git_version), "application/json"
            break
    else:
        data = json.dumps(
            {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Failure",
                "message": f"only the following media types are accepted: application/json, {PROTO_MEDIA_TYPE}",
                "reason": "NotAcceptable",
                "code": 406,
            }
        ).encode()
        h.kubesim_code = 406
        h.send_response(406)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)
        return True
    h.kubesim_code = 200
    h.send_response(200)
    h.send_header("Content-Type", ctype)
    h.send_header("Content-Length", str(len(data)))
    h.end_headers()
    h.wfile.write(data)
    return True
