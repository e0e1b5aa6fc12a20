"""Decoding and defaulting a request's object: kind/apiVersion/namespace checks, read-only fields
dropped, the 1.7 input conversion of init-container annotations, the version's defaults and the
server-set metadata of a new object (uid, creationTimestamp, generation).
"""

from __future__ import annotations

import copy
import datetime
import uuid

from . import errors, resources
from .errors import FieldError
from .resources import ResourceType
from .routing import Request


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class DefaultingMixin:
    """From request body to a typed, defaulted object."""

    def _decode(self, rt: ResourceType, body, req: Request) -> dict:
        """Check kind/apiVersion/namespace of a request body, drop read-only fields, apply the 1.7
        input conversion of init-container annotations."""
        if not isinstance(body, dict):
            raise errors.bad_request("the object provided is unrecognized: expected a JSON object")
        kind, api_version = body.get("kind"), body.get("apiVersion")
        if api_version is not None and api_version != rt.api_version:
            raise errors.bad_request(
                f"the API version in the data ({api_version}) does not match the expected API version ({rt.api_version})"
            )
        if kind is not None and kind != rt.kind:
            raise errors.bad_request(
                f'{kind} in version "{rt.version}" cannot be handled as a {rt.kind}: '
                f"the kind in the data ({kind}) does not match the expected kind ({rt.kind})"
            )
        obj = copy.deepcopy(body)
        obj.pop("kind", None)
        obj.pop("apiVersion", None)
        meta = obj.get("metadata")
        if meta is None:
            meta = obj["metadata"] = {}
        if not isinstance(meta, dict):
            raise errors.bad_request("metadata must be an object")
        if rt.namespaced:
            ns = meta.get("namespace")
            if ns and ns != req.namespace:
                raise errors.bad_request("the namespace of the provided object does not match the namespace sent on the request")
            meta["namespace"] = req.namespace
        else:
            meta.pop("namespace", None)
        meta.pop("selfLink", None)
        if rt.convert is not None and isinstance(obj.get("spec"), (dict, type(None))):
            rt.convert.input(obj)

        def wrong(path, want="an object"):
            return errors.bad_request(
                f'{rt.kind} in version "{rt.version}" cannot be handled as a {rt.kind}: {path} must be {want}'
            )

        for key in ("spec", "status", "data"):
            if obj.get(key) is not None and not isinstance(obj[key], dict):
                raise wrong(key)
        if rt.pod_like == "template" and isinstance(obj.get("spec"), dict):
            tmpl = obj["spec"].get("template")
            if tmpl is not None:
                if not isinstance(tmpl, dict):
                    raise wrong("spec.template")
                for key in ("metadata", "spec"):
                    if tmpl.get(key) is not None and not isinstance(tmpl[key], dict):
                        raise wrong(f"spec.template.{key}")
        if self.k8s_version == "1.7" and rt.pod_like:
            target = obj if rt.pod_like == "pod" else (obj.get("spec") or {}).get("template")
            if isinstance(target, dict):
                msg = resources.pod_like_input(target)
                if msg:
                    raise errors.invalid(rt, meta.get("name", ""), [FieldError("Invalid", "metadata.annotations", msg)])
        return obj

    def _default(self, rt: ResourceType, obj: dict) -> None:
        """Apply the version's defaults; a body whose structure defeats them (a list where an object
        belongs, ...) is a 400 like a failed decode into the typed object."""
        if not rt.default:
            return
        try:
            rt.apply_defaults(obj, self.k8s_version)
        except (AttributeError, TypeError, KeyError) as e:
            raise errors.bad_request(
                f'{rt.kind} in version "{rt.version}" cannot be handled as a {rt.kind}: unexpected structure ({e})'
            ) from None

    def _fill_new_meta(self, rt: ResourceType, obj: dict) -> None:
        meta = obj["metadata"]
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = _now()
        meta.pop("resourceVersion", None)
        meta.pop("selfLink", None)
        meta.pop("deletionTimestamp", None)
        if rt.tracks_generation:
            meta["generation"] = 1
        else:
            meta.pop("generation", None)
        obj.pop("apiVersion", None)
        obj.pop("kind", None)
