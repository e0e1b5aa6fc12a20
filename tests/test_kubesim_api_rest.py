"""Conformance: REST verbs, patches, selectors, discovery, bad input, kubeconfig and the CLI."""

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time

import kubernetes.client as k
import kubernetes.config
import pytest

from kubesim.apiserver import APIServer
from kubesim.testing import api_client_for, raw

CM = "/api/v1/namespaces/default/configmaps"
EXT = "/apis/extensions/v1beta1/namespaces/default/deployments"


@pytest.fixture(scope="module")
def srv(kubesim_server_module):
    return kubesim_server_module


@pytest.fixture(scope="module")
def c(kube_api_client_module):
    return kube_api_client_module


def deployment(name):
    return {
        "metadata": {"name": name},
        "spec": {
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "containers": [
                        {
                            "name": "app",
                            "image": "debian:9",
                            "env": [{"name": "A", "value": "1"}],
                            "ports": [{"containerPort": 80}],
                            "volumeMounts": [{"name": "v", "mountPath": "/v"}],
                        }
                    ],
                    "volumes": [{"name": "v", "emptyDir": {}}],
                },
            }
        },
    }


# ---- create/get/update/delete ------------------------------------------------------------------


def test_create_get_sets_server_metadata(c):
    """create fills uid, resourceVersion (global counter), creationTimestamp; get returns kind/apiVersion."""
    v1 = k.CoreV1Api(c)
    a = v1.create_namespaced_config_map("default", {"metadata": {"name": "meta-a"}})
    b = v1.create_namespaced_config_map("default", {"metadata": {"name": "meta-b"}})
    assert int(b.metadata.resource_version) > int(a.metadata.resource_version)
    assert a.metadata.uid and a.metadata.creation_timestamp
    s, got = raw(c, "GET", f"{CM}/meta-a")
    assert got["kind"] == "ConfigMap" and got["apiVersion"] == "v1"
    assert got["metadata"]["selfLink"] == "/api/v1/namespaces/default/configmaps/meta-a"


def test_already_exists_and_not_found(c):
    """409 AlreadyExists and 404 NotFound with the real messages."""
    raw(c, "POST", CM, body={"metadata": {"name": "dup"}})
    s, body = raw(c, "POST", CM, body={"metadata": {"name": "dup"}})
    assert s == 409 and body["reason"] == "AlreadyExists" and body["message"] == 'configmaps "dup" already exists'
    s, body = raw(c, "GET", f"{EXT}/missing")
    assert s == 404 and body["message"] == 'deployments.extensions "missing" not found'
    s, body = raw(c, "POST", "/api/v1/namespaces/nope/configmaps", body={"metadata": {"name": "x"}})
    assert s == 404 and body["message"] == 'namespaces "nope" not found'


def test_update_conflict_message_and_unconditional_update(c):
    """PUT with a stale resourceVersion -> 409 with the real message; without resourceVersion -> unconditional."""
    s, d = raw(c, "POST", EXT, body=deployment("cfl"))
    stale = json.loads(json.dumps(d))
    d["metadata"]["labels"] = {"v": "2"}
    assert raw(c, "PUT", f"{EXT}/cfl", body=d)[0] == 200
    s, body = raw(c, "PUT", f"{EXT}/cfl", body=stale)
    assert s == 409 and body["reason"] == "Conflict"
    assert body["message"] == (
        'Operation cannot be fulfilled on deployments.extensions "cfl": the object has been '
        "modified; please apply your changes to the latest version and try again"
    )
    del stale["metadata"]["resourceVersion"]
    assert raw(c, "PUT", f"{EXT}/cfl", body=stale)[0] == 200


def test_status_subresource_and_main_update_keep_each_other(c):
    """Main-resource updates keep status; /status updates change only status."""
    v1 = k.CoreV1Api(c)
    v1.create_namespaced_pod("default", {"metadata": {"name": "st"}, "spec": {"containers": [{"name": "c", "image": "i"}]}})
    p = v1.read_namespaced_pod("st", "default")
    assert p.status.phase == "Pending"
    v1.patch_namespaced_pod_status("st", "default", {"status": {"phase": "Running"}, "metadata": {"labels": {"x": "y"}}})
    p = v1.read_namespaced_pod("st", "default")
    assert p.status.phase == "Running" and not p.metadata.labels
    v1.patch_namespaced_pod("st", "default", {"status": {"phase": "Failed"}, "metadata": {"labels": {"a": "b"}}})
    p = v1.read_namespaced_pod("st", "default")
    assert p.status.phase == "Running" and p.metadata.labels == {"a": "b"}


def test_pod_binding_subresource_sets_node_name(c):
    """POST pods/{name}/binding assigns the node once (like the scheduler)."""
    v1 = k.CoreV1Api(c)
    v1.create_namespaced_pod("default", {"metadata": {"name": "bind"}, "spec": {"containers": [{"name": "c", "image": "i"}]}})
    s, _ = raw(
        c,
        "POST",
        "/api/v1/namespaces/default/pods/bind/binding",
        body={"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "bind"}, "target": {"kind": "Node", "name": "n1"}},
    )
    assert s == 201
    assert v1.read_namespaced_pod("bind", "default").spec.node_name == "n1"
    s, _ = raw(c, "POST", "/api/v1/namespaces/default/pods/bind/binding", body={"target": {"name": "n2"}})
    assert s == 409


def test_delete_returns_success_status_and_namespace_delete_cascades(c):
    """DELETE answers a Success Status; deleting a namespace deletes what is in it."""
    v1 = k.CoreV1Api(c)
    v1.create_namespace({"metadata": {"name": "doomed"}})
    v1.create_namespaced_config_map("doomed", {"metadata": {"name": "x"}})
    s, body = raw(c, "DELETE", "/api/v1/namespaces/doomed")
    assert s == 200 and body["status"] == "Success" and body["details"]["name"] == "doomed"
    assert raw(c, "GET", "/api/v1/namespaces/doomed/configmaps/x")[0] == 404


def test_a_scheduled_pod_is_deleted_gracefully_as_the_pod_strategy_does(c):
    """A running pod on a node gets deletionTimestamp + deletionGracePeriodSeconds and stays (its
    kubelet stops the containers, then deletes with grace 0); grace 0, an unscheduled pod or a
    finished one go at once; a second delete may only shorten the grace period."""
    base = "/api/v1/namespaces/default/pods"

    def mk(name, node="node-1", **spec):
        body = {"metadata": {"name": name}, "spec": {"containers": [{"name": "a", "image": "i"}], **spec}}
        if node:
            body["spec"]["nodeName"] = node
        assert raw(c, "POST", base, body=body)[0] == 201

    mk("g1", terminationGracePeriodSeconds=20)
    s, obj = raw(c, "DELETE", f"{base}/g1")
    assert s == 200 and obj["kind"] == "Pod" and obj["metadata"]["deletionGracePeriodSeconds"] == 20
    assert obj["metadata"]["deletionTimestamp"]
    assert raw(c, "GET", f"{base}/g1")[1]["metadata"]["deletionTimestamp"] == obj["metadata"]["deletionTimestamp"]
    s, again = raw(c, "DELETE", f"{base}/g1", body={"gracePeriodSeconds": 5})  # shorter: taken
    assert s == 200 and again["metadata"]["deletionGracePeriodSeconds"] == 5
    s, same = raw(c, "DELETE", f"{base}/g1", body={"gracePeriodSeconds": 9})  # longer: ignored
    assert same["metadata"]["deletionGracePeriodSeconds"] == 5
    # an update (the kubelet's status) cannot clear it
    cur = raw(c, "GET", f"{base}/g1")[1]
    cur["metadata"].pop("deletionTimestamp")
    assert raw(c, "PUT", f"{base}/g1", body=cur)[1]["metadata"]["deletionTimestamp"]
    s, body = raw(c, "DELETE", f"{base}/g1", body={"gracePeriodSeconds": 0})  # the kubelet's
    assert s == 200 and body["status"] == "Success"
    assert raw(c, "GET", f"{base}/g1")[0] == 404
    mk("g2", node=None)  # never scheduled: nothing to stop
    assert raw(c, "DELETE", f"{base}/g2")[1]["status"] == "Success"
    mk("g3")
    assert raw(c, "DELETE", f"{base}/g3?gracePeriodSeconds=0")[1]["status"] == "Success"
    assert raw(c, "GET", f"{base}/g3")[0] == 404
    mk("g4")
    assert raw(c, "DELETE", f"{base}/g4", body={"gracePeriodSeconds": "soon"})[0] == 400


def test_generate_name(c):
    """metadata.generateName gets a random suffix."""
    s, obj = raw(c, "POST", CM, body={"metadata": {"generateName": "gen-"}})
    assert s == 201 and obj["metadata"]["name"].startswith("gen-") and len(obj["metadata"]["name"]) == 9


# ---- patches ---------------------------------------------------------------------------------


def test_strategic_merge_patch_uses_merge_keys(c):
    """Strategic merge: containers/env/volumes by name, volumeMounts by mountPath, ports by containerPort."""
    raw(c, "POST", EXT, body=deployment("smp"))
    p = {
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": "app",
                            "env": [{"name": "B", "value": "2"}],
                            "volumeMounts": [{"name": "ca", "mountPath": "/ca"}],
                            "ports": [{"containerPort": 443}],
                        },
                        {"name": "side", "image": "busybox"},
                    ],
                    "volumes": [{"name": "ca", "configMap": {"name": "ca"}}],
                }
            }
        }
    }
    s, d = raw(c, "PATCH", f"{EXT}/smp", body=p, content_type="application/strategic-merge-patch+json")
    assert s == 200
    spec = d["spec"]["template"]["spec"]
    app = spec["containers"][0]
    assert [x["name"] for x in spec["containers"]] == ["app", "side"]
    assert app["image"] == "debian:9" and [e["name"] for e in app["env"]] == ["A", "B"]
    assert [m["mountPath"] for m in app["volumeMounts"]] == ["/v", "/ca"]
    assert [p["containerPort"] for p in app["ports"]] == [80, 443]
    assert [v["name"] for v in spec["volumes"]] == ["v", "ca"]


def test_strategic_merge_patch_directives(c):
    """`$patch: delete` removes a list element by key; `$patch: replace` replaces a list or map."""
    raw(c, "POST", EXT, body=deployment("dir"))
    s, d = raw(
        c,
        "PATCH",
        f"{EXT}/dir",
        content_type="application/strategic-merge-patch+json",
        body={
            "spec": {
                "template": {
                    "spec": {
                        "volumes": [{"name": "v", "$patch": "delete"}],
                        "containers": [{"name": "app", "env": [{"$patch": "replace"}, {"name": "Z", "value": "z"}]}],
                    }
                }
            }
        },
    )
    assert s == 200
    assert "volumes" not in d["spec"]["template"]["spec"] or d["spec"]["template"]["spec"]["volumes"] == []
    assert d["spec"]["template"]["spec"]["containers"][0]["env"] == [{"name": "Z", "value": "z"}]
    s, d = raw(
        c,
        "PATCH",
        f"{EXT}/dir",
        content_type="application/strategic-merge-patch+json",
        body={"metadata": {"labels": {"$patch": "replace", "only": "this"}}},
    )
    assert d["metadata"]["labels"] == {"only": "this"}


def test_json_merge_patch_replaces_lists(c):
    """RFC 7386: lists are replaced; null deletes."""
    raw(c, "POST", EXT, body=deployment("jmp"))
    s, d = raw(
        c,
        "PATCH",
        f"{EXT}/jmp",
        content_type="application/merge-patch+json",
        body={
            "metadata": {"labels": {"app": None, "new": "1"}},
            "spec": {"template": {"spec": {"containers": [{"name": "only", "image": "x"}]}}},
        },
    )
    assert s == 200 and d["metadata"]["labels"] == {"new": "1"}
    assert [x["name"] for x in d["spec"]["template"]["spec"]["containers"]] == ["only"]


def test_json_patch_operations_and_failed_test(c):
    """RFC 6902: add/replace/remove/test; a failing test op -> 422 and nothing written."""
    raw(c, "POST", CM, body={"metadata": {"name": "jp"}, "data": {"a": "1"}})
    s, cm = raw(
        c,
        "PATCH",
        f"{CM}/jp",
        content_type="application/json-patch+json",
        body=[
            {"op": "test", "path": "/data/a", "value": "1"},
            {"op": "add", "path": "/data/b", "value": "2"},
            {"op": "replace", "path": "/data/a", "value": "9"},
            {"op": "remove", "path": "/data/b"},
        ],
    )
    assert s == 200 and cm["data"] == {"a": "9"}
    rv = cm["metadata"]["resourceVersion"]
    s, body = raw(
        c,
        "PATCH",
        f"{CM}/jp",
        content_type="application/json-patch+json",
        body=[{"op": "test", "path": "/data/a", "value": "1"}, {"op": "add", "path": "/data/c", "value": "x"}],
    )
    assert s == 422
    assert raw(c, "GET", f"{CM}/jp")[1]["metadata"]["resourceVersion"] == rv


def test_patch_with_stale_resource_version_conflicts(c):
    """A patch carrying metadata.resourceVersion is a precondition (409 when stale); without it, no conflict."""
    raw(c, "POST", CM, body={"metadata": {"name": "pc"}})
    s, body = raw(
        c,
        "PATCH",
        f"{CM}/pc",
        content_type="application/merge-patch+json",
        body={"metadata": {"resourceVersion": "1"}, "data": {"a": "b"}},
    )
    assert s == 409
    assert raw(c, "PATCH", f"{CM}/pc", content_type="application/merge-patch+json", body={"data": {"a": "b"}})[0] == 200


# ---- selectors -------------------------------------------------------------------------------


def test_label_and_field_selectors_on_list(c):
    """labelSelector (=, !=, in, notin, exists, !) and fieldSelector (metadata.name, status.phase, spec.nodeName)."""
    v1 = k.CoreV1Api(c)
    v1.create_namespace({"metadata": {"name": "sel"}})
    for name, labels, node in (
        ("a", {"app": "web", "tier": "fe"}, "n1"),
        ("b", {"app": "web"}, "n2"),
        ("c", {"app": "db"}, "n1"),
    ):
        v1.create_namespaced_pod(
            "sel",
            {
                "metadata": {"name": name, "labels": labels},
                "spec": {"nodeName": node, "containers": [{"name": "c", "image": "i"}]},
            },
        )
    names = lambda **kw: [p.metadata.name for p in v1.list_namespaced_pod("sel", **kw).items]
    assert names(label_selector="app=web") == ["a", "b"]
    assert names(label_selector="app!=web") == ["c"]
    assert names(label_selector="app in (db, cache)") == ["c"]
    assert names(label_selector="app notin (db),tier") == ["a"]
    assert names(label_selector="!tier") == ["b", "c"]
    assert names(field_selector="spec.nodeName=n1") == ["a", "c"]
    assert names(field_selector="metadata.name=b") == ["b"]
    assert names(field_selector="status.phase=Pending,spec.nodeName!=n1") == ["b"]
    assert [p.metadata.name for p in v1.list_pod_for_all_namespaces(field_selector="metadata.namespace=sel").items] == [
        "a",
        "b",
        "c",
    ]
    s, body = raw(c, "GET", "/api/v1/namespaces/sel/pods", query={"fieldSelector": "spec.bogus=1"})
    assert s == 400 and "is not a known field selector" in body["message"]


# ---- discovery -------------------------------------------------------------------------------


def test_discovery_and_version(c):
    """/version says v1.7.x; /api, /apis and per-group resource lists with verbs."""
    assert k.VersionApi(c).get_code().git_version.startswith("v1.7.")
    assert raw(c, "GET", "/api")[1]["versions"] == ["v1"]
    groups = {g["name"]: [v["version"] for v in g["versions"]] for g in raw(c, "GET", "/apis")[1]["groups"]}
    assert groups["apps"] == ["v1beta1"] and groups["extensions"] == ["v1beta1"]
    assert groups["admissionregistration.k8s.io"] == ["v1alpha1"]
    assert "v1beta1" in groups["rbac.authorization.k8s.io"]
    res = {r["name"]: r for r in raw(c, "GET", "/apis/extensions/v1beta1")[1]["resources"]}
    assert res["deployments"]["namespaced"] and "watch" in res["deployments"]["verbs"]
    assert "daemonsets" in res and "deployments/status" in res
    core = {r["name"]: r for r in raw(c, "GET", "/api/v1")[1]["resources"]}
    assert core["namespaces"]["namespaced"] is False and "pods/status" in core
    s, body = raw(c, "GET", "/apis/storage.k8s.io/v1/storageclasses")  # a group kubesim does not serve
    assert s == 404 and body == "404 page not found\n"  # net/http's NotFound, not a Status


def test_version_1_13():
    """--k8s-version 1.13 reports v1.13.x."""
    srv = APIServer(k8s_version="1.13").start()
    try:
        assert k.VersionApi(api_client_for(srv)).get_code().git_version.startswith("v1.13.")
    finally:
        srv.stop()


# ---- bad input -------------------------------------------------------------------------------


def test_malformed_json_is_400(c):
    s, body = raw(c, "POST", CM, body="{not json")
    assert s == 400 and body["reason"] == "BadRequest"


def test_wrong_kind_or_api_version_is_400(c):
    s, body = raw(c, "POST", CM, body={"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "x"}})
    assert s == 400 and "ConfigMap" in body["message"]
    s, body = raw(c, "POST", EXT, body=dict(deployment("x"), apiVersion="apps/v1beta1", kind="Deployment"))
    assert s == 400 and "does not match the expected API version (extensions/v1beta1)" in body["message"]


def test_missing_and_invalid_names_are_422(c):
    s, body = raw(c, "POST", CM, body={"metadata": {}})
    assert s == 422 and body["message"] == (
        'ConfigMap "" is invalid: metadata.name: Required value: name or generateName is required'
    )
    s, body = raw(c, "POST", CM, body={"metadata": {"name": "Bad_Name"}})
    assert s == 422 and body["reason"] == "Invalid"
    assert body["message"].startswith(
        'ConfigMap "Bad_Name" is invalid: metadata.name: Invalid value: "Bad_Name": '
        "a DNS-1123 subdomain must consist of lower case"
    )
    assert body["details"]["causes"][0]["field"] == "metadata.name"
    s, body = raw(c, "POST", "/api/v1/namespaces", body={"metadata": {"name": "a.b"}})
    assert s == 422 and "DNS-1123 label" in body["message"]


def test_oversized_body_is_413_and_server_keeps_serving(srv, c):
    s, body = raw(c, "POST", CM, body={"metadata": {"name": "big"}, "data": {"x": "y" * (3 * 1024 * 1024 + 10)}})
    assert s == 413 and body["reason"] == "RequestEntityTooLarge"
    assert raw(c, "GET", f"{CM}/big")[0] == 404
    assert raw(c, "POST", CM, body={"metadata": {"name": "after-big"}})[0] == 201


def test_garbage_on_the_wire_does_not_kill_the_server(srv, c):
    """A client speaking nonsense (plain HTTP to the TLS port, half a request) does not affect others."""
    host, port = srv.url.rsplit("//", 1)[1].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\n\r\n")
        try:
            s.recv(100)
        except ConnectionResetError:
            pass
    ctx = ssl.create_default_context(cafile=srv.ca_file)
    with socket.create_connection((host, int(port)), timeout=5) as s, ctx.wrap_socket(s, server_hostname=host) as t:
        t.sendall(b"POST /api/v1/namespaces/default/configmaps HTTP/1.1\r\nContent-Length: 100\r\n\r\n{")
    assert raw(c, "GET", CM)[0] == 200


# ---- kubeconfig + CLI ------------------------------------------------------------------------


def test_kubeconfig_loads_with_official_client(kubeconfig_path):
    """The written kubeconfig works with kubernetes.config.load_kube_config (CA data + bearer token)."""
    cfg = k.Configuration()
    kubernetes.config.load_kube_config(config_file=kubeconfig_path, client_configuration=cfg)
    api = k.CoreV1Api(k.ApiClient(cfg))
    assert "default" in [n.metadata.name for n in api.list_namespace().items]


def test_fixture_client_and_sa_kubeconfig(kubesim_server, kube_api_client, tmp_path):
    """kube_api_client is admin; write_kubeconfig(token=...) gives a ServiceAccount kubeconfig."""
    assert k.CoreV1Api(kube_api_client).list_node().items == []
    path = kubesim_server.write_kubeconfig(str(tmp_path / "sa"), token=kubesim_server.service_account_token("default", "x"))
    cfg = k.Configuration()
    kubernetes.config.load_kube_config(config_file=path, client_configuration=cfg)
    with pytest.raises(k.ApiException) as e:
        k.CoreV1Api(k.ApiClient(cfg)).list_node()
    assert e.value.status == 403


def test_extra_sans_on_serving_certificate(tmp_path):
    """APIServer(sans=[...]) puts extra IPs/DNS names on the certificate (kubernetes.default.svc always)."""
    from cryptography import x509

    srv = APIServer(sans=["198.18.0.1", "api.kubesim.test"]).start()
    try:
        host, port = srv.url.rsplit("//", 1)[1].rsplit(":", 1)
        pem = ssl.get_server_certificate((host, int(port)))
        san = x509.load_pem_x509_certificate(pem.encode()).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        ips = [str(i) for i in san.get_values_for_type(x509.IPAddress)]
        dns = san.get_values_for_type(x509.DNSName)
        assert "198.18.0.1" in ips and "127.0.0.1" in ips
        assert "api.kubesim.test" in dns and "kubernetes.default.svc" in dns
    finally:
        srv.stop()


def test_cli_serve_writes_kubeconfig_and_exits_cleanly_on_sigterm(tmp_path):
    """`python -m kubesim serve` writes the kubeconfig once ready and exits 0 on SIGTERM."""
    kc = tmp_path / "kc"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kubesim",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--kubeconfig",
            str(kc),
            "--k8s-version",
            "1.13",
            "--faults",
            "latency_ms=1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    try:
        deadline = time.monotonic() + 20
        while not kc.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert kc.exists(), proc.stderr.read1().decode() if proc.poll() is not None else "no kubeconfig"
        cfg = k.Configuration()
        kubernetes.config.load_kube_config(config_file=str(kc), client_configuration=cfg)
        assert k.VersionApi(k.ApiClient(cfg)).get_code().git_version.startswith("v1.13.")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    logs = [json.loads(line) for line in proc.stderr.read().decode().splitlines() if line.startswith("{")]
    assert any(l["event"] == "kubeconfig_written" for l in logs)


def _cli(argv):
    import argparse

    from kubesim.apiserver import cli
    import structlog

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    try:
        return cli.run(parser.parse_args(argv))
    finally:
        structlog.reset_defaults()  # run() points structlog at this test's (captured) stderr


def test_cli_rejects_bad_faults_spec(tmp_path, capsys):
    assert _cli(["--kubeconfig", str(tmp_path / "kc"), "--faults", "bogus=1"]) == 2
    assert "unknown fault 'bogus'" in capsys.readouterr().err
    assert _cli(["--kubeconfig", str(tmp_path / "kc"), "--listen", "nocolon"]) == 2
    assert "--listen must be HOST:PORT" in capsys.readouterr().err


def test_service_cluster_ip_allocation(c):
    """Services get a free clusterIP from the service range; a requested one must be free and in range."""
    v1 = k.CoreV1Api(c)
    a = v1.create_namespaced_service("default", {"metadata": {"name": "svc-a"}, "spec": {"ports": [{"port": 80}]}})
    b = v1.create_namespaced_service("default", {"metadata": {"name": "svc-b"}, "spec": {"ports": [{"port": 80}]}})
    assert a.spec.cluster_ip.startswith("10.") and a.spec.cluster_ip != b.spec.cluster_ip
    assert a.spec.ports[0].target_port == 80 and a.spec.ports[0].protocol == "TCP"
    s, body = raw(
        c,
        "POST",
        "/api/v1/namespaces/default/services",
        body={"metadata": {"name": "svc-c"}, "spec": {"clusterIP": a.spec.cluster_ip, "ports": [{"port": 1}]}},
    )
    assert s == 422 and "already allocated" in body["message"]
    s, body = raw(
        c,
        "POST",
        "/api/v1/namespaces/default/services",
        body={"metadata": {"name": "svc-d"}, "spec": {"clusterIP": "None", "ports": [{"port": 1}]}},
    )
    assert s == 201 and body["spec"]["clusterIP"] == "None"


def test_metrics_endpoint_counts_requests(srv, c):
    """/metrics exposes Prometheus counters per verb/resource/code."""
    raw(c, "GET", f"{CM}/does-not-exist")
    import urllib.request

    ctx = ssl.create_default_context(cafile=srv.ca_file)
    text = urllib.request.urlopen(srv.url + "/metrics", context=ctx, timeout=5).read().decode()
    assert 'kubesim_apiserver_requests_total{code="404",resource="configmaps",verb="get"}' in text
    assert "kubesim_apiserver_resource_version" in text


def test_abandoned_watch_is_released(srv, c):
    """A client that closes an idle watch frees its watcher within about a second."""
    before = sum(len(w) for w in srv.store.watchers.values())
    resp = c.call_api(
        "/api/v1/secrets",
        "GET",
        query_params=[("watch", "true"), ("resourceVersion", str(srv.store.rv))],
        auth_settings=["BearerToken"],
        _preload_content=False,
        _return_http_data_only=True,
    )
    deadline = time.monotonic() + 5
    while sum(len(w) for w in srv.store.watchers.values()) == before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sum(len(w) for w in srv.store.watchers.values()) == before + 1
    resp.close()
    resp.release_conn()
    deadline = time.monotonic() + 5
    while sum(len(w) for w in srv.store.watchers.values()) > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sum(len(w) for w in srv.store.watchers.values()) == before


def test_pod_template_validation(c):
    """Pod-spec validation that catches manifest mistakes: missing image, duplicate names, selector/labels."""
    d = deployment("val")
    d["spec"]["template"]["spec"]["containers"].append({"name": "app"})
    d["spec"]["template"]["spec"]["volumes"].append({"name": "v", "emptyDir": {}})
    d["spec"]["selector"] = {"matchLabels": {"app": "other"}}
    s, body = raw(c, "POST", EXT, body=d)
    assert s == 422
    msg = body["message"]
    assert 'spec.template.spec.containers[1].name: Duplicate value: "app"' in msg
    assert "spec.template.spec.containers[1].image: Required value" in msg
    assert 'spec.template.spec.volumes[1].name: Duplicate value: "v"' in msg
    assert "`selector` does not match template `labels`" in msg
    fields = {c_["field"] for c_ in body["details"]["causes"]}
    assert "spec.template.metadata.labels" in fields


def test_yaml_request_body(c):
    """application/yaml bodies are accepted like JSON (kubectl --output-ish clients)."""
    s, obj = raw(
        c,
        "POST",
        CM,
        body="apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: from-yaml\ndata:\n  a: b\n",
        content_type="application/yaml",
    )
    assert s == 201 and obj["data"] == {"a": "b"}


def test_structurally_wrong_bodies_are_400(c):
    """A list where an object belongs cannot be decoded: 400, and the server keeps serving."""
    for body in (
        {"metadata": {"name": "s1"}, "spec": ["x"]},
        {"metadata": {"name": "s2"}, "spec": {"template": "nope"}},
        {"metadata": ["x"]},
    ):
        s, st = raw(c, "POST", EXT, body=body)
        assert s in (400, 422), (body, s, st)
    assert raw(c, "GET", EXT)[0] == 200


def test_stop_drops_keepalive_connections_and_restart_keeps_state():
    """stop() cuts open keep-alive connections (clients see the outage); start(port=srv.port) resumes
    with the same objects, CA and tokens (an API-server restart)."""
    srv = APIServer().start()
    try:
        c = api_client_for(srv)
        v1 = k.CoreV1Api(c)
        v1.create_namespaced_config_map("default", {"metadata": {"name": "survivor"}})
        token = srv.service_account_token("default", "x")
        port, ca = srv.port, srv.ca_pem
        srv.stop()
        c.rest_client.pool_manager.connection_pool_kw["retries"] = False
        with pytest.raises(Exception):
            v1.read_namespaced_config_map("survivor", "default", _request_timeout=2)
        srv.start(port=port)
        assert srv.ca_pem == ca
        c2 = api_client_for(srv)
        assert k.CoreV1Api(c2).read_namespaced_config_map("survivor", "default").metadata.name == "survivor"
        assert raw(api_client_for(srv, token), "GET", "/api/v1/namespaces/default/pods")[0] == 403
    finally:
        srv.stop()


def test_ipv6_listen():
    """start(host="::1") serves on IPv6 loopback; ::1 is on the certificate."""
    srv = APIServer().start(host="::1")
    try:
        assert srv.url.startswith("https://[::1]:")
        assert raw(api_client_for(srv), "GET", "/api/v1/namespaces")[0] == 200
    finally:
        srv.stop()


def test_server_factory_fixture(kubesim_server_factory):
    """kubesim_server_factory starts servers with any options and stops them at teardown."""
    srv = kubesim_server_factory(k8s_version="1.13", history=3)
    assert k.VersionApi(api_client_for(srv)).get_code().minor == "13"
    assert srv.store.history_size == 3


def test_start_on_a_busy_port_raises_and_cli_reports_it(tmp_path, capsys):
    """Binding a port in use raises OSError in-process; `kubesim serve` returns 1 with a clear message."""
    srv = APIServer().start()
    try:
        other = APIServer()
        with pytest.raises(OSError):
            other.start(port=srv.port)
        assert _cli(["--listen", f"127.0.0.1:{srv.port}", "--kubeconfig", str(tmp_path / "kc")]) == 1
        assert f"cannot listen on 127.0.0.1:{srv.port}" in capsys.readouterr().err
        assert not (tmp_path / "kc").exists()
    finally:
        srv.stop()
