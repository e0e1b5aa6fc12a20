"""The real Helm 3 and kubectl binaries against kubesim, with the flags a user types (issue 14).

Both modes: 1.13 takes every command exactly as documented (client-side validation against
/openapi/v2 included); 1.7 served no /openapi/v2, so there a user passes ``--disable-openapi-validation``
(helm) / ``--validate=false`` (kubectl) and creates the namespace first (``helm install
--create-namespace`` always validates the Namespace it builds, whatever the flag says).
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
from pathlib import Path

import pytest
import yaml

from kubesim.apiserver import openapi, protobuf
from kubesim.demo import no_openapi_flags
from kubesim.polling import timeout_scale

REPO = Path(__file__).resolve().parent.parent
HELM = os.environ.get("TPROXY_HELM", str(REPO / ".tools" / "bin" / "helm"))
KUBECTL = os.environ.get("TPROXY_KUBECTL", str(REPO / ".tools" / "bin" / "kubectl"))
VALUES = "tproxy.useInitializer=true,tproxy.useRBAC=true"


class Clients:
    def __init__(self, srv, kubeconfig: str, home: Path):
        self.srv, self.version = srv, srv.k8s_version
        self.env = {
            **os.environ,
            "KUBECONFIG": kubeconfig,
            "HOME": str(home),
            "HELM_CACHE_HOME": str(home / "cache"),
            "HELM_CONFIG_HOME": str(home / "config"),
            "HELM_DATA_HOME": str(home / "data"),
        }
        self.helm_flags, self.kubectl_flags = no_openapi_flags(self.version)

    def run(self, binary: str, *args: str, check: bool = True, stdin: str | None = None):
        proc = subprocess.run([binary, *args], capture_output=True, text=True, timeout=90, env=self.env, cwd=REPO, input=stdin)
        if check and proc.returncode != 0:
            raise AssertionError(f"{Path(binary).name} {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def helm(self, *args, **kw):
        return self.run(HELM, *args, **kw)

    def kubectl(self, *args, **kw):
        return self.run(KUBECTL, *args, **kw)

    def get(self, *args) -> dict:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def install(self, *extra):
        """The README's install, as a user of this version types it."""
        if self.version == "1.7":
            self.kubectl("create", "namespace", "tproxy")
            return self.helm("install", "tproxy", "chart/", "--namespace", "tproxy", "--set", VALUES, *self.helm_flags, *extra)
        return self.helm("install", "tproxy", "chart/", "--namespace", "tproxy", "--create-namespace", "--set", VALUES, *extra)


@pytest.fixture(params=["1.7", "1.13"])
def clients(request, kubesim_server_factory, tmp_path):
    for b in (HELM, KUBECTL):
        if not os.path.exists(b):
            pytest.fail(f"{b} is missing: run `make setup`")
    srv = kubesim_server_factory(k8s_version=request.param)
    return Clients(srv, srv.write_kubeconfig(str(tmp_path / "kubeconfig")), tmp_path)


def release_names(c: Clients) -> set[str]:
    """Every object of the rendered release, as kind/name."""
    text = c.helm("template", "tproxy", "chart/", "--namespace", "tproxy", "--set", VALUES).stdout
    return {f"{d['kind']}/{d['metadata']['name']}" for d in yaml.safe_load_all(text) if d}


# ---- Helm 3 lifecycle ---------------------------------------------------------------------------------


def test_helm_lifecycle_install_list_status_upgrade_history_rollback_uninstall(clients):
    c = clients
    out = c.install().stdout
    assert "STATUS: deployed" in out and "REVISION: 1" in out
    listed = json.loads(c.helm("list", "-n", "tproxy", "-o", "json").stdout)
    assert [(r["name"], r["status"], r["revision"]) for r in listed] == [("tproxy", "deployed", "1")]
    assert "STATUS: deployed" in c.helm("status", "tproxy", "-n", "tproxy").stdout
    # the release record is a protobuf-encoded Secret, stored faithfully
    secret = c.get("secret", "-n", "tproxy", "sh.helm.release.v1.tproxy.v1")
    assert secret["type"] == "helm.sh/release.v1"
    assert {k: v for k, v in secret["metadata"]["labels"].items() if k != "modifiedAt"} == {
        "name": "tproxy",
        "owner": "helm",
        "status": "deployed",
        "version": "1",
    }
    dep = c.get("deployments.extensions", "-n", "kube-system", "tproxy-tproxy-initializer")
    assert dep["spec"]["replicas"] == 2

    c.helm(
        "upgrade", "tproxy", "chart/", "-n", "tproxy", "--reuse-values", "--set", "tproxy.initializer.replicas=1", *c.helm_flags
    )
    dep = c.get("deployments.extensions", "-n", "kube-system", "tproxy-tproxy-initializer")
    assert dep["spec"]["replicas"] == 1
    assert dep["spec"]["template"]["spec"]["containers"]  # the three-way merge kept the rest

    c.helm("rollback", "tproxy", "1", "-n", "tproxy")
    assert c.get("deployments.extensions", "-n", "kube-system", "tproxy-tproxy-initializer")["spec"]["replicas"] == 2
    history = json.loads(c.helm("history", "tproxy", "-n", "tproxy", "-o", "json").stdout)
    assert [(h["revision"], h["status"]) for h in history] == [(1, "superseded"), (2, "superseded"), (3, "deployed")]
    assert history[-1]["description"] == "Rollback to 1"

    c.helm("uninstall", "tproxy", "-n", "tproxy")
    assert json.loads(c.helm("list", "-A", "-o", "json").stdout) == []
    left = c.kubectl(
        "get",
        "clusterroles,clusterrolebindings,initializerconfigurations,daemonsets,deployments,"
        "configmaps,secrets,serviceaccounts,roles,rolebindings",
        "--all-namespaces",
        "-o",
        "name",
    ).stdout
    names = {line.split("/", 1)[1] for line in left.split()}
    assert not {n.split("/", 1)[1] for n in release_names(c)} & names, left
    assert not [n for n in names if n.startswith("sh.helm.release")]


def test_helm_install_validates_against_openapi_only_where_the_server_has_it(clients):
    c = clients
    if c.version == "1.13":
        c.install()
        return
    c.kubectl("create", "namespace", "tproxy")
    proc = c.helm("install", "tproxy", "chart/", "--namespace", "tproxy", "--set", VALUES, check=False)
    assert proc.returncode != 0 and "failed to download openapi" in proc.stderr
    assert c.get("secrets", "-n", "tproxy")["items"] == [
        i for i in c.get("secrets", "-n", "tproxy")["items"] if i["type"] != "helm.sh/release.v1"
    ]


def test_helm_rejects_a_chart_with_an_unknown_field_on_1_13(kubesim_server_factory, tmp_path):
    srv = kubesim_server_factory(k8s_version="1.13")
    c = Clients(srv, srv.write_kubeconfig(str(tmp_path / "kc")), tmp_path)
    chart = tmp_path / "bad"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: bad\nversion: 0.1.0\n")
    (chart / "templates" / "cm.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: bad\ndataa:\n  k: v\n")
    proc = c.helm("install", "bad", str(chart), check=False)
    assert proc.returncode != 0
    assert 'unknown field "dataa"' in proc.stderr
    assert c.get("configmaps")["items"] == []


# ---- OpenAPI ----------------------------------------------------------------------------------------


def test_openapi_v2_is_served_in_json_and_protobuf_on_1_13_only(kubesim_server_factory):
    import ssl
    import urllib.error
    import urllib.request

    for version in ("1.13", "1.7"):
        srv = kubesim_server_factory(k8s_version=version)
        ctx = ssl.create_default_context(cafile=srv.ca_file)

        def fetch(accept):
            req = urllib.request.Request(
                srv.url + "/openapi/v2", headers={"Accept": accept, "Authorization": f"Bearer {srv.admin_token}"}
            )
            with urllib.request.urlopen(req, context=ctx) as r:
                return r.headers["Content-Type"], r.read()

        if version == "1.7":
            with pytest.raises(urllib.error.HTTPError) as e:
                fetch("application/json")
            assert e.value.code == 404
            continue
        ctype, data = fetch("application/json")
        doc = json.loads(data)
        dep = doc["definitions"]["io.k8s.api.extensions.v1beta1.Deployment"]
        assert dep["x-kubernetes-group-version-kind"] == [{"group": "extensions", "kind": "Deployment", "version": "v1beta1"}]
        assert doc["definitions"]["io.k8s.apimachinery.pkg.util.intstr.IntOrString"]["format"] == "int-or-string"
        ctype, data = fetch(openapi.PROTO_MEDIA_TYPE)
        assert ctype == openapi.PROTO_CONTENT_TYPE
        pb = protobuf.message_class("openapi.v2.Document")()
        pb.ParseFromString(data)
        names = [d.name for d in pb.definitions.additional_properties]
        assert len(names) == len(doc["definitions"]) and "io.k8s.api.core.v1.Secret" in names


# ---- kubectl workflows ------------------------------------------------------------------------------


def test_kubectl_apply_create_get_label_annotate_patch_delete(clients):
    c = clients
    f = c.kubectl_flags
    assert "deployment.extensions/debian-app created" in c.kubectl("apply", *f, "-f", "examples/debian-app.yaml").stdout
    assert "unchanged" in c.kubectl("apply", *f, "-f", "examples/debian-app.yaml").stdout
    # re-apply with a change: last-applied annotation + a patch
    changed = (REPO / "examples" / "debian-app.yaml").read_text().replace("replicas: 1", "replicas: 3")
    assert "configured" in c.kubectl("apply", *f, "-f", "-", stdin=changed).stdout
    dep = c.get("deployments.extensions", "debian-app")
    assert dep["spec"]["replicas"] == 3
    last = json.loads(dep["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"])
    assert last["spec"]["replicas"] == 3
    # get forms
    assert c.kubectl("get", "deployments.extensions", "-o", "name").stdout.split() == ["deployment.extensions/debian-app"]
    assert "debian-app" in c.kubectl("get", "deployments.extensions", "-o", "wide").stdout
    assert yaml.safe_load(c.kubectl("get", "deployments.extensions", "debian-app", "-o", "yaml").stdout)["kind"] == "Deployment"
    ns = c.kubectl("get", "serviceaccounts", "--all-namespaces", "-o", "name").stdout.split()
    assert ns.count("serviceaccount/default") == 3
    c.kubectl("create", "configmap", "c1", "--from-literal=a=b")
    c.kubectl("label", "configmap", "c1", "tier=web")
    c.kubectl("annotate", "configmap", "c1", "note=hi")
    assert c.kubectl("get", "configmaps", "-l", "tier=web", "-o", "name").stdout.split() == ["configmap/c1"]
    assert c.kubectl("get", "configmaps", "-l", "tier=db", "-o", "name").stdout.split() == []
    c.kubectl("patch", "configmap", "c1", "-p", '{"data":{"a":"c"}}')
    c.kubectl("patch", "configmap", "c1", "--type=json", "-p", '[{"op":"add","path":"/data/z","value":"1"}]')
    c.kubectl("patch", "configmap", "c1", "--type=merge", "-p", '{"data":{"z":null}}')
    cm = c.get("configmap", "c1")
    assert cm["data"] == {"a": "c"} and cm["metadata"]["labels"] == {"tier": "web"}
    assert cm["metadata"]["annotations"] == {"note": "hi"}
    assert "Data" in c.kubectl("describe", "configmap", "c1").stdout
    c.kubectl("create", "secret", "generic", "s1", "--from-literal=k=v")
    assert c.kubectl("get", "secret", "s1", "-o", "jsonpath={.data.k}").stdout == "dg=="
    assert 'configmap "c1" deleted' in c.kubectl("delete", "configmap", "c1", "--wait").stdout
    assert c.kubectl("delete", "deployments.extensions", "debian-app", "--wait").returncode == 0
    assert c.get("configmaps")["items"] == []


def test_kubectl_apply_rejects_an_unknown_field_on_1_13_and_stores_nothing(kubesim_server_factory, tmp_path):
    srv = kubesim_server_factory(k8s_version="1.13")
    c = Clients(srv, srv.write_kubeconfig(str(tmp_path / "kc")), tmp_path)
    bad = (REPO / "examples" / "debian-app.yaml").read_text().replace("replicas: 1", "replicas: 1\n  bogusField: 3")
    proc = c.kubectl("apply", "-f", "-", stdin=bad, check=False)
    assert proc.returncode != 0
    assert 'unknown field "bogusField" in io.k8s.api.extensions.v1beta1.DeploymentSpec' in proc.stderr
    assert c.get("deployments.extensions")["items"] == []
    # and what a 1.13 user would see with --validate=false: the server drops the field
    c.kubectl("apply", "--validate=false", "-f", "-", stdin=bad)


def test_kubectl_get_watch_ends_at_the_request_timeout(clients):
    c = clients
    c.kubectl("create", "configmap", "w1", "--from-literal=a=b")
    out = c.kubectl("get", "configmaps", "-w", "--request-timeout=2s", check=False).stdout
    assert "w1" in out


def test_kubectl_logs_without_a_kubelet_says_the_container_is_waiting(clients):
    c = clients
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "app", "image": "busybox"}, {"name": "side", "image": "busybox"}]},
    }
    c.kubectl("create", *c.kubectl_flags, "-f", "-", stdin=json.dumps(pod))
    proc = c.kubectl("logs", "p", "-c", "app", check=False)
    assert proc.returncode != 0 and 'container "app" in pod "p" is waiting to start' in proc.stderr
    proc = c.kubectl("logs", "p", "-c", "nope", check=False)
    assert "container nope is not valid for pod p" in proc.stderr


def test_kubectl_logs_reads_the_kubelets_files_with_tail_limit_and_previous(clients, tmp_path):
    c = clients
    log = tmp_path / "app.log"
    log.write_text("".join(f"line {i}\n" for i in range(1, 11)))
    c.srv.log_source = lambda pod, container: str(log) if container == "app" else None
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "app", "image": "busybox"}]},
    }
    c.kubectl("create", *c.kubectl_flags, "-f", "-", stdin=json.dumps(pod))
    assert c.kubectl("logs", "p").stdout.splitlines() == [f"line {i}" for i in range(1, 11)]
    assert c.kubectl("logs", "p", "-c", "app", "--tail=2").stdout == "line 9\nline 10\n"
    assert c.kubectl("logs", "p", "--limit-bytes=6").stdout == "line 1"
    proc = c.kubectl("logs", "p", "--previous", check=False)
    assert proc.returncode != 0 and 'previous terminated container "app" in pod "p" not found' in proc.stderr
    # -f streams appended lines until the client goes away
    follower = subprocess.Popen([KUBECTL, "logs", "-f", "p", "--tail=1"], stdout=subprocess.PIPE, text=True, env=c.env)
    # readline has no deadline of its own: a stream that stops delivering must fail the test, not hang it
    watchdog = threading.Timer(30 * timeout_scale(), follower.kill)
    watchdog.start()
    try:
        assert follower.stdout.readline() == "line 10\n"
        with open(log, "a") as f:
            f.write("line 11\n")
        assert follower.stdout.readline() == "line 11\n"
    finally:
        watchdog.cancel()
        follower.kill()
        follower.wait()


def test_kubectl_get_prints_the_server_side_columns_of_1_13(clients):
    """1.13 answers kubectl's Table request with its printers' columns; 1.7 had none (NAME, AGE)."""
    c = clients
    c.kubectl("apply", *c.kubectl_flags, "-f", "examples/debian-app.yaml")
    c.kubectl("create", "configmap", "c1", "--from-literal=a=b", "--from-literal=c=d")
    head = c.kubectl("get", "deployments.extensions").stdout.splitlines()[0].split()
    cms = c.kubectl("get", "configmaps").stdout.splitlines()
    wide = c.kubectl("get", "deployments.extensions", "-o", "wide").stdout.splitlines()
    if c.version == "1.7":
        assert head == ["NAME", "AGE"]
        return
    assert head == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]
    assert cms[0].split() == ["NAME", "DATA", "AGE"] and cms[1].split()[:2] == ["c1", "2"]
    assert wide[0].split()[-3:] == ["CONTAINERS", "IMAGES", "SELECTOR"]
    assert "example-app:debian" in wide[1] and "app=debian-app,variant=unlocked" in wide[1]
    ns = c.kubectl("get", "configmaps", "--all-namespaces").stdout.splitlines()
    assert ns[0].split()[:2] == ["NAMESPACE", "NAME"] and ns[1].split()[:2] == ["default", "c1"]


def test_new_objects_come_back_with_the_status_a_real_server_returns(clients):
    c = clients
    c.kubectl("apply", *c.kubectl_flags, "-f", "examples/debian-app.yaml")
    assert c.get("deployments.extensions", "debian-app")["status"] == {}
    svc = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]},
    }
    c.kubectl("create", *c.kubectl_flags, "-f", "-", stdin=json.dumps(svc))
    assert c.get("service", "web")["status"] == {"loadBalancer": {}}
    ds = {
        "apiVersion": "extensions/v1beta1",
        "kind": "DaemonSet",
        "metadata": {"name": "ds"},
        "spec": {
            "template": {"metadata": {"labels": {"app": "ds"}}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}}
        },
    }
    c.kubectl("create", *c.kubectl_flags, "-f", "-", stdin=json.dumps(ds))
    assert c.get("daemonsets.extensions", "ds")["status"] == {
        "currentNumberScheduled": 0,
        "numberMisscheduled": 0,
        "desiredNumberScheduled": 0,
        "numberReady": 0,
    }


def test_kubectl_get_in_chunks_sees_every_object_once(clients):
    """--chunk-size=2 makes kubectl list with limit/continue (1.13 pages, 1.7 ignores both)."""
    c = clients
    for i in range(5):
        c.kubectl("create", "configmap", f"c{i}", "--from-literal=a=b")
    out = c.kubectl("get", "configmaps", "--chunk-size=2", "-o", "name", "-v=6").stdout.split()
    assert out == [f"configmap/c{i}" for i in range(5)]
    import ssl
    import urllib.request

    ctx = ssl.create_default_context(cafile=c.srv.ca_file)

    def get(query):
        req = urllib.request.Request(
            f"{c.srv.url}/api/v1/namespaces/default/configmaps?{query}", headers={"Authorization": f"Bearer {c.srv.admin_token}"}
        )
        with urllib.request.urlopen(req, context=ctx) as r:
            return json.loads(r.read())

    first = get("limit=2")
    if c.version == "1.7":
        assert len(first["items"]) == 5 and "continue" not in first["metadata"]
        return
    assert [i["metadata"]["name"] for i in first["items"]] == ["c0", "c1"]
    second = get("limit=2&continue=" + first["metadata"]["continue"])
    assert [i["metadata"]["name"] for i in second["items"]] == ["c2", "c3"]
    assert second["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]
    import urllib.error

    with pytest.raises(urllib.error.HTTPError) as e:
        get("limit=2&continue=garbage")
    assert e.value.code == 400


def test_helm_install_wait_needs_apps_v1_which_1_7_does_not_serve(kubesim_server_factory, tmp_path):
    """Helm 3 reads Deployments and DaemonSets through apps/v1 to wait for them; a 1.7 server has no
    apps/v1, so `helm install --wait` fails there as against kubesim's 1.7 mode (nothing waits forever)."""
    srv = kubesim_server_factory(k8s_version="1.7")
    c = Clients(srv, srv.write_kubeconfig(str(tmp_path / "kc")), tmp_path)
    proc = c.helm(
        "install", "tproxy", "chart/", "--set", VALUES, "--disable-openapi-validation", "--wait", "--timeout", "20s", check=False
    )
    assert proc.returncode != 0 and "the server could not find the requested resource" in proc.stderr
