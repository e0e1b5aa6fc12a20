"""pytest fixtures for tests that need a Kubernetes API: an in-process kubesim API server.

Enabled suite-wide by ``pytest_plugins = ["kubesim.testing"]`` in tests/conftest.py.

- ``kubesim_server_module``: one started :class:`~kubesim.apiserver.APIServer` per test module
  (start-up is a few milliseconds, but module scope keeps connection pools warm).
- ``kubesim_server``: a fresh server per test (use it when a test changes faults or global state).
- ``kubeconfig_path``: an admin kubeconfig file for ``kubesim_server``.
- ``kube_api_client``: an official ``kubernetes.client.ApiClient`` (admin) for ``kubesim_server``.
- ``kube_api_client_module``: the same for ``kubesim_server_module``.
- ``kubesim_server_factory``: ``make(**APIServer kwargs)`` for servers with other options, all
  stopped at teardown; ``kubesim_server_factory_module`` is its module-scoped twin.
- ``fake_api_server``: a started ``controllerkit.testing.FakeApiServer`` per test (for the
  informer's fault cases).

Helpers: :func:`api_client_for` builds an ``ApiClient`` for any server and token (e.g. a
ServiceAccount's, from ``srv.service_account_token(ns, name)``); :func:`wait_for` (from :mod:`kubesim.polling`)
polls a condition until it is truthy.
"""

from __future__ import annotations

import pytest

from kubesim.apiserver import APIServer
from kubesim.polling import wait_for  # noqa: F401 - re-exported for the tests


def api_client_for(srv: APIServer, token: str | None = None):
    """An official kubernetes ``ApiClient`` talking HTTPS to ``srv`` with ``token`` (admin if None)."""
    import kubernetes.client

    cfg = kubernetes.client.Configuration()
    cfg.host = srv.url
    cfg.ssl_ca_cert = srv.ca_file
    cfg.verify_ssl = True
    cfg.api_key = {"BearerToken": token or srv.admin_token}
    cfg.api_key_prefix = {"BearerToken": "Bearer"}
    cfg.connection_pool_maxsize = 32
    return kubernetes.client.ApiClient(cfg)


def _server(**kwargs):
    srv = APIServer(**kwargs).start()
    return srv


@pytest.fixture
def kubesim_server():
    srv = _server()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def kubesim_server_module():
    srv = _server()
    yield srv
    srv.stop()


def _started_servers():
    """Generator behind the factory fixtures: yields ``make(**APIServer kwargs)``, then stops
    every server it started."""
    started = []

    def make(**kwargs):
        host = kwargs.pop("host", "127.0.0.1")
        port = kwargs.pop("port", 0)
        srv = APIServer(**kwargs).start(host=host, port=port)
        started.append(srv)
        return srv

    yield make
    for srv in started:
        srv.stop()


@pytest.fixture
def kubesim_server_factory():
    """Start servers with any options (``k8s_version="1.13"``, ``faults=...``, ``history=10``,
    ``sans=[...]``); every server started through it is stopped at teardown."""
    yield from _started_servers()


@pytest.fixture(scope="module")
def kubesim_server_factory_module():
    """:func:`kubesim_server_factory` for module-scoped fixtures (servers stopped after the module)."""
    yield from _started_servers()


@pytest.fixture
def kubeconfig_path(kubesim_server, tmp_path):
    return kubesim_server.write_kubeconfig(str(tmp_path / "kubeconfig"))


@pytest.fixture
def kube_api_client(kubesim_server):
    client = api_client_for(kubesim_server)
    yield client
    client.close()


@pytest.fixture(scope="module")
def kube_api_client_module(kubesim_server_module):
    client = api_client_for(kubesim_server_module)
    yield client
    client.close()


@pytest.fixture
def fake_api_server():
    """A started :class:`controllerkit.testing.FakeApiServer` (plain-HTTP list/watch fake), per test."""
    from controllerkit.testing import FakeApiServer

    srv = FakeApiServer().start()
    yield srv
    srv.stop()


def raw(client, method: str, path: str, query=None, body=None, content_type: str | None = None, timeout: float | None = 30):
    """Call any path through the official client's ``call_api``; return ``(status, json_body)``.

    Errors are returned, not raised, so tests can assert on the Status body. ``query`` is a dict
    or a list of pairs (for the odd query parameters the typed API rejects)."""
    import json as _json

    from kubernetes.client.exceptions import ApiException

    headers = {"Accept": "application/json"}
    if content_type:
        headers["Content-Type"] = content_type
    elif body is not None:
        headers["Content-Type"] = "application/json"
    q = list(query.items()) if isinstance(query, dict) else list(query or [])
    try:
        resp = client.call_api(
            path,
            method,
            query_params=q,
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
            _preload_content=False,
            _return_http_data_only=True,
            _request_timeout=timeout,
        )
        data = resp.data
        if not data:
            return resp.status, None
        try:
            return resp.status, _json.loads(data)
        except ValueError:
            return resp.status, data.decode("utf-8", "replace")
    except ApiException as e:
        try:
            return e.status, _json.loads(e.body) if e.body else None
        except ValueError:
            return e.status, e.body


def watch_events(client, path: str, query=None, timeout: float = 10, max_events: int | None = None):
    """Open a watch (``?watch=true`` unless the path is a legacy ``/watch/`` path) and yield the
    decoded events until the server closes the stream, ``max_events`` or ``timeout``."""
    import json as _json

    q = dict(query or {})
    if "/watch/" not in path:
        q.setdefault("watch", "true")
    resp = client.call_api(
        path,
        "GET",
        query_params=list(q.items()),
        header_params={"Accept": "application/json"},
        auth_settings=["BearerToken"],
        _preload_content=False,
        _return_http_data_only=True,
        _request_timeout=timeout,
    )
    n = 0
    buf = b""
    try:
        for chunk in resp.stream(amt=None, decode_content=False):
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                if line.strip():
                    yield _json.loads(line)
                    n += 1
                    if max_events is not None and n >= max_events:
                        return
    finally:
        resp.release_conn() if max_events is None else resp.close()


class RbacV1beta1:
    """The few ``RbacAuthorizationV1Api`` calls the tests make, through ``rbac.authorization.k8s.io/
    v1beta1``: a 1.7 server serves no rbac/v1 (GA in 1.8), and the official client has no v1beta1 API
    any more. Failures raise the client's ApiException like the generated API would."""

    BASE = "/apis/rbac.authorization.k8s.io/v1beta1"

    def __init__(self, client):
        self.client = client

    def _call(self, method, path, body=None):
        import kubernetes.client as k

        status, out = raw(self.client, method, self.BASE + path, body=body)
        if status >= 400:
            raise k.ApiException(status=status, reason=str(out))
        return out

    def create_cluster_role(self, body):
        return self._call("POST", "/clusterroles", body)

    def create_cluster_role_binding(self, body):
        return self._call("POST", "/clusterrolebindings", body)

    def create_namespaced_role(self, ns, body):
        return self._call("POST", f"/namespaces/{ns}/roles", body)

    def create_namespaced_role_binding(self, ns, body):
        return self._call("POST", f"/namespaces/{ns}/rolebindings", body)

    def read_cluster_role(self, name):
        from urllib.parse import quote

        return self._call("GET", "/clusterroles/" + quote(name, safe=""))

    def delete_cluster_role(self, name):
        from urllib.parse import quote

        return self._call("DELETE", "/clusterroles/" + quote(name, safe=""))
