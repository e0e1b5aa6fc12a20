"""Helpers for end-to-end runs of the tutorial on a :class:`~kubesim.kubelet.cluster.SimCluster`.

Shared by ``python -m kubesim demo`` and ``tests/test_e2e_*.py``: render and install the chart,
create the examples, read the example app's rounds, and count packets that reach the simulated
internet straight from pods (the fail-closed invariant: a locked pod's bytes reach the internet only
through the proxy, whose connections come from the node's uplink address, never from a pod address).
"""

from __future__ import annotations

import os
import time

from kubesim.apply import apply_documents, load_documents
from kubesim.polling import scaled
from kubesim.demo import (
    EXAMPLES,
    RELEASE_NAMESPACE,
    REPO_ROOT,
    helm_binary,
    kubectl_binary,
    last_round,
    no_openapi_flags,
    render_chart,
)
from kubesim.topology import POD_CIDR, POD_CIDR6
from controllerkit.probe import PROBE_ADDRESS

TUTORIAL_VALUES = "tproxy.useInitializer=true,tproxy.useRBAC=true"


class E2EError(AssertionError):
    pass


def chart_documents(values: str = TUTORIAL_VALUES, extra: list[str] | None = None, namespace: str | None = None) -> list[dict]:
    """The chart as ``helm template`` renders it; ``namespace``: the release namespace (``--namespace``)."""
    ns_args = ["--namespace", namespace] if namespace else []
    return load_documents(render_chart(values, [*ns_args, *(extra or [])]), "chart")


def apply(cluster, docs: list[dict], namespace: str = "default") -> None:
    """``kubectl apply -n NAMESPACE -f``: ``namespace`` for the objects that name none."""
    import io

    out, err = io.StringIO(), io.StringIO()
    if apply_documents(cluster.client, docs, namespace=namespace, out=out, err=err):
        raise E2EError(f"apply failed:\n{err.getvalue()}")


def create_namespace(cluster, name: str) -> None:
    """``kubectl create namespace NAME`` (what ``helm install --create-namespace`` does first)."""
    apply(cluster, [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}])


def run_client(cluster, argv: list[str], *, check: bool = True, timeout: float = 120):
    """Run the real ``helm`` or ``kubectl`` (argv[0]) against the cluster, as a user types it.
    ``timeout``: the deadline in seconds, times ``TPROXY_TEST_TIMEOUT_SCALE`` like every wait."""
    import subprocess

    binary = {"helm": helm_binary, "kubectl": kubectl_binary}[argv[0]]()
    proc = subprocess.run(
        [binary, *argv[1:]],
        capture_output=True,
        text=True,
        timeout=scaled(timeout),
        cwd=REPO_ROOT,
        env={**os.environ, "KUBECONFIG": cluster.kubeconfig},
    )
    if check and proc.returncode != 0:
        raise E2EError(f"`{' '.join(argv)}` exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def helm_install(
    cluster,
    values: str = TUTORIAL_VALUES,
    extra: list[str] | None = None,
    release: str = "tproxy",
    namespace: str = RELEASE_NAMESPACE,
    wait: float | None = None,
):
    """The README's ``helm install tproxy chart/ --namespace NS --create-namespace --set VALUES``; on 1.7
    clusters what a 1.7 user types instead: ``kubectl create namespace NS`` first and
    ``--disable-openapi-validation`` (1.7 served no /openapi/v2).

    ``wait``: add ``--wait --timeout Ns`` (N = ``wait`` s, scaled like every deadline); helm itself
    then gets a minute more than that before it is stopped."""
    flags, _ = no_openapi_flags(cluster.k8s_version)
    ns_args = ["--namespace", namespace]
    if flags:
        if run_client(cluster, ["kubectl", "get", "namespace", namespace], check=False).returncode != 0:
            run_client(cluster, ["kubectl", "create", "namespace", namespace])
    else:
        ns_args.append("--create-namespace")
    waiting = [] if wait is None else helm_wait_flags(wait)
    argv = ["helm", "install", release, "chart/", *ns_args, "--set", values, *(extra or []), *waiting, *flags]
    return run_client(cluster, argv, timeout=120 if wait is None else wait + 60)


def helm_wait_flags(seconds: float) -> list[str]:
    """``--wait --timeout Ns``, with the deadline scaled by ``TPROXY_TEST_TIMEOUT_SCALE``."""
    return ["--wait", "--timeout", f"{scaled(seconds):.0f}s"]


def helm_uninstall(cluster, release: str = "tproxy", namespace: str = RELEASE_NAMESPACE):
    return run_client(cluster, ["helm", "uninstall", release, "--namespace", namespace])


def kubectl_apply(cluster, name: str, namespace: str | None = None):
    """``kubectl apply [-n NS] -f examples/NAME`` (1.7 clusters: plus --validate=false)."""
    _, flags = no_openapi_flags(cluster.k8s_version)
    ns_args = ["-n", namespace] if namespace else []
    return run_client(cluster, ["kubectl", "apply", *flags, *ns_args, "-f", os.path.join("examples", name)])


def example(name: str) -> list[dict]:
    with open(os.path.join(EXAMPLES, name)) as f:
        return load_documents(f.read(), name)


def find(docs: list[dict], kind: str, name_suffix: str = "") -> dict:
    for d in docs:
        if d["kind"] == kind and d["metadata"]["name"].endswith(name_suffix):
            return d
    raise E2EError(f"no {kind} *{name_suffix} in the rendered chart")


def container(obj: dict, name_suffix: str) -> dict:
    for c in obj["spec"]["template"]["spec"]["containers"]:
        if c["name"].endswith(name_suffix):
            return c
    raise E2EError(f"no container *{name_suffix} in {obj['metadata']['name']}")


def wait_round(cluster, pod: dict, container_name: str = "app", timeout: float = 40.0) -> dict:
    """The first complete round of the example loop in the pod's log (``timeout`` scaled by
    ``TPROXY_TEST_TIMEOUT_SCALE``)."""
    from kubesim.polling import scaled

    timeout = scaled(timeout)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = last_round(cluster.read_log(pod, container_name))
        if r:
            return r
        time.sleep(0.3)
    raise E2EError(
        f"no complete round of the example loop in {pod['metadata']['name']} within {timeout}s; "
        f"log tail:\n{cluster.read_log(pod, container_name)[-800:]}"
    )


class LeakCounter:
    """iptables counters in the internet namespace for packets coming straight from pod addresses.

    Excluded: addresses in ``allowed`` (pods that are not locked, e.g. the tutorial's unlocked app)
    and the interception probe's address (TEST-NET-1, reserved: never a real destination).
    """

    CHAIN = "KUBESIM-LEAKS"

    def __init__(self, internet_ns, allowed: list[str] = ()):
        self.ns = internet_ns
        self.allowed = list(allowed)

    def install(self) -> "LeakCounter":
        v4 = [a for a in self.allowed if ":" not in a]
        v6 = [a for a in self.allowed if ":" in a]
        rules4 = (
            [f"-A {self.CHAIN} -d {PROBE_ADDRESS}/32 -j RETURN"]
            + [f"-A {self.CHAIN} -s {a}/32 -j RETURN" for a in v4]
            + [f"-A {self.CHAIN} -s {POD_CIDR} -j RETURN -m comment --comment leak"]
        )
        rules6 = [f"-A {self.CHAIN} -s {a}/128 -j RETURN" for a in v6] + [
            f"-A {self.CHAIN} -s {POD_CIDR6} -j RETURN -m comment --comment leak"
        ]
        for tool, rules in (("iptables", rules4), ("ip6tables", rules6)):
            text = (
                "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
                f":{self.CHAIN} - [0:0]\n-A INPUT -j {self.CHAIN}\n" + "\n".join(rules) + "\nCOMMIT\n"
            )
            self.ns.run(f"{tool}-restore", input=text)
        return self

    def seen_from(self, address: str) -> int:
        """Packets counted from an allowed address (proves the counter sees pod traffic at all)."""
        tool = "ip6tables" if ":" in address else "iptables"
        out = self.ns.run(tool, "-w", "-t", "filter", "-L", self.CHAIN, "-v", "-x", "-n").stdout
        return sum(int(l.split()[0]) for l in out.splitlines() if f" {address} " in f" {l} ")

    def packets(self) -> int:
        total = 0
        for tool in ("iptables", "ip6tables"):
            out = self.ns.run(tool, "-w", "-t", "filter", "-L", self.CHAIN, "-v", "-x", "-n").stdout
            for line in out.splitlines():
                if "leak" in line:
                    total += int(line.split()[0])
        return total
