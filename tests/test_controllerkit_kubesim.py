"""controllerkit over HTTPS against the kubesim API server (real TLS, bearer tokens, Status bodies),
through the official kubernetes client."""

import time

import pytest

from controllerkit import errors
from controllerkit.informer import Informer
from controllerkit.kube import Client, resource_path

NS = "ck"


@pytest.fixture(scope="module")
def api(kubesim_server_module, tmp_path_factory):
    srv = kubesim_server_module
    client = Client.from_config(srv.write_kubeconfig(str(tmp_path_factory.mktemp("kc") / "kubeconfig")))
    client.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
    return srv, client


def test_https_crud_and_typed_errors(api):
    _, c = api
    path = resource_path("v1", "configmaps", NS)
    created = c.create(path, {"metadata": {"name": "a"}, "data": {"k": "v"}})
    assert created["metadata"]["name"] == "a" and created["metadata"]["resourceVersion"]
    with pytest.raises(errors.AlreadyExists, match="already exists"):
        c.create(path, {"metadata": {"name": "a"}})
    stale = dict(created, data={"k": "v2"})
    c.replace(resource_path("v1", "configmaps", NS, "a"), stale)
    with pytest.raises(errors.Conflict):
        c.replace(resource_path("v1", "configmaps", NS, "a"), dict(created, data={"k": "v3"}))
    patched = c.patch(resource_path("v1", "configmaps", NS, "a"), {"data": {"p": "1"}}, patch_type="merge")
    assert patched["data"] == {"k": "v2", "p": "1"}
    c.delete(resource_path("v1", "configmaps", NS, "a"))
    with pytest.raises(errors.NotFound):
        c.get(resource_path("v1", "configmaps", NS, "a"))


def test_bad_token_is_unauthorized(api):
    srv, c = api
    bad = Client.from_url(srv.url, token="not-a-token", ca_file=srv.ca_file)
    with pytest.raises(errors.Unauthorized):
        bad.list(resource_path("v1", "configmaps", NS))


def test_informer_over_tls_sees_events_and_stops_promptly(api):
    _, c = api
    inf = Informer(c, resource_path("v1", "configmaps"), resync_period=0, name="cm-tls", watch_timeout=(30, 30))
    seen = []
    inf.add_handler(
        on_add=lambda o: seen.append(o["metadata"]["name"]), on_delete=lambda o: seen.append("-" + o["metadata"]["name"])
    )
    inf.start()
    try:
        assert inf.wait_for_sync(5)
        c.create(resource_path("v1", "configmaps", NS), {"metadata": {"name": "tls"}})
        c.delete(resource_path("v1", "configmaps", NS, "tls"))
        deadline = time.monotonic() + 5
        while seen[-1:] != ["-tls"] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert seen[-2:] == ["tls", "-tls"]
        assert int(inf.last_resource_version) > 0
    finally:
        inf.stop()
        assert not inf._thread.is_alive(), "stop must interrupt a quiet TLS watch"
