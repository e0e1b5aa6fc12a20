"""kubesim speaks application/vnd.kubernetes.protobuf like a real API server (issue 14, item 1 and 7).

Request bodies are built with the generated message classes directly (not with kubesim's own
JSON-to-message mapping), wrapped in the ``k8s\\x00`` + runtime.Unknown envelope, sent over HTTPS,
and read back as JSON: the JSON form must be the one a JSON client would have stored.
"""

from __future__ import annotations

import base64
import http.client
import json
import ssl

import pytest

from kubesim.apiserver import protobuf

PB = protobuf.MEDIA_TYPE
CORE = "k8s.io.api.core.v1"
META = "k8s.io.apimachinery.pkg.apis.meta.v1"


def msg(name: str, **kw):
    return protobuf.message_class(name)(**kw)


def envelope(api_version: str, kind: str, raw: bytes) -> bytes:
    u = msg("k8s.io.apimachinery.pkg.runtime.Unknown", raw=raw)
    u.typeMeta.apiVersion, u.typeMeta.kind = api_version, kind
    return protobuf.MAGIC + u.SerializeToString()


def request(srv, method, path, body=None, ctype=None, accept="application/json"):
    ctx = ssl.create_default_context(cafile=srv.ca_file)
    host, port = srv.url.split("//")[1].rsplit(":", 1)
    conn = http.client.HTTPSConnection(host, int(port), context=ctx, timeout=10)
    headers = {"Authorization": f"Bearer {srv.admin_token}", "Accept": accept}
    if ctype:
        headers["Content-Type"] = ctype
    conn.request(method, path, body=body, headers=headers)
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return r.status, r.getheader("Content-Type"), data


def get_json(srv, path):
    status, _, data = request(srv, "GET", path)
    assert status == 200, data
    return json.loads(data)


@pytest.fixture(params=["1.7", "1.13"])
def srv(request, kubesim_server_factory):
    return kubesim_server_factory(k8s_version=request.param)


def secret_message():
    s = msg(f"{CORE}.Secret", type="helm.sh/release.v1")
    s.metadata.name = "sh.helm.release.v1.tproxy.v1"
    s.metadata.labels.update({"name": "tproxy", "owner": "helm", "status": "deployed", "version": "1"})
    s.metadata.annotations["note"] = "ünïcode ✓"
    ref = s.metadata.ownerReferences.add(
        apiVersion="v1", kind="ConfigMap", name="owner", uid="1234", controller=True, blockOwnerDeletion=False
    )
    assert ref.controller
    s.data["release"] = b"\x1f\x8b\xf9\x00binary"
    s.data["empty"] = b""
    return s


def test_a_protobuf_secret_is_stored_as_its_json_form(srv):
    status, ctype, data = request(
        srv, "POST", "/api/v1/namespaces/default/secrets", envelope("v1", "Secret", secret_message().SerializeToString()), PB
    )
    assert status == 201, data
    got = get_json(srv, "/api/v1/namespaces/default/secrets/sh.helm.release.v1.tproxy.v1")
    assert got["kind"] == "Secret" and got["type"] == "helm.sh/release.v1"
    assert got["data"] == {"release": base64.b64encode(b"\x1f\x8b\xf9\x00binary").decode(), "empty": ""}
    meta = got["metadata"]
    assert meta["labels"] == {"name": "tproxy", "owner": "helm", "status": "deployed", "version": "1"}
    assert meta["annotations"] == {"note": "ünïcode ✓"}
    assert meta["ownerReferences"] == [
        {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": "1234", "controller": True, "blockOwnerDeletion": False}
    ]
    assert meta["uid"] and meta["resourceVersion"] and meta["creationTimestamp"]


def test_a_protobuf_deployment_keeps_initializers_int_or_string_quantities_and_pointer_zeros(srv):
    d = msg("k8s.io.api.extensions.v1beta1.Deployment")
    d.metadata.name = "web"
    d.metadata.initializers.pending.add(name="tproxy.initializer.kubernetes.io")
    d.spec.replicas = 0  # *int32: an explicit zero survives
    d.spec.selector.matchLabels["app"] = "web"
    d.spec.strategy.type = "RollingUpdate"
    d.spec.strategy.rollingUpdate.maxSurge.type = 1
    d.spec.strategy.rollingUpdate.maxSurge.strVal = "25%"
    d.spec.strategy.rollingUpdate.maxUnavailable.type = 0
    d.spec.strategy.rollingUpdate.maxUnavailable.intVal = 1
    d.spec.template.metadata.labels["app"] = "web"
    c = d.spec.template.spec.containers.add(name="app", image="example-app:debian")
    c.resources.limits["memory"].string = "64Mi"
    c.securityContext.privileged = False
    status, _, data = request(
        srv,
        "POST",
        "/apis/extensions/v1beta1/namespaces/default/deployments?includeUninitialized=1",
        envelope("extensions/v1beta1", "Deployment", d.SerializeToString()),
        PB,
    )
    assert status == 202, data
    got = get_json(srv, "/apis/extensions/v1beta1/namespaces/default/deployments/web")
    assert got["metadata"]["initializers"] == {"pending": [{"name": "tproxy.initializer.kubernetes.io"}]}
    assert got["spec"]["replicas"] == 0
    assert got["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": "25%", "maxUnavailable": 1}
    container = got["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"] == {"limits": {"memory": "64Mi"}}
    assert container["securityContext"] == {"privileged": False}


def test_the_server_answers_in_protobuf_when_the_client_prefers_it(srv):
    request(srv, "POST", "/api/v1/namespaces/default/secrets", envelope("v1", "Secret", secret_message().SerializeToString()), PB)
    status, ctype, data = request(
        srv, "GET", "/api/v1/namespaces/default/secrets/sh.helm.release.v1.tproxy.v1", accept=f"{PB}, application/json"
    )
    assert status == 200 and ctype == PB
    u = msg("k8s.io.apimachinery.pkg.runtime.Unknown")
    u.ParseFromString(data[len(protobuf.MAGIC) :])
    assert data.startswith(b"k8s\x00") and (u.typeMeta.apiVersion, u.typeMeta.kind) == ("v1", "Secret")
    s = msg(f"{CORE}.Secret")
    s.ParseFromString(u.raw)
    assert s.data["release"] == b"\x1f\x8b\xf9\x00binary" and s.metadata.labels["owner"] == "helm"
    # a list, as Helm's release storage lists by label selector
    status, ctype, data = request(srv, "GET", "/api/v1/namespaces/default/secrets?labelSelector=owner%3Dhelm", accept=PB)
    u.ParseFromString(data[4:])
    lst = msg(f"{CORE}.SecretList")
    lst.ParseFromString(u.raw)
    assert u.typeMeta.kind == "SecretList" and [i.metadata.name for i in lst.items] == ["sh.helm.release.v1.tproxy.v1"]
    # errors too are Status messages
    status, ctype, data = request(srv, "GET", "/api/v1/namespaces/default/secrets/nope", accept=PB)
    u.ParseFromString(data[4:])
    st = msg(f"{META}.Status")
    st.ParseFromString(u.raw)
    assert status == 404 and ctype == PB and st.reason == "NotFound" and st.code == 404
    # JSON when JSON comes first
    status, ctype, _ = request(srv, "GET", "/api/v1/namespaces/default/secrets", accept=f"application/json, {PB}")
    assert ctype == "application/json"


def test_json_encoded_and_protobuf_encoded_objects_read_back_identically(srv):
    """The same ConfigMap sent once as JSON and once as protobuf is stored the same way."""
    cm = msg(f"{CORE}.ConfigMap")
    cm.metadata.name = "pb"
    cm.metadata.labels["a"] = "b"
    cm.data["k"] = "v"
    cm.binaryData["bin"] = b"\xf9\xfa"
    request(srv, "POST", "/api/v1/namespaces/default/configmaps", envelope("v1", "ConfigMap", cm.SerializeToString()), PB)
    request(
        srv,
        "POST",
        "/api/v1/namespaces/default/configmaps",
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "js", "labels": {"a": "b"}},
                "data": {"k": "v"},
                "binaryData": {"bin": base64.b64encode(b"\xf9\xfa").decode()},
            }
        ),
        "application/json",
    )
    strip = lambda o: {k: v for k, v in o.items() if k != "metadata"} | {"labels": o["metadata"]["labels"]}
    assert strip(get_json(srv, "/api/v1/namespaces/default/configmaps/pb")) == strip(
        get_json(srv, "/api/v1/namespaces/default/configmaps/js")
    )


def test_a_protobuf_delete_options_body_is_honoured(srv):
    request(srv, "POST", "/api/v1/namespaces/default/secrets", envelope("v1", "Secret", secret_message().SerializeToString()), PB)
    opts = msg(f"{META}.DeleteOptions", propagationPolicy="Background")
    opts.preconditions.uid = "not-the-uid"
    path = "/api/v1/namespaces/default/secrets/sh.helm.release.v1.tproxy.v1"
    status, _, data = request(srv, "DELETE", path, envelope("v1", "DeleteOptions", opts.SerializeToString()), PB)
    assert status == 409 and b"Precondition failed" in data
    opts.ClearField("preconditions")
    status, _, _ = request(srv, "DELETE", path, envelope("v1", "DeleteOptions", opts.SerializeToString()), PB)
    assert status == 200
    assert request(srv, "GET", path)[0] == 404


def _count(srv, path):
    return len(get_json(srv, path)["items"])


@pytest.mark.parametrize(
    "body, fragment",
    [
        (b"", "the body of the request was empty"),
        (b"\x0a\x02{}", "does not appear to be a protobuf message"),
        (b"k8s\x00\xff\xff\xff", "protobuf envelope"),
        (envelope("v1", "Secret", secret_message().SerializeToString())[:40], "protobuf"),
        (envelope("v1", "Secret", b"\x0a\xff\x01trunc"), "cannot be decoded from protobuf"),
        (protobuf.MAGIC + b"\x12\x04abcd", "Kind' is missing"),
    ],
)
def test_a_garbage_or_truncated_protobuf_body_is_400_and_nothing_is_stored(srv, body, fragment):
    before = _count(srv, "/api/v1/namespaces/default/secrets")
    status, _, data = request(srv, "POST", "/api/v1/namespaces/default/secrets", body, PB)
    assert status == 400, data
    answer = json.loads(data)
    assert answer["reason"] == "BadRequest" and fragment in answer["message"], answer
    assert _count(srv, "/api/v1/namespaces/default/secrets") == before


def test_a_protobuf_body_of_a_kind_without_a_protobuf_form_is_415(srv):
    before = _count(srv, "/api/v1/namespaces/default/configmaps")
    status, _, data = request(
        srv, "POST", "/api/v1/namespaces/default/configmaps", envelope("stable.example.com/v1", "CronTab", b"\x0a\x00"), PB
    )
    assert status == 415, data
    answer = json.loads(data)
    assert answer["reason"] == "UnsupportedMediaType" and "CronTab" in answer["message"]
    assert _count(srv, "/api/v1/namespaces/default/configmaps") == before


def test_a_protobuf_body_of_another_kind_than_the_url_is_400(srv):
    cm = msg(f"{CORE}.ConfigMap")
    cm.metadata.name = "x"
    status, _, data = request(
        srv, "POST", "/api/v1/namespaces/default/secrets", envelope("v1", "ConfigMap", cm.SerializeToString()), PB
    )
    assert status == 400 and b"does not match the expected kind" in data


def test_protobuf_patches_are_415_like_a_real_server(srv):
    request(srv, "POST", "/api/v1/namespaces/default/secrets", envelope("v1", "Secret", secret_message().SerializeToString()), PB)
    status, _, data = request(
        srv, "PATCH", "/api/v1/namespaces/default/secrets/sh.helm.release.v1.tproxy.v1", envelope("v1", "Secret", b""), PB
    )
    assert status == 415 and json.loads(data)["reason"] == "UnsupportedMediaType"


def test_an_accept_header_with_nothing_kubesim_writes_is_406(srv):
    status, _, data = request(srv, "GET", "/api/v1/namespaces", accept="application/xml")
    assert status == 406 and json.loads(data)["reason"] == "NotAcceptable"


def test_a_watch_that_prefers_protobuf_streams_length_delimited_watch_events(srv):
    """client-go's typed watch (Accept protobuf first) gets the protobuf stream framing."""
    cm = msg(f"{CORE}.ConfigMap")
    cm.metadata.name = "w"
    request(srv, "POST", "/api/v1/namespaces/default/configmaps", envelope("v1", "ConfigMap", cm.SerializeToString()), PB)
    status, ctype, data = request(
        srv, "GET", "/api/v1/namespaces/default/configmaps?watch=true&timeoutSeconds=1", accept=f"{PB}, application/json"
    )
    assert status == 200 and ctype == protobuf.WATCH_MEDIA_TYPE
    n = int.from_bytes(data[:4], "big")
    frame = data[4 : 4 + n]
    u = msg("k8s.io.apimachinery.pkg.runtime.Unknown")
    u.ParseFromString(frame[4:])
    assert frame[:4] == protobuf.MAGIC and u.typeMeta.kind == "WatchEvent"
    ev = msg(f"{META}.WatchEvent")
    ev.ParseFromString(u.raw)
    assert ev.type == "ADDED"
    inner = msg("k8s.io.apimachinery.pkg.runtime.Unknown")
    inner.ParseFromString(ev.object.raw[4:])
    got = msg(f"{CORE}.ConfigMap")
    got.ParseFromString(inner.raw)
    assert inner.typeMeta.kind == "ConfigMap" and got.metadata.name == "w"


def test_random_protobuf_bodies_never_cause_a_500(kubesim_server_factory):
    import random

    srv = kubesim_server_factory(k8s_version="1.13")
    rng = random.Random(14)
    good = envelope("v1", "Secret", secret_message().SerializeToString())
    seen = set()
    for i in range(300):
        if i % 3 == 0:
            body = protobuf.MAGIC + bytes(rng.randrange(256) for _ in range(rng.randrange(1, 60)))
        elif i % 3 == 1:  # flip bytes of a valid body
            b = bytearray(good)
            for _ in range(rng.randrange(1, 4)):
                b[rng.randrange(4, len(b))] = rng.randrange(256)
            body = bytes(b)
        else:
            body = good[: rng.randrange(5, len(good))]
        status, _, data = request(srv, "POST", "/api/v1/namespaces/default/secrets", body, PB)
        assert status < 500, (body, data)
        seen.add(status)
        if status == 201:
            name = json.loads(data)["metadata"]["name"]
            request(srv, "DELETE", f"/api/v1/namespaces/default/secrets/{name}")
    assert 400 in seen
