"""The tutorial end to end: chart with Initializers + RBAC, the two example apps, checked from inside.

One simulated 1.7 cluster for the module (API server, netns kubelet, node + internet namespaces), the
real chart rendered by the real Helm binary and applied in order, the real initializer, podwatch,
sidecar and mitmproxy processes. A leak counter in the internet namespace is installed before the
locked app exists and read by the last test: nothing from the locked pod may arrive there directly.

The commands are the README's, followed literally: the release in its own namespace
(`helm install tproxy chart/ --namespace tproxy-system --create-namespace ...`), the examples in
`default`, then the locked example again in a namespace created after the install
(`kubectl create namespace team-b && kubectl apply -n team-b -f examples/debian-app-locked.yaml`):
no per-namespace setup, no chart upgrade (issue 23).
"""

import pytest

from controllerkit.kube import resource_path
from kubesim.demo import locked_ok, proxy_container, unlocked_ok
from kubesim.kubelet import e2e
from kubesim.polling import scaled
from kubesim.testing import wait_for

pytestmark = [pytest.mark.root, pytest.mark.slow]

ALLOWED = "https://storage.googleapis.com/solutions-public-assets/hello.txt"
RELEASE_NS = e2e.RELEASE_NAMESPACE
FRESH_NS = "team-b"
ROOT_CERTS = "tproxy-tproxy-root-certs"


@pytest.fixture(scope="module", params=["1.7", "1.13"])
def tutorial(request):
    """The tutorial on a simulated 1.7 cluster (the tutorial's) and on a 1.13 one (where helm and kubectl
    also validate the chart and the examples against the server's OpenAPI)."""
    from kubesim.kubelet.cluster import SimCluster

    c = SimCluster(k8s_version=request.param, kubelet_options={"backoff_initial": 1.0, "backoff_cap": 4.0})
    c.start()
    try:
        e2e.helm_install(c, namespace=RELEASE_NS)
        proxy = c.wait_pods("app=tproxy,component=tproxy", RELEASE_NS, timeout=60)[0]
        c.wait_pods("app=tproxy,component=initializer", "kube-system", timeout=60)
        e2e.kubectl_apply(c, "debian-app.yaml")
        unlocked = c.wait_pods("app=debian-app,variant=unlocked", timeout=30)[0]
        rt = c.pod_runtime(unlocked)
        leaks = e2e.LeakCounter(c.topology.internet, [rt.net.ip, rt.net.ip6]).install()
        e2e.kubectl_apply(c, "debian-app-locked.yaml")
        locked = c.wait_pods("app=debian-app,variant=locked", timeout=60)[0]
        e2e.run_client(c, ["kubectl", "create", "namespace", FRESH_NS])
        e2e.kubectl_apply(c, "debian-app-locked.yaml", namespace=FRESH_NS)
        fresh = c.wait_pods("app=debian-app,variant=locked", FRESH_NS, timeout=60)[0]
        yield {"cluster": c, "proxy": proxy, "unlocked": unlocked, "locked": locked, "fresh": fresh, "leaks": leaks}
    finally:
        c.stop()


def curl(t, pod, *args, timeout=15):
    return t["cluster"].exec_in_pod(pod, ["curl", "-sS", "-m", str(int(scaled(8))), *args], timeout=scaled(timeout))


def test_the_initializer_injected_the_locked_deployment_only(tutorial):
    c = tutorial["cluster"]
    locked = c.client.get(resource_path("extensions/v1beta1", "deployments", "default", "debian-app-locked"))
    spec = locked["spec"]["template"]["spec"]
    assert [ic["name"] for ic in spec["initContainers"]] == ["tproxy"]
    assert spec["initContainers"][0]["securityContext"]["privileged"] is True
    assert {"ca-certs-debian", "ca-certs-fedora"} <= {v["name"] for v in spec["volumes"]}
    assert locked["spec"]["template"]["metadata"]["annotations"]["initializer.kubernetes.io/tproxy"] == "true"
    assert not (locked["metadata"].get("initializers") or {}).get("pending")
    unlocked = c.client.get(resource_path("extensions/v1beta1", "deployments", "default", "debian-app"))
    assert not unlocked["spec"]["template"]["spec"].get("initContainers")
    # the pod's init container ran to success before the app started
    pod = c.pods("default", "app=debian-app,variant=locked")[0]
    ics = pod["status"]["initContainerStatuses"][0]
    assert ics["state"]["terminated"]["exitCode"] == 0


def test_the_release_namespace_holds_the_proxy_and_the_bundle_is_copied_where_apps_are_locked(tutorial):
    c = tutorial["cluster"]
    assert tutorial["proxy"]["metadata"]["namespace"] == RELEASE_NS
    source = c.client.get(resource_path("v1", "configmaps", RELEASE_NS, ROOT_CERTS))
    for ns in ("default", FRESH_NS):
        copy_ = c.client.get(resource_path("v1", "configmaps", ns, ROOT_CERTS))
        assert copy_["data"] == source["data"]
        ann = copy_["metadata"]["annotations"]
        assert ann["tproxy.initializer.kubernetes.io/root-certs-copy-of"] == f"{RELEASE_NS}/{ROOT_CERTS}"
    # Only the public bundle travels: the proxy's key stays in its Secret in the release namespace.
    assert "PRIVATE KEY" not in source["data"]["root-certs.crt"]
    from controllerkit import errors

    for ns in ("default", FRESH_NS):
        with pytest.raises(errors.NotFound):
            c.client.get(resource_path("v1", "secrets", ns, "tproxy-tproxy-certs"))


def test_unlocked_app_log_matches_the_tutorial(tutorial):
    r = e2e.wait_round(tutorial["cluster"], tutorial["unlocked"])
    assert unlocked_ok(r), r


def test_locked_app_log_matches_the_tutorial(tutorial):
    r = e2e.wait_round(tutorial["cluster"], tutorial["locked"])
    assert locked_ok(r), r


def test_locked_app_in_a_namespace_created_after_install_log_matches_the_tutorial(tutorial):
    r = e2e.wait_round(tutorial["cluster"], tutorial["fresh"])
    assert locked_ok(r), r
    out = curl(tutorial, tutorial["fresh"], "-w", "\\n%{http_code}", ALLOWED)
    assert out.stdout.rpartition("\n")[2] == "200", out  # TLS verified against the copied bundle


def test_the_tutorials_logs_command_shows_the_locked_round(tutorial):
    """``kubectl logs --selector=app=debian-app,variant=locked`` of the tutorial, through ``kubesim logs``."""
    import os
    import subprocess
    import sys

    e2e.wait_round(tutorial["cluster"], tutorial["locked"])
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "kubesim",
            "logs",
            "--run-dir",
            tutorial["cluster"].run_dir,
            "--selector",
            "app=debian-app,variant=locked",
            "--tail",
            "20",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    assert out.returncode == 0, out.stderr
    assert "https://www.google.com: 418" in out.stdout
    assert "https://storage.googleapis.com/solutions-public-assets/: 200" in out.stdout
    assert "Operation not permitted" in out.stdout


def test_proxy_logged_the_locked_apps_requests_with_its_identity(tutorial):
    c, locked = tutorial["cluster"], tutorial["locked"]
    name = locked["metadata"]["name"]

    def audit_lines():
        return [l for l in c.read_log(tutorial["proxy"], proxy_container(tutorial["proxy"])).splitlines() if name in l]

    try:
        wait_for(
            lambda: (lambda ls: any('"status":418' in l for l in ls) and any('"status":200' in l for l in ls))(audit_lines()),
            20,
            0.3,
            "the proxy's 418 and 200 audit lines for the locked pod",
        )
    except AssertionError:
        pass  # the assertions below say which line is missing
    lines = audit_lines()
    assert any('"host":"www.google.com"' in l and '"decision":"block"' in l for l in lines), lines[-5:]
    assert any('"host":"storage.googleapis.com"' in l and '"decision":"allow"' in l for l in lines), lines[-5:]
    unlocked_ip = tutorial["unlocked"]["status"]["podIP"]
    assert not [
        l
        for l in c.read_log(tutorial["proxy"], proxy_container(tutorial["proxy"])).splitlines()
        if f'"client_ip":"{unlocked_ip}"' in l
    ], "the unlocked app must not be intercepted"


def test_locked_pod_allowed_https_is_200_with_the_real_file(tutorial):
    out = curl(tutorial, tutorial["locked"], "-w", "\\n%{http_code}", ALLOWED)
    body, _, code = out.stdout.rpartition("\n")
    assert code == "200", out
    assert "simulated storage.googleapis.com" in body


def test_locked_pod_blocked_https_is_418(tutorial):
    out = curl(tutorial, tutorial["locked"], "-w", "\\n%{http_code}", "https://www.google.com/")
    body, _, code = out.stdout.rpartition("\n")
    assert code == "418", out
    assert "Access Denied by Administrator" in body


def test_locked_pod_metadata_server_is_418(tutorial):
    out = curl(
        tutorial,
        tutorial["locked"],
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-H",
        "Metadata-Flavor: Google",
        "http://metadata.google.internal/computeMetadata/v1/instance/service-accounts/default/token",
    )
    assert out.stdout == "418", out


def test_locked_pod_ping_is_not_permitted(tutorial):
    out = tutorial["cluster"].exec_in_pod(tutorial["locked"], ["ping", "-c1", "-W2", "www.google.com"])
    assert out.returncode != 0
    assert "Operation not permitted" in out.stdout + out.stderr


def test_locked_pod_other_ports_and_ipv6_do_not_get_out(tutorial):
    pod = tutorial["locked"]
    tcp = curl(tutorial, pod, "--connect-timeout", "3", "-o", "/dev/null", "http://203.0.113.10:8443/")
    assert tcp.returncode != 0
    v6 = curl(
        tutorial, pod, "-6", "--connect-timeout", "3", "-o", "/dev/null", "-w", "%{http_code}", "http://[2001:db8:100::10]/"
    )
    assert v6.stdout != "200", v6


def test_the_app_container_cannot_undo_the_lock(tutorial):
    c, pod = tutorial["cluster"], tutorial["locked"]
    flush = c.exec_in_pod(pod, ["iptables", "-F"])
    assert flush.returncode != 0  # no CAP_NET_ADMIN in a non-privileged container
    out = curl(tutorial, pod, "-o", "/dev/null", "-w", "%{http_code}", "https://www.google.com/")
    assert out.stdout == "418"


def test_a_changed_bundle_reaches_the_copies_and_the_running_pods_volumes(tutorial):
    """The source changes (as a helm upgrade with a new CA or extraTrustedCerts would): the copies
    follow, and the kubelet refreshes the running pods' configMap volumes (directory mounts, not
    subPath), so the file the app reads changes without a restart. The bundle stays valid: the same
    certificate twice."""
    c = tutorial["cluster"]
    path = resource_path("v1", "configmaps", RELEASE_NS, ROOT_CERTS)
    source = c.client.get(path)
    bundle = source["data"]["root-certs.crt"]
    source["data"]["root-certs.crt"] = bundle + bundle
    c.client.replace(path, source)
    from kubesim.polling import wait_for

    for ns, pod in (("default", tutorial["locked"]), (FRESH_NS, tutorial["fresh"])):
        wait_for(
            lambda: c.client.get(resource_path("v1", "configmaps", ns, ROOT_CERTS))["data"] == source["data"],
            timeout=30,
            what=f"copy in {ns} updated",
        )
        wait_for(
            lambda: c.exec_in_pod(pod, ["cat", "/etc/ssl/certs/ca-certificates.crt"]).stdout == bundle + bundle,
            timeout=30,
            what=f"the running pod in {ns} sees the new bundle",
        )
    out = curl(tutorial, tutorial["fresh"], "-o", "/dev/null", "-w", "%{http_code}", ALLOWED)
    assert out.stdout == "200", out


def test_nothing_left_the_locked_pod_except_through_the_proxy(tutorial):
    """Runs last: every request above was made; none of them reached the internet from the pod."""
    unlocked_ip = tutorial["unlocked"]["status"]["podIP"]
    direct = curl(tutorial, tutorial["unlocked"], "-o", "/dev/null", "-w", "%{http_code}", "https://www.google.com/")
    assert direct.stdout == "200"
    assert tutorial["leaks"].seen_from(unlocked_ip) > 0  # the counter does see direct pod traffic
    assert tutorial["leaks"].packets() == 0  # neither locked pod (default, team-b) sent anything directly


def test_kubectl_logs_reads_the_locked_round_through_the_api_server(tutorial):
    """``kubectl logs POD -c app --tail=N`` as a user types it: the pods/{name}/log subresource."""
    c, locked = tutorial["cluster"], tutorial["locked"]
    e2e.wait_round(c, locked)
    out = e2e.run_client(c, ["kubectl", "logs", locked["metadata"]["name"], "-c", "app", "--tail=20"]).stdout
    assert "https://www.google.com: 418" in out
    assert len(out.splitlines()) <= 20
    proxy = tutorial["proxy"]
    audit = e2e.run_client(
        c, ["kubectl", "logs", "-n", RELEASE_NS, proxy["metadata"]["name"], "-c", proxy_container(proxy)]
    ).stdout
    assert locked["metadata"]["name"] in audit


def test_kubectl_rollout_status_and_get_see_the_running_apps(tutorial):
    c = tutorial["cluster"]
    out = e2e.run_client(c, ["kubectl", "rollout", "status", "deployment.extensions/debian-app-locked", "--timeout=60s"]).stdout
    assert "successfully rolled out" in out
    pods = e2e.run_client(c, ["kubectl", "get", "pods", "-l", "app=debian-app", "-o", "json"]).stdout
    import json

    assert sorted(p["status"]["phase"] for p in json.loads(pods)["items"]) == ["Running", "Running"]
    described = e2e.run_client(c, ["kubectl", "describe", "pod", tutorial["locked"]["metadata"]["name"]]).stdout
    assert "Init Containers:" in described and "tproxy:" in described


def test_helm_uninstall_leaves_nothing_of_the_release(tutorial):
    """Runs after the leak check: the release goes the way users remove it, cluster-scoped objects too."""
    c = tutorial["cluster"]
    e2e.helm_uninstall(c, namespace=RELEASE_NS)
    left = e2e.run_client(
        c, ["kubectl", "get", "clusterroles,clusterrolebindings,initializerconfigurations", "-o", "name"]
    ).stdout.split()
    assert [n for n in left if "tproxy" in n] == []
    import json

    release = {
        (d["metadata"].get("namespace") or RELEASE_NS, d["kind"], d["metadata"]["name"])
        for d in e2e.chart_documents(namespace=RELEASE_NS)
        if d["kind"] not in ("ClusterRole", "ClusterRoleBinding", "InitializerConfiguration")
    }
    items = json.loads(
        e2e.run_client(
            c,
            [
                "kubectl",
                "get",
                "daemonsets,deployments,configmaps,secrets,serviceaccounts,roles,rolebindings",
                "--all-namespaces",
                "-o",
                "json",
            ],
        ).stdout
    )["items"]
    left = {(i["metadata"]["namespace"], i["kind"], i["metadata"]["name"]) for i in items}
    assert release and not release & left, release & left
    # (the initializer's CA-bundle copies in the apps' namespaces are not release objects: they stay)
    assert "tproxy" not in e2e.run_client(c, ["helm", "list", "-q", "--all-namespaces"]).stdout
