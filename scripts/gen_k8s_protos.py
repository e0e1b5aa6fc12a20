#!/usr/bin/env python3
"""Regenerate ``kubesim/apiserver/k8s_protos.py``: the protobuf message definitions kubesim speaks.

Groups: core/v1, apps, extensions, batch/v1, policy/v1beta1, autoscaling/v1 (Scale), authorization,
rbac and admissionregistration: what kubesim serves. The definitions are not written by hand: they are
the ``generated.proto`` descriptors that the real
clients are compiled with. Every Go program built from k8s.io/api registers each group's
FileDescriptorProto (gzip-compressed) and gnostic's ``openapiv2/OpenAPIv2.proto`` (raw); this
script reads them out of the kubectl binary that ``make setup`` installs (``.tools/bin/kubectl``,
v1.31: k8s.io/api v0.31), so kubesim decodes exactly what kubectl and Helm encode.

Two 1.13 pieces that k8s.io/api dropped after 1.13 are added back, with the field numbers of the
1.13 ``generated.proto`` (the Initializers alpha was removed in 1.14):
- ``ObjectMeta.initializers = 16`` with ``Initializers{pending = 1, result = 2}`` and ``Initializer{name = 1}``;
- ``admissionregistration.k8s.io/v1alpha1``: ``InitializerConfiguration{metadata = 1, initializers = 2}``,
  ``Initializer{name = 1, rules = 2}``, ``Rule{apiGroups = 1, apiVersions = 2, resources = 3}``, and its List.

Usage: ``python scripts/gen_k8s_protos.py [.tools/bin/kubectl]`` (writes the module; commit it).
"""

from __future__ import annotations

import base64
import os
import re
import sys
import zlib

from google.protobuf import any_pb2, descriptor_pb2

from controllerkit.cli import ExactArgumentParser

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "kubesim", "apiserver", "k8s_protos.py")
WANTED = [
    "k8s.io/apimachinery/pkg/runtime/schema/generated.proto",
    "k8s.io/apimachinery/pkg/runtime/generated.proto",
    "k8s.io/apimachinery/pkg/util/intstr/generated.proto",
    "k8s.io/apimachinery/pkg/api/resource/generated.proto",
    "k8s.io/apimachinery/pkg/apis/meta/v1/generated.proto",
    "k8s.io/api/core/v1/generated.proto",
    "k8s.io/api/apps/v1beta1/generated.proto",
    "k8s.io/api/apps/v1beta2/generated.proto",
    "k8s.io/api/apps/v1/generated.proto",
    "k8s.io/api/extensions/v1beta1/generated.proto",
    "k8s.io/api/rbac/v1beta1/generated.proto",
    "k8s.io/api/rbac/v1/generated.proto",
    "k8s.io/api/batch/v1/generated.proto",
    "k8s.io/api/policy/v1beta1/generated.proto",
    "k8s.io/api/autoscaling/v1/generated.proto",
    "k8s.io/api/authorization/v1/generated.proto",
    "k8s.io/api/authorization/v1beta1/generated.proto",
    "k8s.io/api/admissionregistration/v1/generated.proto",
    "k8s.io/api/admissionregistration/v1beta1/generated.proto",
]
GOGO = "github.com/gogo/protobuf/gogoproto/gogo.proto"
META = "k8s.io.apimachinery.pkg.apis.meta.v1"
F = descriptor_pb2.FieldDescriptorProto


def _varint(b: bytes, i: int) -> tuple[int, int]:
    r = s = 0
    while True:
        c = b[i]
        i += 1
        r |= (c & 0x7F) << s
        s += 7
        if not c & 0x80:
            return r, i


def gzipped_descriptors(data: bytes) -> dict[str, descriptor_pb2.FileDescriptorProto]:
    found = {}
    for m in re.finditer(rb"\x1f\x8b\x08\x00\x00", data):
        try:
            raw = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data[m.start() : m.start() + 4_000_000])
            fd = descriptor_pb2.FileDescriptorProto.FromString(raw)
        except Exception:  # noqa: BLE001 - not every gzip member is a descriptor
            continue
        if fd.name.endswith(".proto"):
            found[fd.name] = fd
    return found


def raw_descriptor(data: bytes, name: str) -> descriptor_pb2.FileDescriptorProto:
    """A protoimpl raw descriptor: walk its top-level fields to find where it ends."""
    start = data.find(b"\n" + bytes([len(name)]) + name.encode())
    if start < 0:
        raise SystemExit(f"{name} not found in the binary")
    i = start
    while True:
        tag, j = _varint(data, i)
        fn, wt = tag >> 3, tag & 7
        if not 1 <= fn <= 14 or wt not in (0, 2):
            break
        n, j = _varint(data, j)
        i = j + n if wt == 2 else j
    return descriptor_pb2.FileDescriptorProto.FromString(data[start:i])


def field(msg, name, number, ftype, label=F.LABEL_OPTIONAL, type_name=""):
    f = msg.field.add(name=name, number=number, type=ftype, label=label, json_name=name)
    if type_name:
        f.type_name = type_name


def add_initializers(meta: descriptor_pb2.FileDescriptorProto) -> None:
    names = {m.name for m in meta.message_type}
    if "Initializers" not in names:
        m = meta.message_type.add(name="Initializer")
        field(m, "name", 1, F.TYPE_STRING)
        m = meta.message_type.add(name="Initializers")
        field(m, "pending", 1, F.TYPE_MESSAGE, F.LABEL_REPEATED, f".{META}.Initializer")
        field(m, "result", 2, F.TYPE_MESSAGE, type_name=f".{META}.Status")
    om = next(m for m in meta.message_type if m.name == "ObjectMeta")
    if not any(f.number == 16 for f in om.field):
        field(om, "initializers", 16, F.TYPE_MESSAGE, type_name=f".{META}.Initializers")


def admissionregistration_v1alpha1() -> descriptor_pb2.FileDescriptorProto:
    pkg = "k8s.io.api.admissionregistration.v1alpha1"
    fd = descriptor_pb2.FileDescriptorProto(
        name="k8s.io/api/admissionregistration/v1alpha1/generated.proto",
        package=pkg,
        syntax="proto2",
        dependency=["k8s.io/apimachinery/pkg/apis/meta/v1/generated.proto"],
    )
    m = fd.message_type.add(name="Initializer")
    field(m, "name", 1, F.TYPE_STRING)
    field(m, "rules", 2, F.TYPE_MESSAGE, F.LABEL_REPEATED, f".{pkg}.Rule")
    m = fd.message_type.add(name="InitializerConfiguration")
    field(m, "metadata", 1, F.TYPE_MESSAGE, type_name=f".{META}.ObjectMeta")
    field(m, "initializers", 2, F.TYPE_MESSAGE, F.LABEL_REPEATED, f".{pkg}.Initializer")
    m = fd.message_type.add(name="InitializerConfigurationList")
    field(m, "metadata", 1, F.TYPE_MESSAGE, type_name=f".{META}.ListMeta")
    field(m, "items", 2, F.TYPE_MESSAGE, F.LABEL_REPEATED, f".{pkg}.InitializerConfiguration")
    m = fd.message_type.add(name="Rule")
    for i, n in enumerate(("apiGroups", "apiVersions", "resources"), 1):
        field(m, n, i, F.TYPE_STRING, F.LABEL_REPEATED)
    return fd


def main(argv: list[str]) -> int:
    ap = ExactArgumentParser(prog="python scripts/gen_k8s_protos.py", description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "kubectl",
        nargs="?",
        default=os.path.join(ROOT, ".tools", "bin", "kubectl"),
        help="the kubectl binary to read the descriptors from (default %(default)s)",
    )
    binary = ap.parse_args(argv).kubectl
    data = open(binary, "rb").read()
    found = gzipped_descriptors(data)
    files = []
    for name in WANTED:
        fd = found[name]
        if GOGO in fd.dependency:
            fd.dependency.remove(GOGO)
        fd.ClearField("options")  # Go package options and gogo extensions: not needed
        if name.endswith("meta/v1/generated.proto"):
            add_initializers(fd)
        files.append(fd)
    files.append(admissionregistration_v1alpha1())
    files.append(descriptor_pb2.FileDescriptorProto.FromString(any_pb2.DESCRIPTOR.serialized_pb))
    oapi = raw_descriptor(data, "openapiv2/OpenAPIv2.proto")
    oapi.ClearField("options")
    files.append(oapi)
    blob = descriptor_pb2.FileDescriptorSet(file=files).SerializeToString()
    text = base64.b64encode(zlib.compress(blob, 9)).decode()
    lines = [text[i : i + 100] for i in range(0, len(text), 100)]
    with open(OUT, "w") as f:
        f.write(
            '"""Generated by scripts/gen_k8s_protos.py from the descriptors compiled into kubectl; do not edit.\n\n'
            "A zlib-compressed, base64 FileDescriptorSet: k8s.io/apimachinery and k8s.io/api generated.proto\n"
            "files (core/v1, apps, extensions, rbac), the 1.13 Initializers messages, and gnostic's\n"
            'openapiv2/OpenAPIv2.proto. Load it with kubesim.apiserver.protobuf.pool()."""\n\n'
        )
        f.write("FILES = [\n" + "".join(f"    {fd.name!r},\n" for fd in files) + "]\n\n")
        f.write("DESCRIPTOR_SET = (\n" + "".join(f'    "{l}"\n' for l in lines) + ")\n")
    print(f"wrote {OUT}: {len(files)} files, {len(blob)} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
