"""controllerkit.kube + controllerkit.errors against a local HTTP server speaking the Kubernetes protocol."""

import json
import socket

import pytest
import yaml

from controllerkit import errors
from controllerkit.kube import Client, ConfigError, resource_path
from controllerkit.testing import status_body
from kubesim.testing import wait_for

PODS = "/api/v1/pods"


@pytest.fixture
def srv(fake_api_server):
    return fake_api_server


@pytest.fixture
def client(srv):
    return Client.from_url(srv.url)


def write_kubeconfig(path, contexts, current):
    """contexts: {name: server_url}; each with its own cluster and user (token "tok-<name>")."""
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": current,
        "clusters": [{"name": n, "cluster": {"server": url}} for n, url in contexts.items()],
        "users": [{"name": n, "user": {"token": f"tok-{n}"}} for n in contexts],
        "contexts": [{"name": n, "context": {"cluster": n, "user": n}} for n in contexts],
    }
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def closed_port_url():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}"


# -- resource_path --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args,expected",
    [
        (("v1", "pods", "ns", "p"), "/api/v1/namespaces/ns/pods/p"),
        (("v1", "pods"), "/api/v1/pods"),
        (("apps/v1beta1", "deployments"), "/apis/apps/v1beta1/deployments"),
        (("apps/v1beta1", "deployments", "default", "web"), "/apis/apps/v1beta1/namespaces/default/deployments/web"),
        (("v1", "namespaces", None, "kube-system"), "/api/v1/namespaces/kube-system"),
        (
            ("admissionregistration.k8s.io/v1alpha1", "initializerconfigurations", None, "tproxy"),
            "/apis/admissionregistration.k8s.io/v1alpha1/initializerconfigurations/tproxy",
        ),
        (("v1", "pods", "ns", "p", "status"), "/api/v1/namespaces/ns/pods/p/status"),
    ],
)
def test_resource_path(args, expected):
    assert resource_path(*args) == expected


def test_resource_path_rejects_subresource_without_name():
    with pytest.raises(ValueError, match="subresource needs an object name"):
        resource_path("v1", "pods", "ns", None, "status")


# -- from_config ----------------------------------------------------------------------------------
def test_from_config_kubeconfig_path_and_context(srv, tmp_path):
    path = write_kubeconfig(tmp_path / "kc", {"dead": closed_port_url(), "live": srv.url}, current="dead")
    srv.upsert(PODS, {"metadata": {"name": "a", "namespace": "ns"}})
    c = Client.from_config(path, context="live")
    assert c.host == srv.url
    assert [i["metadata"]["name"] for i in c.list(PODS)["items"]] == ["a"]
    headers, _ = srv.request_details[-1]
    assert headers.get("authorization", headers.get("Authorization")) == "Bearer tok-live"


def test_from_config_uses_KUBECONFIG_env(srv, tmp_path, monkeypatch):
    path = write_kubeconfig(tmp_path / "kc", {"one": srv.url}, current="one")
    monkeypatch.setenv("KUBECONFIG", path)
    assert Client.from_config().host == srv.url


def test_from_config_missing_kubeconfig_file_names_it(tmp_path):
    missing = str(tmp_path / "nope")
    with pytest.raises(ConfigError, match="nope.*does not exist"):
        Client.from_config(missing)


def test_from_config_broken_kubeconfig_is_clear_error(tmp_path):
    p = tmp_path / "kc"
    p.write_text("apiVersion: v1\nkind: Config\ncontexts: []\n")
    with pytest.raises(ConfigError, match="not usable"):
        Client.from_config(str(p))


def test_from_config_nothing_available_lists_what_was_tried(tmp_path, monkeypatch):
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_PORT", raising=False)
    with pytest.raises(ConfigError) as ei:
        Client.from_config(service_account_dir=str(tmp_path))
    msg = str(ei.value)
    assert "$KUBECONFIG is not set" in msg and "in-cluster" in msg and "KUBERNETES_SERVICE_HOST" in msg


def test_from_config_in_cluster(tmp_path, monkeypatch):
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    (tmp_path / "token").write_text("sa-token")
    with pytest.raises(ConfigError, match="certification file does not exist"):
        Client.from_config(service_account_dir=str(tmp_path))
    (tmp_path / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    c = Client.from_config(service_account_dir=str(tmp_path))
    cfg = c.api_client.configuration
    assert cfg.host == "https://10.0.0.1:443"
    assert cfg.ssl_ca_cert == str(tmp_path / "ca.crt")
    assert cfg.auth_settings()["BearerToken"]["value"] == "bearer sa-token"


# -- requests -------------------------------------------------------------------------------------
def test_query_params_are_passed_verbatim(srv, client):
    srv.upsert(PODS, {"metadata": {"name": "a", "namespace": "ns"}})
    client.list(PODS, includeUninitialized=True, fieldSelector="spec.nodeName=n1", limit=None)
    _, path, query = srv.requests[-1]
    assert path == PODS
    assert query == {"includeUninitialized": "true", "fieldSelector": "spec.nodeName=n1"}


def test_request_accepts_query_pairs(srv, client):
    srv.route("GET", "/x", 200, {"ok": 1})
    assert client.request("GET", "/x", query=[("a", "1"), ("a", "2")]) == {"ok": 1}
    assert srv.requests[-1][2] == {"a": "2"}  # both sent; the fake's dict keeps the last


@pytest.mark.parametrize(
    "patch_type,ctype,body",
    [
        ("strategic", "application/strategic-merge-patch+json", {"metadata": {"labels": {"a": "b"}}}),
        ("merge", "application/merge-patch+json", {"metadata": {"labels": {"a": None}}}),
        ("json", "application/json-patch+json", [{"op": "remove", "path": "/metadata/initializers/pending/0"}]),
    ],
)
def test_patch_content_types_and_body(srv, client, patch_type, ctype, body):
    srv.route("PATCH", "/api/v1/namespaces/ns/pods/a", 200, {"kind": "Pod"})
    assert client.patch("/api/v1/namespaces/ns/pods/a", body, patch_type=patch_type) == {"kind": "Pod"}
    headers, raw = srv.request_details[-1]
    assert headers["Content-Type"] == ctype
    assert json.loads(raw) == body


def test_patch_rejects_bad_type_and_non_list_json_patch(client):
    with pytest.raises(ValueError, match="patch_type"):
        client.patch("/x", {}, patch_type="apply")
    with pytest.raises(ValueError, match="list of operations"):
        client.patch("/x", {"op": "add"}, patch_type="json")


def test_create_replace_delete_methods_and_bodies(srv, client):
    for method in ("POST", "PUT", "DELETE"):
        srv.route(method, "/api/v1/namespaces/ns/pods" + ("" if method == "POST" else "/a"), 200, {"m": method})
    assert client.create("/api/v1/namespaces/ns/pods", {"metadata": {"name": "a"}}, includeUninitialized="1") == {"m": "POST"}
    assert srv.requests[-1] == ("POST", "/api/v1/namespaces/ns/pods", {"includeUninitialized": "1"})
    assert json.loads(srv.request_details[-1][1]) == {"metadata": {"name": "a"}}
    assert client.replace("/api/v1/namespaces/ns/pods/a", {"metadata": {"name": "a", "resourceVersion": "5"}})["m"] == "PUT"
    assert client.delete("/api/v1/namespaces/ns/pods/a")["m"] == "DELETE"


def test_empty_success_body_is_empty_dict(srv, client):
    srv.route("DELETE", "/y", 200, b"")
    assert client.delete("/y") == {}


def test_non_json_success_body_is_stream_error(srv, client):
    srv.route("GET", "/garbage", 200, "<html>proxy page</html>")
    with pytest.raises(errors.StreamError, match="not JSON"):
        client.get("/garbage")


# -- typed errors ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "code,reason,cls",
    [
        (400, "BadRequest", errors.BadRequest),
        (401, "Unauthorized", errors.Unauthorized),
        (403, "Forbidden", errors.Forbidden),
        (404, "NotFound", errors.NotFound),
        (409, "AlreadyExists", errors.AlreadyExists),
        (409, "Conflict", errors.Conflict),
        (410, "Gone", errors.Gone),
        (410, "Expired", errors.Gone),
        (422, "Invalid", errors.Invalid),
        (429, "TooManyRequests", errors.TooManyRequests),
        (504, "Timeout", errors.Timeout),
        (500, "ServerTimeout", errors.Timeout),
        (500, "InternalError", errors.ServerError),
        (503, "ServiceUnavailable", errors.ServerError),
        (405, "MethodNotAllowed", errors.ApiError),
    ],
)
def test_status_bodies_become_typed_errors(srv, client, code, reason, cls):
    srv.route("PUT", "/api/v1/namespaces/ns/pods/a", code, status_body(code, reason, f"msg for {reason}"))
    with pytest.raises(cls) as ei:
        client.replace("/api/v1/namespaces/ns/pods/a", {"metadata": {"name": "a"}})
    e = ei.value
    assert type(e) is cls
    assert (e.code, e.reason, e.message) == (code, reason, f"msg for {reason}")
    assert e.status["reason"] == reason
    assert str(e) == f"{code} {reason}: msg for {reason}"


@pytest.mark.parametrize(
    "code,cls",
    [
        (404, errors.NotFound),
        (409, errors.Conflict),
        (502, errors.ServerError),
        (504, errors.Timeout),
        (401, errors.Unauthorized),
        (418, errors.ApiError),
    ],
)
def test_non_json_bodies_still_typed_by_code(srv, client, code, cls):
    srv.route("GET", "/html", code, "<html><body>upstream says no</body></html>")
    with pytest.raises(cls) as ei:
        client.get("/html")
    assert type(ei.value) is cls
    assert ei.value.code == code
    assert "upstream says no" in ei.value.message
    assert ei.value.status["kind"] == "Status"  # synthesised, so callers can always read .status


def test_from_response_tolerates_odd_bodies():
    assert isinstance(errors.from_response(404, b""), errors.NotFound)
    assert str(errors.from_response(404, None)) == "404 NotFound: NotFound"
    long = errors.from_response(500, "x" * 5000)
    assert len(long.message) < 600 and long.message.endswith("...")
    e = errors.from_response(429, status_body(429, "TooManyRequests", "slow down", retryAfterSeconds=3))
    assert isinstance(e, errors.TooManyRequests) and e.retry_after == 3.0
    # Status code inside the body wins over a missing/zero HTTP code (watch ERROR events)
    assert isinstance(errors.from_response(0, {"kind": "Status", "code": 410, "reason": "Expired"}), errors.Gone)


@pytest.mark.parametrize(
    "exc,retryable",
    [
        (errors.Conflict(409, "Conflict", "m"), True),
        (errors.Timeout(504, "Timeout", "m"), True),
        (errors.TooManyRequests(429, "TooManyRequests", "m"), True),
        (errors.ServerError(500, "InternalError", "m"), True),
        (errors.StreamError("cut"), True),
        (ConnectionResetError(), True),
        (errors.NotFound(404, "NotFound", "m"), False),
        (errors.Forbidden(403, "Forbidden", "m"), False),
        (errors.Invalid(422, "Invalid", "m"), False),
        (errors.AlreadyExists(409, "AlreadyExists", "m"), False),
        (errors.Gone(410, "Gone", "m"), False),
        (ValueError("bug"), False),
    ],
)
def test_is_retryable(exc, retryable):
    assert errors.is_retryable(exc) is retryable


def test_connection_refused_is_retryable_stream_error():
    c = Client.from_url(closed_port_url())
    c.api_client.configuration.retries = 0
    c = Client._from_configuration(c.api_client.configuration)
    with pytest.raises(errors.StreamError) as ei:
        c.get(PODS)
    assert errors.is_retryable(ei.value)


# -- watch ----------------------------------------------------------------------------------------
def test_watch_yields_events_after_resource_version(srv, client):
    a = srv.upsert(PODS, {"metadata": {"name": "a", "namespace": "ns"}})
    srv.upsert(PODS, {"metadata": {"name": "a", "namespace": "ns"}, "spec": {"x": 1}})
    srv.bookmark(PODS)
    srv.remove(PODS, "ns", "a")
    got = []
    srv.max_watch_seconds = 0.3  # the server ends the quiet stream; the iterator then just ends
    for etype, obj in client.watch(
        PODS, resource_version=a["metadata"]["resourceVersion"], timeout_seconds=5, fieldSelector="spec.nodeName=n1"
    ):
        got.append((etype, obj["metadata"]["resourceVersion"]))
    assert [t for t, _ in got] == ["MODIFIED", "BOOKMARK", "DELETED"]
    assert [int(rv) for _, rv in got] == sorted(int(rv) for _, rv in got)
    _, _, query = srv.requests[-1]
    assert query["watch"] == "true" and query["resourceVersion"] == a["metadata"]["resourceVersion"]
    assert query["timeoutSeconds"] == "5" and query["fieldSelector"] == "spec.nodeName=n1"


def test_watch_error_event_410_raises_gone(srv, client):
    srv.upsert(PODS, {"metadata": {"name": "a", "namespace": "ns"}})
    srv.fault(PODS, "error410")
    with pytest.raises(errors.Gone) as ei:
        list(client.watch(PODS, resource_version="1", timeout_seconds=5))
    assert ei.value.code == 410 and ei.value.reason == "Expired"


def test_watch_http_410_raises_gone(srv, client):
    srv.upsert(PODS, {"metadata": {"name": "a", "namespace": "ns"}})
    srv.compact()
    with pytest.raises(errors.Gone):
        list(client.watch(PODS, resource_version="1", timeout_seconds=5))


@pytest.mark.parametrize("fault", ["cut", "end_mid_line"])
def test_watch_cut_mid_line_raises_stream_error(srv, client, fault):
    srv.upsert(PODS, {"metadata": {"name": "a", "namespace": "ns"}})
    srv.fault(PODS, fault)
    with pytest.raises(errors.StreamError):
        list(client.watch(PODS, resource_version="1", timeout_seconds=5))


def test_watch_skips_unknown_event_types(srv, client):
    line = b'{"type": "SOMETHING_NEW", "object": {}}\n{"type": "ADDED", "object": {"metadata": {"name": "z"}}}\n'
    srv.route("GET", "/weird", 200, line)
    assert list(client.watch("/weird")) == [("ADDED", {"metadata": {"name": "z"}})]


def test_watch_stream_close_from_other_thread_ends_quietly(srv, client):
    import threading

    srv.upsert(PODS, {"metadata": {"name": "a", "namespace": "ns"}})
    stream = client.open_watch(PODS, resource_version=str(srv.resource_version), timeout_seconds=3600)
    got = {}
    reader = threading.Thread(target=lambda: got.setdefault("events", list(stream)), daemon=True)
    reader.start()
    stream.close()
    # the server would keep the stream open for an hour: only the close can end the read
    wait_for(lambda: not reader.is_alive(), 10, what="the reader to end after close()")
    assert got["events"] == []


def test_watch_without_chunked_encoding_delivers_each_event_at_once():
    """Some servers/proxies stream a watch as a plain body until close: events must not wait for 64 KiB."""
    import threading

    first_seen = threading.Event()
    seen_before_second = []
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def serve():
        conn, _ = listener.accept()
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n")
        conn.sendall(b'{"type": "ADDED", "object": {"metadata": {"name": "one"}}}\n')
        seen_before_second.append(first_seen.wait(2))
        conn.sendall(b'{"type": "DELETED", "object": {"metadata": {"name": "one"}}}\n')
        conn.close()

    threading.Thread(target=serve, daemon=True).start()
    c = Client.from_url(f"http://127.0.0.1:{listener.getsockname()[1]}")
    got = []
    for etype, _obj in c.watch("/api/v1/pods", timeout_seconds=5):
        got.append(etype)
        first_seen.set()
    listener.close()
    assert got == ["ADDED", "DELETED"]
    assert seen_before_second == [True], "the first event must reach the caller before more bytes arrive"
