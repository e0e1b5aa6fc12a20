"""The Kubernetes protobuf wire format (``application/vnd.kubernetes.protobuf``), as the real server speaks it.

A body is the 4-byte magic ``k8s\\x00`` followed by a ``runtime.Unknown`` message: ``typeMeta``
(apiVersion, kind), ``raw`` (the object's own message, e.g. ``k8s.io.api.core.v1.Secret``),
``contentEncoding`` and ``contentType`` (both empty). Client-go's typed clients (Helm's release
storage, kubectl's typed calls) send and prefer this form.

The wire format is the maintained ``protobuf`` runtime's; the message definitions are the real
``generated.proto`` descriptors compiled into the clients (see ``scripts/gen_k8s_protos.py`` and
``k8s_protos.py``). What this module adds is the mapping between a message and the object's JSON
form, which follows the Go types' JSON encoding: ``Time`` as RFC 3339 seconds, ``MicroTime`` with
microseconds, ``IntOrString`` as a number or a string, ``Quantity`` as its string, ``RawExtension``
as embedded JSON, ``bytes`` as base64, map entries as objects. Go's ``omitempty`` drops zero
scalars; fields that are pointers in Go (``replicas``, ``defaultMode``, ``privileged`` ...) keep
an explicit zero, as the pointer did.
"""

from __future__ import annotations

import base64
import datetime
import json
import zlib

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import FieldDescriptor as FD
from google.protobuf.message import DecodeError

from .errors import APIError

MEDIA_TYPE = "application/vnd.kubernetes.protobuf"
MAGIC = b"k8s\x00"
META = "k8s.io.apimachinery.pkg.apis.meta.v1"
UNKNOWN = "k8s.io.apimachinery.pkg.runtime.Unknown"
JSON_ONLY_415 = (
    "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml"
)

# Go pointer fields (``*int32``/``*bool``/``*int64``): an explicit zero or false is meaningful.
POINTER_FIELDS = frozenset(
    {
        "replicas",
        "revisionHistoryLimit",
        "progressDeadlineSeconds",
        "terminationGracePeriodSeconds",
        "activeDeadlineSeconds",
        "automountServiceAccountToken",
        "defaultMode",
        "mode",
        "optional",
        "runAsUser",
        "runAsGroup",
        "runAsNonRoot",
        "privileged",
        "readOnlyRootFilesystem",
        "allowPrivilegeEscalation",
        "fsGroup",
        "priority",
        "shareProcessNamespace",
        "enableServiceLinks",
        "expirationSeconds",
        "partition",
        "collisionCount",
        "gracePeriodSeconds",
        "orphanDependents",
        "propagationPolicy",
        "controller",
        "blockOwnerDeletion",
        "deletionGracePeriodSeconds",
        "remainingItemCount",
        "healthCheckNodePort",
        "publishNotReadyAddresses",
        "immutable",
        "ttlSecondsAfterFinished",
    }
)

_pool = None
_classes: dict[str, type] = {}


def pool() -> descriptor_pool.DescriptorPool:
    """A private descriptor pool with the Kubernetes and OpenAPI v2 messages (built once)."""
    global _pool
    if _pool is None:
        from .k8s_protos import DESCRIPTOR_SET

        fds = descriptor_pb2.FileDescriptorSet.FromString(zlib.decompress(base64.b64decode("".join(DESCRIPTOR_SET))))
        p = descriptor_pool.DescriptorPool()
        for fd in fds.file:
            p.Add(fd)
        _pool = p
    return _pool


def message_class(full_name: str) -> type:
    cls = _classes.get(full_name)
    if cls is None:
        cls = _classes[full_name] = message_factory.GetMessageClass(pool().FindMessageTypeByName(full_name))
    return cls


def _package(api_version: str) -> str | None:
    group, _, version = api_version.rpartition("/")
    if not group:
        return "k8s.io.api.core.v1"
    if group.endswith(".k8s.io"):
        group = group[: -len(".k8s.io")]
    group = {"rbac.authorization": "rbac"}.get(group, group)
    if "." in group:
        return None
    return f"k8s.io.api.{group}.{version}"


def message_name(api_version: str, kind: str) -> str | None:
    """The message for ``apiVersion``/``kind``, or None when it has no protobuf form (CRDs, unknown kinds)."""
    candidates = []
    if api_version == "v1" and kind in ("Status", "DeleteOptions", "WatchEvent", "List"):
        candidates.append(f"{META}.{kind}")
    if kind in ("DeleteOptions", "Status") and api_version.endswith("/v1"):
        candidates.append(f"{META}.{kind}")  # options/status sent with a group's version
    pkg = _package(api_version)
    if pkg:
        candidates.append(f"{pkg}.{kind}")
    for name in candidates:
        try:
            pool().FindMessageTypeByName(name)
            return name
        except KeyError:
            continue
    return None


# ---- message -> JSON form ----------------------------------------------------------------------------


def _time(msg, micro: bool):
    if not msg.seconds and not msg.nanos:
        return None
    t = datetime.datetime.fromtimestamp(msg.seconds, datetime.timezone.utc)
    if micro:
        return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{msg.nanos // 1000:06d}Z"
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def _go_duration(ns: int) -> str:
    if ns == 0:
        return "0s"
    neg, ns = ns < 0, abs(ns)
    h, rem = divmod(ns, 3600 * 10**9)
    m, rem = divmod(rem, 60 * 10**9)
    s = rem / 1e9
    out = (f"{h}h" if h else "") + (f"{m}m" if h or m else "") + (f"{s:g}s")
    return ("-" if neg else "") + out


def _special_to_json(msg):
    name = msg.DESCRIPTOR.full_name
    if name == f"{META}.Time":
        return True, _time(msg, False)
    if name == f"{META}.MicroTime":
        return True, _time(msg, True)
    if name == f"{META}.Duration":
        return True, _go_duration(msg.duration)
    if name == "k8s.io.apimachinery.pkg.util.intstr.IntOrString":
        return True, _key(msg.strVal) if msg.type == 1 else msg.intVal
    if name == "k8s.io.apimachinery.pkg.api.resource.Quantity":
        return True, _key(msg.string)
    if name in ("k8s.io.apimachinery.pkg.runtime.RawExtension", f"{META}.FieldsV1"):
        raw = msg.raw if name.endswith("RawExtension") else msg.Raw
        if not raw:
            return True, None
        try:
            return True, json.loads(raw)
        except ValueError:
            return True, decode_object(raw)[2] if raw.startswith(MAGIC) else None
    return False, None


def _repeated(fd) -> bool:
    return fd.is_repeated if hasattr(fd, "is_repeated") else fd.label == FD.LABEL_REPEATED


def _scalar_to_json(fd, v):
    if fd.type == FD.TYPE_BYTES:
        return base64.b64encode(v).decode()
    if isinstance(v, bytes):  # the runtime hands back a proto2 string that is not UTF-8 as bytes
        raise ValueError(f"field {fd.name}: invalid UTF-8 in a string")
    return v


def _key(k):
    """A map key or a special type's string: the runtime returns bytes when it is not UTF-8."""
    if isinstance(k, bytes):
        raise ValueError("invalid UTF-8 in a string")
    return k


def to_json(msg) -> dict:
    """The JSON form of a Kubernetes message (see the module docstring for the rules)."""
    out = {}
    for fd, value in msg.ListFields():
        name = fd.name
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            vfd = fd.message_type.fields_by_name["value"]
            if vfd.message_type is not None:
                out[name] = {_key(k): _value_to_json(vfd, v) for k, v in value.items()}
            else:
                out[name] = {_key(k): _scalar_to_json(vfd, v) for k, v in value.items()}
            continue
        if _repeated(fd):
            out[name] = [_value_to_json(fd, v) for v in value]
            continue
        if fd.message_type is None and not value and name not in POINTER_FIELDS:
            continue  # omitempty on a Go value field
        v = _value_to_json(fd, value)
        if v is None:
            continue
        out[name] = v
    return out


def _value_to_json(fd, v):
    if fd.message_type is None:
        return _scalar_to_json(fd, v)
    special, value = _special_to_json(v)
    return value if special else to_json(v)


# ---- JSON form -> message ----------------------------------------------------------------------------


def _parse_time(s: str) -> tuple[int, int]:
    s = s.strip()
    if s.endswith("Z"):
        s = s[:-1] + "+00:00"
    t = datetime.datetime.fromisoformat(s)
    if t.tzinfo is None:
        t = t.replace(tzinfo=datetime.timezone.utc)
    return int(t.timestamp() // 1), t.microsecond * 1000


def _fill_special(msg, value) -> bool:
    name = msg.DESCRIPTOR.full_name
    if name in (f"{META}.Time", f"{META}.MicroTime"):
        if value:
            msg.seconds, msg.nanos = _parse_time(str(value))
            if name.endswith(".Time"):
                msg.nanos = 0
        return True
    if name == "k8s.io.apimachinery.pkg.util.intstr.IntOrString":
        if isinstance(value, str):
            msg.type, msg.strVal = 1, value
        else:
            msg.type, msg.intVal = 0, int(value)
        return True
    if name == "k8s.io.apimachinery.pkg.api.resource.Quantity":
        msg.string = str(value)
        return True
    if name == "k8s.io.apimachinery.pkg.runtime.RawExtension":
        msg.raw = json.dumps(value, separators=(",", ":")).encode()
        return True
    if name == f"{META}.FieldsV1":
        msg.Raw = json.dumps(value, separators=(",", ":")).encode()
        return True
    if name == f"{META}.Duration":
        from controllerkit.durations import parse_go_duration

        msg.duration = int(round((parse_go_duration(str(value)) or 0) * 1e9))
        return True
    return False


def _scalar_from_json(fd, v):
    if fd.type == FD.TYPE_BYTES:
        return base64.b64decode(v) if isinstance(v, str) else bytes(v)
    if fd.type == FD.TYPE_STRING:
        return v if isinstance(v, str) else json.dumps(v)
    if fd.type == FD.TYPE_BOOL:
        return bool(v)
    if fd.type in (FD.TYPE_DOUBLE, FD.TYPE_FLOAT):
        return float(v)
    return int(v)


def from_json(msg, obj: dict):
    """Fill ``msg`` from the object's JSON form; keys the message does not have are dropped, as a
    Go struct drops unknown JSON fields."""
    if _fill_special(msg, obj):
        return msg
    if not isinstance(obj, dict):
        raise ValueError(f"{msg.DESCRIPTOR.name}: expected an object, got {type(obj).__name__}")
    fields = msg.DESCRIPTOR.fields_by_name
    for key, value in obj.items():
        fd = fields.get(key)
        if fd is None or value is None:
            continue
        target = getattr(msg, key)
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            vfd = fd.message_type.fields_by_name["value"]
            for k, v in value.items():
                if vfd.message_type is not None:
                    from_json(target[k], v)
                else:
                    target[k] = _scalar_from_json(vfd, v)
        elif _repeated(fd):
            for v in value:
                if fd.message_type is not None:
                    from_json(target.add(), v)
                else:
                    target.append(_scalar_from_json(fd, v))
        elif fd.message_type is not None:
            target.SetInParent()
            from_json(target, value)
        else:
            setattr(msg, key, _scalar_from_json(fd, value))
    return msg


# ---- the envelope ------------------------------------------------------------------------------------


def decode_object(data: bytes) -> tuple[str, str, dict]:
    """``k8s\\x00`` + runtime.Unknown -> (apiVersion, kind, JSON form with apiVersion/kind set).

    Raises APIError 400 for data that is not a protobuf object and 415 for a kind that has no
    protobuf form."""
    if not data:
        raise APIError(400, "BadRequest", "the object provided is unrecognized: empty data")
    if not data.startswith(MAGIC):
        raise APIError(
            400,
            "BadRequest",
            "the object provided is unrecognized: provided data does not appear "
            "to be a protobuf message, expected prefix [107 56 115 0]",
        )
    unknown = message_class(UNKNOWN)()
    try:
        unknown.ParseFromString(data[len(MAGIC) :])
    except DecodeError as e:
        raise APIError(400, "BadRequest", f"the object provided is unrecognized: protobuf envelope: {e}") from None
    api_version, kind = unknown.typeMeta.apiVersion, unknown.typeMeta.kind
    if isinstance(api_version, bytes) or isinstance(kind, bytes) or not isinstance(unknown.contentEncoding, str):
        raise APIError(
            400, "BadRequest", "the object provided is unrecognized: invalid UTF-8 in the protobuf envelope's typeMeta"
        )
    if not kind or not api_version:
        raise APIError(
            400,
            "BadRequest",
            "the object provided is unrecognized: Object 'Kind' is missing in the protobuf envelope (runtime.Unknown.typeMeta)",
        )
    if unknown.contentEncoding:
        raise APIError(415, "UnsupportedMediaType", f"unsupported content encoding {unknown.contentEncoding!r}")
    name = message_name(api_version, kind)
    if name is None:
        raise APIError(
            415,
            "UnsupportedMediaType",
            f'{JSON_ONLY_415}: no protobuf form is registered for kind "{kind}" in version "{api_version}"',
        )
    msg = message_class(name)()
    try:
        msg.ParseFromString(unknown.raw)
    except DecodeError as e:
        raise APIError(
            400,
            "BadRequest",
            f'the object provided is unrecognized: {kind} in version "{api_version}" cannot be decoded from protobuf: {e}',
        ) from None
    obj = {"kind": kind, "apiVersion": api_version}
    try:
        obj.update(to_json(msg))
    except (UnicodeDecodeError, ValueError, OverflowError, OSError) as e:  # not UTF-8, a time out of range...
        raise APIError(
            400,
            "BadRequest",
            f'the object provided is unrecognized: {kind} in version "{api_version}" cannot be decoded from protobuf: {e}',
        ) from None
    return api_version, kind, obj


def encode_object(obj: dict) -> bytes | None:
    """The protobuf form of a JSON object carrying ``apiVersion``/``kind``; None when the kind has none."""
    api_version, kind = obj.get("apiVersion"), obj.get("kind")
    if not api_version or not kind:
        return None
    name = message_name(api_version, kind)
    if name is None:
        return None
    msg = from_json(message_class(name)(), {k: v for k, v in obj.items() if k not in ("apiVersion", "kind")})
    unknown = message_class(UNKNOWN)()
    unknown.typeMeta.apiVersion, unknown.typeMeta.kind = api_version, kind
    unknown.raw = msg.SerializeToString()
    return MAGIC + unknown.SerializeToString()


# ---- content negotiation -----------------------------------------------------------------------------


def accepted(accept: str | None) -> list[tuple[str, dict]]:
    """The Accept header as ``(media type, params)`` in the client's order of preference (q honoured)."""
    out = []
    for i, part in enumerate((accept or "").split(",")):
        bits = [b.strip() for b in part.split(";")]
        if not bits[0]:
            continue
        params = dict(b.split("=", 1) for b in bits[1:] if "=" in b)
        try:
            q = float(params.pop("q", "1"))
        except ValueError:
            q = 1.0
        if q > 0:
            out.append((-q, i, bits[0].lower(), params))
    return [(m, p) for _, _, m, p in sorted(out)]


def prefers_protobuf(accept: str | None) -> bool | None:
    """True when the client's first acceptable type is protobuf, False for JSON (or anything JSON
    can answer), None when nothing kubesim writes is acceptable (406)."""
    if not accept:
        return False
    for media, params in accepted(accept):
        if params.get("as"):
            continue  # Table / PartialObjectMetadata: kubesim answers the plain object instead
        if media == MEDIA_TYPE:
            return True
        if media in ("application/json", "*/*", "application/*", "application/yaml"):
            return False
    if any(params.get("as") for _, params in accepted(accept)):
        return False
    return None


WATCH_MEDIA_TYPE = MEDIA_TYPE + ";stream=watch"


def watch_frame(event_type: str, obj: dict) -> bytes:
    """One protobuf watch event as the server streams it: a 4-byte big-endian length, then
    ``k8s\\0`` + runtime.Unknown{v1 WatchEvent} whose ``object`` is the object's own envelope."""
    inner = encode_object(obj)
    if inner is None:
        inner = json.dumps(obj, separators=(",", ":")).encode()
    ev = message_class(f"{META}.WatchEvent")(type=event_type)
    ev.object.raw = inner
    unknown = message_class(UNKNOWN)()
    unknown.typeMeta.apiVersion, unknown.typeMeta.kind = "v1", "WatchEvent"
    unknown.raw = ev.SerializeToString()
    data = MAGIC + unknown.SerializeToString()
    return len(data).to_bytes(4, "big") + data
