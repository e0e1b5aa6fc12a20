"""The netns kubelet against the kubesim API server: pods as processes in network namespaces.

One simulated cluster (node + internet namespaces, API server, kubelet) is shared by the module;
each test creates its own objects with unique names and waits by polling, never by sleeping blindly.
"""

import base64
import functools
import json
import os
import re
import subprocess
import sys

import pytest

from kubesim.testing import wait_for

pytestmark = [pytest.mark.root]

DEPLOY = "/apis/extensions/v1beta1/namespaces/default/deployments"
DS = "/apis/extensions/v1beta1/namespaces/default/daemonsets"


wait_for = functools.partial(wait_for, timeout=20.0, interval=0.1)


@pytest.fixture(scope="module")
def cluster():
    from kubesim.kubelet.cluster import SimCluster

    c = SimCluster(kubelet_options={"backoff_initial": 0.3, "backoff_cap": 1.0, "volume_refresh": 0.3})
    c.start()
    yield c
    c.stop()


def deployment(name, containers, *, replicas=1, volumes=None, init=None, labels=None, annotations=None, **spec):
    labels = labels or {"app": name}
    pod_spec = {"containers": containers, **spec}
    if volumes:
        pod_spec["volumes"] = volumes
    if init:
        pod_spec["initContainers"] = init
    tmeta = {"labels": labels}
    if annotations:
        tmeta["annotations"] = annotations
    return {
        "apiVersion": "extensions/v1beta1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": labels}, "template": {"metadata": tmeta, "spec": pod_spec}},
    }


def sh(name, script, **kw):
    return {"name": name, "image": "debian:12", "command": ["sh", "-c", script], **kw}


def log_of(cluster, pod, container):
    """The container's log so far; empty while the kubelet has not started the pod yet (the API
    object can be seen a moment before the kubelet's runtime knows it)."""
    try:
        return cluster.read_log(pod, container)
    except KeyError:
        return ""


def test_deployment_pods_are_created_owned_labelled_and_running(cluster):
    cluster.client.create(DEPLOY, deployment("web", [sh("c", "echo started; sleep 1000")], replicas=2))
    pods = cluster.wait_pods("app=web", count=2, timeout=20)
    dep = cluster.client.get(f"{DEPLOY}/web")
    ips = set()
    for p in pods:
        meta, st = p["metadata"], p["status"]
        (owner,) = meta["ownerReferences"]
        h = meta["labels"]["pod-template-hash"]
        assert h.isdigit()  # 1.7's decimal hash
        # Deployment -> ReplicaSet -> Pod, as 1.7's controllers own them (extensions/v1beta1)
        assert (owner["kind"], owner["name"], owner["apiVersion"], owner["controller"]) == (
            "ReplicaSet",
            f"web-{h}",
            "extensions/v1beta1",
            True,
        )
        rs = cluster.client.get(f"/apis/extensions/v1beta1/namespaces/default/replicasets/web-{h}")
        assert owner["uid"] == rs["metadata"]["uid"]
        (rs_owner,) = rs["metadata"]["ownerReferences"]
        assert (rs_owner["kind"], rs_owner["uid"], rs_owner["controller"]) == ("Deployment", dep["metadata"]["uid"], True)
        assert rs["spec"]["replicas"] == 2 and rs["spec"]["selector"]["matchLabels"]["pod-template-hash"] == h
        assert rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "1"
        assert meta["name"].startswith(f"web-{h}-")
        assert p["spec"]["nodeName"] == "node-1"
        assert st["phase"] == "Running" and st["hostIP"] == "198.18.0.1"
        assert st["podIP"].startswith("198.18.1.")
        assert st["containerStatuses"][0]["state"].get("running")
        ips.add(st["podIP"])
        wait_for(lambda: "started" in log_of(cluster, p, "c"), what="container output")
    assert len(ips) == 2


def test_env_fieldref_expansion_service_account_and_in_cluster_api(cluster):
    script = (
        'echo "name=$POD ns=$NS node=$NODE ip=$IP greeting=$GREETING"; '
        'echo "svc=$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT"; '
        "cat /var/run/secrets/kubernetes.io/serviceaccount/namespace; echo; "
        'curl -s -o /dev/null -w "api=%{http_code}\\n" --cacert /var/run/secrets/kubernetes.io/serviceaccount/ca.crt '
        '-H "Authorization: Bearer $(cat /var/run/secrets/kubernetes.io/serviceaccount/token)" '
        "https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT/version; sleep 1000"
    )
    env = [
        {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "WHO", "value": "world"},
        {"name": "GREETING", "value": "hello-$(WHO)"},
    ]
    cluster.client.create(DEPLOY, deployment("envy", [sh("c", script, env=env)]))
    pod = cluster.wait_pods("app=envy", timeout=20)[0]
    out = wait_for(lambda: "api=" in log_of(cluster, pod, "c") and log_of(cluster, pod, "c"), what="env output")
    name, ip = pod["metadata"]["name"], pod["status"]["podIP"]
    assert f"name={name} ns=default node=node-1 ip={ip} greeting=hello-world" in out
    assert "svc=198.18.0.1:6443" in out
    assert "\ndefault\n" in out
    assert "api=200" in out  # the pod reached the API server through the node with the SA's CA and token


def test_configmap_secret_emptydir_volumes_and_live_configmap_updates(cluster):
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "vol-cm"}, "data": {"a.txt": "alpha", "b.txt": "beta"}}
    sec = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "vol-sec"},
        "data": {"key": base64.b64encode(b"s3cret").decode()},
    }
    cluster.client.create("/api/v1/namespaces/default/configmaps", cm)
    cluster.client.create("/api/v1/namespaces/default/secrets", sec)
    volumes = [
        {"name": "cfg", "configMap": {"name": "vol-cm", "items": [{"key": "a.txt", "path": "renamed.txt"}]}},
        {"name": "all", "configMap": {"name": "vol-cm"}},
        {"name": "sec", "secret": {"secretName": "vol-sec"}},
        {"name": "scratch", "emptyDir": {}},
    ]
    writer = sh(
        "writer", "echo shared > /mnt/scratch/x; sleep 1000", volumeMounts=[{"name": "scratch", "mountPath": "/mnt/scratch"}]
    )
    reader = sh(
        "reader",
        "while true; do cat /srv/cfg/renamed.txt /etc/kubesim-test/all/b.txt /srv/sec/key /mnt/scratch/x "
        "2>/dev/null | tr '\\n' ' '; echo; sleep 0.3; done",
        volumeMounts=[
            {"name": "cfg", "mountPath": "/srv/cfg", "readOnly": True},
            {"name": "all", "mountPath": "/etc/kubesim-test/all"},
            {"name": "sec", "mountPath": "/srv/sec"},
            {"name": "scratch", "mountPath": "/mnt/scratch"},
        ],
    )
    cluster.client.create(DEPLOY, deployment("vols", [writer, reader], volumes=volumes))
    pod = cluster.wait_pods("app=vols", timeout=20)[0]
    wait_for(lambda: "alphabetas3cretshared" in log_of(cluster, pod, "reader"), what="volume contents")
    # the mount points exist only inside the container: the host is untouched
    assert not os.path.exists("/etc/kubesim-test") and not os.path.exists("/srv/cfg")
    cm["data"]["b.txt"] = "gamma"
    cur = cluster.client.get("/api/v1/namespaces/default/configmaps/vol-cm")
    cm["metadata"]["resourceVersion"] = cur["metadata"]["resourceVersion"]
    cluster.client.replace("/api/v1/namespaces/default/configmaps/vol-cm", cm)
    wait_for(lambda: "alphagammas3cretshared" in log_of(cluster, pod, "reader"), what="configmap update")


def test_capabilities_privileged_keeps_net_admin_others_lose_it(cluster):
    check = "iptables -t filter -S >/dev/null 2>&1 && echo NET_ADMIN=yes || echo NET_ADMIN=no; grep CapBnd /proc/self/status; sleep 1000"
    cluster.client.create(
        DEPLOY, deployment("caps", [sh("plain", check), sh("priv", check, securityContext={"privileged": True})])
    )
    pod = cluster.wait_pods("app=caps", timeout=20)[0]
    plain = wait_for(lambda: "CapBnd" in log_of(cluster, pod, "plain") and log_of(cluster, pod, "plain"))
    priv = wait_for(lambda: "CapBnd" in log_of(cluster, pod, "priv") and log_of(cluster, pod, "priv"))
    assert "NET_ADMIN=no" in plain and "NET_ADMIN=yes" in priv
    capbnd = int(plain.split("CapBnd:")[1].split()[0], 16)
    assert not capbnd & (1 << 12) and capbnd & (1 << 13)  # no CAP_NET_ADMIN, CAP_NET_RAW kept (ping)


def test_failing_init_container_restarts_with_backoff_and_keeps_the_pod_pending(cluster):
    flag = os.path.join(cluster.kubelet.hostfs, "initgate", "go")
    init = [sh("gate", "echo checking; test -f /mnt/gate/go", volumeMounts=[{"name": "gate", "mountPath": "/mnt/gate"}])]
    cluster.client.create(
        DEPLOY,
        deployment(
            "gated",
            [sh("app", "echo app-started; sleep 1000")],
            init=init,
            volumes=[{"name": "gate", "hostPath": {"path": "/initgate"}}],
        ),
    )
    pod = wait_for(lambda: next(iter(cluster.pods("default", "app=gated")), None), what="pod")

    def restarted():
        p = cluster.pods("default", "app=gated")[0]
        st = (p.get("status") or {}).get("initContainerStatuses") or [{}]
        return st[0].get("restartCount", 0) >= 2 and p

    p = wait_for(restarted, timeout=20, what="init container restarts")
    assert p["status"]["phase"] == "Pending"
    assert any(c["type"] == "Initialized" and c["status"] == "False" for c in p["status"]["conditions"])
    assert "app-started" not in log_of(cluster, pod, "app")
    assert log_of(cluster, pod, "gate").count("checking") >= 2
    os.makedirs(os.path.dirname(flag), exist_ok=True)
    open(flag, "w").close()
    cluster.wait_pods("app=gated", timeout=20)
    wait_for(lambda: "app-started" in log_of(cluster, pod, "app"), what="app start after init success")


def test_crashing_container_is_restarted(cluster):
    cluster.client.create(DEPLOY, deployment("crashy", [sh("c", "echo run; sleep 0.2; exit 3")]))
    pod = wait_for(lambda: next(iter(cluster.pods("default", "app=crashy")), None))

    def counted():
        p = cluster.pods("default", "app=crashy")[0]
        cs = ((p.get("status") or {}).get("containerStatuses") or [{}])[0]
        return cs.get("restartCount", 0) >= 2 and cs

    cs = wait_for(counted, timeout=20, what="restarts")
    assert cs["lastState"]["terminated"]["exitCode"] == 3
    wait_for(lambda: log_of(cluster, pod, "c").count("run") >= 3, what="output of every run, appended")


def test_a_container_ends_with_its_main_process(cluster):
    """As in a PID namespace, what a container left running when its main process exited (a
    background child here) is killed before the restart, so it cannot hold the container's ports."""
    cluster.client.create(DEPLOY, deployment("orphans", [sh("c", "sleep 1000 & echo child=$!; sleep 0.3; exit 3")]))
    pod = wait_for(lambda: next(iter(cluster.pods("default", "app=orphans")), None))
    first = wait_for(lambda: re.search(r"child=(\d+)", log_of(cluster, pod, "c")), what="the first run's child")
    child = int(first.group(1))

    def gone():
        try:
            with open(f"/proc/{child}/stat") as f:
                return f.read().split(") ", 1)[1].startswith("Z")
        except FileNotFoundError:
            return True

    wait_for(lambda: log_of(cluster, pod, "c").count("child=") >= 2, what="a restart")
    wait_for(gone, what=f"the first run's child {child} killed")


def test_scale_down_and_delete_stop_processes_and_remove_namespaces(cluster):
    cluster.client.create(DEPLOY, deployment("scaler", [sh("c", "sleep 1000")], replicas=3))
    pods = cluster.wait_pods("app=scaler", count=3, timeout=20)
    nets = {p["metadata"]["uid"]: cluster.pod_runtime(p).net.name for p in pods}
    dep = cluster.client.get(f"{DEPLOY}/scaler")
    dep["spec"]["replicas"] = 1
    cluster.client.replace(f"{DEPLOY}/scaler", dep)
    wait_for(lambda: len(cluster.pods("default", "app=scaler")) == 1, what="scale down")
    wait_for(lambda: sum(1 for n in nets.values() if n in listed_netns()) == 1, what="netns removal")
    cluster.client.delete(f"{DEPLOY}/scaler")
    wait_for(lambda: not cluster.pods("default", "app=scaler"), what="pods deleted with the deployment")
    wait_for(lambda: not any(n in listed_netns() for n in nets.values()), what="all netns removed")


def listed_netns():
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def test_daemonset_pod_runs_in_the_node_namespace(cluster):
    ds = {
        "apiVersion": "extensions/v1beta1",
        "kind": "DaemonSet",
        "metadata": {"name": "agent"},
        "spec": {
            "selector": {"matchLabels": {"app": "agent"}},
            "template": {
                "metadata": {"labels": {"app": "agent"}},
                "spec": {"hostNetwork": True, "containers": [sh("c", "ip -4 -o addr show dev lo; sleep 1000")]},
            },
        },
    }
    cluster.client.create(DS, ds)
    pods = cluster.wait_pods("app=agent", timeout=20)
    assert len(pods) == 1 and pods[0]["status"]["podIP"] == "198.18.0.1"
    assert pods[0]["metadata"]["ownerReferences"][0]["kind"] == "DaemonSet"
    wait_for(lambda: "198.18.0.1" in log_of(cluster, pods[0], "c"), what="node address seen from the pod")


def test_logs_cli_by_selector_and_tail(cluster):
    cluster.client.create(DEPLOY, deployment("talker", [sh("c", "for i in 1 2 3 4 5; do echo line$i; done; sleep 1000")]))
    pod = cluster.wait_pods("app=talker", timeout=20)[0]
    wait_for(lambda: "line5" in log_of(cluster, pod, "c"))
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    out = subprocess.run(
        [sys.executable, "-m", "kubesim", "logs", "--run-dir", cluster.run_dir, "--selector", "app=talker", "--tail", "2"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["line4", "line5"]
    out = subprocess.run(
        [sys.executable, "-m", "kubesim", "logs", "--run-dir", cluster.run_dir, "nope"], capture_output=True, text=True, env=env
    )
    assert out.returncode == 1 and 'pods "nope" not found' in out.stderr


def test_apply_cli_creates_then_updates_in_document_order(cluster, tmp_path):
    manifest = tmp_path / "m.yaml"
    manifest.write_text("""---
apiVersion: v1
kind: ConfigMap
metadata: {name: applied}
data: {k: one}
---
apiVersion: rbac.authorization.k8s.io/v1beta1
kind: ClusterRole
metadata: {name: applied-role}
rules: [{apiGroups: [""], resources: ["pods"], verbs: ["get"]}]
""")
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    argv = [sys.executable, "-m", "kubesim", "apply", "--kubeconfig", cluster.kubeconfig, "-f", str(manifest)]
    out = subprocess.run(argv, capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        'configmap "applied" created',
        'clusterrole.rbac.authorization.k8s.io "applied-role" created',
    ]
    manifest.write_text(manifest.read_text().replace("k: one", "k: two"))
    out = subprocess.run(argv, capture_output=True, text=True, env=env)
    assert 'configmap "applied" configured' in out.stdout
    assert cluster.client.get("/api/v1/namespaces/default/configmaps/applied")["data"]["k"] == "two"
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: v1\nkind: Frobnicator\nmetadata: {name: x}\n---\napiVersion: v1\nkind: ConfigMap\n"
        "metadata: {name: after-bad}\n"
    )
    out = subprocess.run([*argv[:-1], str(bad)], capture_output=True, text=True, env=env)
    assert out.returncode == 1 and 'no kind "Frobnicator"' in out.stderr
    assert 'configmap "after-bad" created' in out.stdout  # the rest is still applied


def test_stop_leaves_nothing_behind():
    """A second cluster: after stop(), no namespace, process or run dir of it remains."""
    from kubesim.kubelet.cluster import SimCluster

    c = SimCluster(internet=False)
    c.start()
    try:
        c.client.create(DEPLOY, deployment("ephemeral", [sh("c", "sleep 1000")]))
        pod = c.wait_pods("app=ephemeral", timeout=20)[0]
        rt = c.pod_runtime(pod)
        pid = rt.containers[0].proc.pid
        names = [rt.net.name, c.topology.node.name]
    finally:
        c.stop()
    assert not any(n in listed_netns() for n in names)
    assert not os.path.exists(f"/proc/{pid}")
    assert not os.path.exists(c.run_dir)


def test_deployment_and_daemonset_status_report_ready_replicas(cluster):
    cluster.client.create(DEPLOY, deployment("counted", [sh("c", "sleep 1000")], replicas=2))
    cluster.wait_pods("app=counted", count=2, timeout=20)
    st = wait_for(
        lambda: (
            (cluster.client.get(f"{DEPLOY}/counted").get("status") or {}).get("availableReplicas") == 2
            and cluster.client.get(f"{DEPLOY}/counted")["status"]
        ),
        what="deployment status",
    )
    assert st["replicas"] == 2 and st["readyReplicas"] == 2


def test_stale_namespaces_of_dead_kubesim_processes_are_removed():
    from kubesim.topology import cleanup_stale

    dead = subprocess.Popen(["true"])
    dead.wait()
    stale, alive = f"kspod-{dead.pid}-1", f"kspod-{os.getpid()}-99999"
    for n in (stale, alive):
        subprocess.run(["ip", "netns", "add", n], check=True)
    try:
        removed = cleanup_stale()
        assert stale in removed and alive not in removed
        assert alive in listed_netns() and stale not in listed_netns()
    finally:
        for n in (stale, alive):
            subprocess.run(["ip", "netns", "del", n], capture_output=True)


def test_kubelet_cli_cleans_up_everything_on_ctrl_c(tmp_path):
    import signal

    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    proc = subprocess.Popen(
        [sys.executable, "-m", "kubesim", "kubelet", "--run-dir", str(run_dir), "--no-internet", "--log-level", "warning"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        line = proc.stdout.readline()
        assert "cluster ready" in line, line
        from controllerkit.kube import Client

        client = Client.from_config(str(run_dir / "admin.kubeconfig"))
        client.create(DEPLOY, deployment("ctrlc", [sh("c", "sleep 1000")]))

        def running_pid():
            pods = client.list("/api/v1/namespaces/default/pods", labelSelector="app=ctrlc")["items"]
            cs = [(p.get("status") or {}).get("containerStatuses") or [{}] for p in pods]
            ids = [c[0].get("containerID", "") for c in cs if c[0].get("state", {}).get("running")]
            return ids and int(ids[0].rsplit("/", 1)[-1])

        pid = wait_for(running_pid, timeout=30, what="a running container")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not os.path.exists(f"/proc/{pid}")
    assert f"-{proc.pid}-" not in listed_netns()


def test_failing_liveness_probe_restarts_the_container(cluster):
    # serves /healthz for ~1 s, then stops answering: the kubelet must kill and restart it
    script = "cd /tmp && timeout 1 python3 -m http.server 8099 >/dev/null 2>&1; echo stopped-serving; sleep 1000"
    probe = {"httpGet": {"path": "/", "port": 8099}, "initialDelaySeconds": 2, "periodSeconds": 1, "failureThreshold": 2}
    cluster.client.create(DEPLOY, deployment("liveness", [sh("c", script, livenessProbe=probe)]))
    pod = cluster.wait_pods("app=liveness", timeout=20)[0]

    def restarted():
        p = cluster.pods("default", "app=liveness")[0]
        cs = ((p.get("status") or {}).get("containerStatuses") or [{}])[0]
        return cs.get("restartCount", 0) >= 1

    wait_for(restarted, timeout=20, what="a liveness restart")
    assert log_of(cluster, pod, "c").count("stopped-serving") >= 1


def test_a_bare_pod_is_bound_to_the_node_run_and_removed_on_delete(cluster):
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "bare", "labels": {"app": "bare"}},
        "spec": {"containers": [sh("c", "echo bare-ran; sleep 1000")]},
    }
    cluster.client.create("/api/v1/namespaces/default/pods", pod)
    p = cluster.wait_pods("app=bare", timeout=20)[0]
    assert p["spec"]["nodeName"] == "node-1"
    wait_for(lambda: "bare-ran" in log_of(cluster, p, "c"))
    net = cluster.pod_runtime(p).net.name
    cluster.client.delete("/api/v1/namespaces/default/pods/bare")
    wait_for(lambda: net not in listed_netns(), what="netns removed after the pod was deleted")


def test_mount_points_directly_under_root_exist_only_in_the_container(cluster):
    cluster.client.create(
        "/api/v1/namespaces/default/configmaps",
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "rootlevel"}, "data": {"f": "top-level"}},
    )
    c = sh(
        "c",
        "cat /kubesim-data/f; echo; getent hosts www.google.com; ls /opt/app/start.sh; sleep 1000",
        image="example-app:debian",
        volumeMounts=[{"name": "d", "mountPath": "/kubesim-data"}],
    )
    cluster.client.create(DEPLOY, deployment("rootlevel", [c], volumes=[{"name": "d", "configMap": {"name": "rootlevel"}}]))
    pod = cluster.wait_pods("app=rootlevel", timeout=20)[0]
    out = wait_for(lambda: "start.sh" in log_of(cluster, pod, "c") and log_of(cluster, pod, "c"))
    assert "top-level" in out
    assert "203.0.113.10" in out  # the pod's hosts file survived the private root
    assert not os.path.exists("/kubesim-data")


def test_env_from_configmap_and_secret_keys_and_a_missing_key_is_a_config_error(cluster):
    cluster.client.create(
        "/api/v1/namespaces/default/configmaps",
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "envsrc"}, "data": {"k": "cmval"}},
    )
    cluster.client.create(
        "/api/v1/namespaces/default/secrets",
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "envsec"},
            "data": {"k": base64.b64encode(b"secval").decode()},
        },
    )
    env = [
        {"name": "A", "valueFrom": {"configMapKeyRef": {"name": "envsrc", "key": "k"}}},
        {"name": "B", "valueFrom": {"secretKeyRef": {"name": "envsec", "key": "k"}}},
    ]
    bad = [{"name": "C", "valueFrom": {"configMapKeyRef": {"name": "envsrc", "key": "nope"}}}]
    cluster.client.create(
        DEPLOY,
        deployment("envsrc", [sh("c", 'echo "A=$A B=$B"; sleep 1000', env=env), sh("bad", "echo never; sleep 1000", env=bad)]),
    )
    pod = wait_for(lambda: next(iter(cluster.pods("default", "app=envsrc")), None))
    wait_for(lambda: "A=cmval B=secval" in log_of(cluster, pod, "c"), what="env from keys")

    def config_error():
        p = cluster.pods("default", "app=envsrc")[0]
        for cs in (p.get("status") or {}).get("containerStatuses") or []:
            if cs["name"] == "bad" and "CreateContainerConfigError" in json.dumps(cs):
                return True
        return "container start failed" in log_of(cluster, pod, "bad")

    wait_for(config_error, what="a clear config error for the missing key")
    assert "never" not in log_of(cluster, pod, "bad")


def test_subpath_mounts_a_single_file_of_a_volume(cluster):
    cluster.client.create(
        "/api/v1/namespaces/default/configmaps",
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "subp"},
            "data": {"one.conf": "first", "two.conf": "second"},
        },
    )
    c = sh(
        "c",
        "cat /etc/kubesim-sub/app.conf; echo; ls /etc/kubesim-sub; sleep 1000",
        volumeMounts=[{"name": "v", "mountPath": "/etc/kubesim-sub/app.conf", "subPath": "two.conf"}],
    )
    cluster.client.create(DEPLOY, deployment("subp", [c], volumes=[{"name": "v", "configMap": {"name": "subp"}}]))
    pod = cluster.wait_pods("app=subp", timeout=20)[0]
    out = wait_for(lambda: "app.conf\n" in log_of(cluster, pod, "c") and log_of(cluster, pod, "c"))
    assert out.splitlines()[:2] == ["second", "app.conf"]
    assert not os.path.exists("/etc/kubesim-sub")


def test_logs_follow_prints_new_lines(cluster):
    cluster.client.create(DEPLOY, deployment("follow", [sh("c", "echo first; sleep 2; echo second; sleep 1000")]))
    pod = cluster.wait_pods("app=follow", timeout=20)[0]
    wait_for(lambda: "first" in log_of(cluster, pod, "c"))
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    proc = subprocess.Popen(
        [sys.executable, "-m", "kubesim", "logs", "--run-dir", cluster.run_dir, pod["metadata"]["name"], "-f"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout.readline().strip() == "first"
        assert proc.stdout.readline().strip() == "second"  # appeared after logs -f started
    finally:
        proc.kill()
        proc.wait()
