"""``python -m kubesim demo`` (``make demo``): the whole tutorial on this machine, checked.

1. start a simulated Kubernetes 1.7 cluster (API server with the Initializers admission plugin, one
   node, an "internet" with www.google.com, storage.googleapis.com and a metadata server);
2. the README's install with the real Helm binary: ``helm install tproxy chart/ --namespace tproxy-system
   --create-namespace --set tproxy.useInitializer=true,tproxy.useRBAC=true`` (``--k8s-version 1.13``:
   exactly that; 1.7 had no ``/openapi/v2``, so a 1.7 user creates the namespace with kubectl and adds
   ``--disable-openapi-validation``, and the demo shows it doing so; ``--k8s-version 1.28``: webhook
   mode, ``--set tproxy.useWebhook=true,tproxy.useRBAC=true``, the initializer answering the API
   server's admission reviews behind a Service);
3. wait for the initializer and the DaemonSet (podwatch + mitmproxy);
4. ``kubectl apply -f examples/debian-app.yaml`` and ``examples/debian-app-locked.yaml`` in ``default``
   with the real kubectl (1.7: plus ``--validate=false``; 1.28: the same manifests as ``apps/v1``, since
   1.16 serves no ``extensions/v1beta1`` Deployments), and the locked example again in a namespace
   created afterwards (``team-b``: no per-namespace setup);
5. print what the tutorial prints through ``kubectl logs``: the apps' logs and the proxy's log lines for
   the locked app's requests;
6. ``helm uninstall tproxy``, then clean up (also on Ctrl-C).

It exits 0 only when the tutorial's results were observed: unlocked www.google.com 200, bucket 200,
ping replies; locked www.google.com 418, bucket 200, ping "Operation not permitted"; and the proxy
logged the locked app's requests. Otherwise it says which stage or result is missing and exits 1.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from kubesim.kubelet.images import REPO_ROOT

HELM_DEFAULT = os.path.join(REPO_ROOT, ".tools", "bin", "helm")
KUBECTL_DEFAULT = os.path.join(REPO_ROOT, ".tools", "bin", "kubectl")
CHART = os.path.join(REPO_ROOT, "chart")
EXAMPLES = os.path.join(REPO_ROOT, "examples")
GOOGLE = "https://www.google.com"
BUCKET = "https://storage.googleapis.com/solutions-public-assets/"
RELEASE_NAMESPACE = "tproxy-system"  # the README's `helm install ... --namespace tproxy-system --create-namespace`
FRESH_NAMESPACE = "team-b"


class DemoError(Exception):
    """A stage failed; the message says which and why."""


class Interrupted(BaseException):
    pass


def helm_binary() -> str:
    helm = os.environ.get("TPROXY_HELM") or HELM_DEFAULT
    if not (os.path.exists(helm) or shutil.which(helm)):
        raise DemoError(f"helm not found at {helm} (run `make setup`, or set TPROXY_HELM)")
    return helm


def kubectl_binary() -> str:
    kubectl = os.environ.get("TPROXY_KUBECTL") or KUBECTL_DEFAULT
    if not (os.path.exists(kubectl) or shutil.which(kubectl)):
        raise DemoError(f"kubectl not found at {kubectl} (run `make setup`, or set TPROXY_KUBECTL)")
    return kubectl


def no_openapi_flags(k8s_version: str) -> tuple[list[str], list[str]]:
    """What a user of Helm 3 / kubectl 1.31 adds against a server without ``/openapi/v2`` (1.7):
    (helm install/upgrade flags, kubectl apply/create flags)."""
    if k8s_version == "1.7":
        return ["--disable-openapi-validation"], ["--validate=false"]
    return [], []


def tutorial_values(k8s_version: str) -> str:
    """The README's ``--set`` for the cluster's version: Initializers up to 1.13, the webhook after."""
    if k8s_version in ("1.7", "1.13"):
        return "tproxy.useInitializer=true,tproxy.useRBAC=true"
    return "tproxy.useWebhook=true,tproxy.useRBAC=true"


def example_argv(name: str, k8s_version: str) -> tuple[list[str], str | None]:
    """How a user of ``k8s_version`` creates ``examples/NAME`` with kubectl: (argv after ``kubectl``, stdin).

    The examples are ``extensions/v1beta1`` Deployments, as the tutorial's 1.7 cluster served them; 1.16
    removed that group's workloads, so on 1.28 they go in as ``apps/v1`` (they carry the selector that
    version requires): ``sed 's#extensions/v1beta1#apps/v1#' examples/NAME | kubectl apply -f -``."""
    _, kubectl_flags = no_openapi_flags(k8s_version)
    if k8s_version in ("1.7", "1.13"):
        return ["apply", *kubectl_flags, "-f", f"examples/{name}"], None
    with open(os.path.join(EXAMPLES, name)) as f:
        return ["apply", "-f", "-"], f.read().replace("apiVersion: extensions/v1beta1", "apiVersion: apps/v1")


def render_chart(values: str, extra: list[str] | None = None) -> str:
    if not os.path.exists(os.path.join(CHART, "Chart.yaml")):
        raise DemoError(f"the chart is missing ({CHART}/Chart.yaml)")
    # The simulated cluster is 1.7 unless ``extra`` names another --kube-version (the last one wins).
    argv = [helm_binary(), "template", "tproxy", CHART, "--kube-version", "1.7.16", "--set", values, *(extra or [])]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise DemoError(f"helm template failed: {proc.stderr.strip()}")
    return proc.stdout


# -- reading results --------------------------------------------------------------------------------
def last_round(log: str) -> dict | None:
    """The newest complete round of the example app's loop: {"google": code, "bucket": code, "ping": text}."""
    google = bucket = None
    result = None
    lines = log.splitlines()
    for i, line in enumerate(lines):
        m = re.search(r"https://www\.google\.com: (\d{3})", line)
        if m:
            google, bucket = m.group(1), None
            continue
        m = re.search(r"https://storage\.googleapis\.com/solutions-public-assets/: (\d{3})", line)
        if m and google:
            bucket = m.group(1)
            continue
        if google and bucket and ("PING" in line or "ping:" in line):
            ping = [line] + [l for l in lines[i + 1 : i + 3] if l.strip() and "https://" not in l]
            result = {"google": google, "bucket": bucket, "ping": "\n".join(ping)}
            google = bucket = None
    return result


def unlocked_ok(r: dict | None) -> bool:
    return bool(r) and r["google"] == "200" and r["bucket"] == "200" and "bytes from" in r["ping"]


def locked_ok(r: dict | None) -> bool:
    return bool(r) and r["google"] == "418" and r["bucket"] == "200" and "Operation not permitted" in r["ping"]


def round_lines(log: str) -> str:
    """The lines of the newest complete round, as the tutorial shows them (URL lines, PING, reply)."""
    lines = log.rstrip("\n").splitlines()
    starts = [i for i, l in enumerate(lines) if "https://www.google.com:" in l]
    for i in reversed(starts):
        chunk = lines[i : i + 6]
        if last_round("\n".join(chunk)):
            keep = [l for l in chunk[:2]]
            keep += [l for l in chunk[2:] if l.strip() and ("PING" in l or "bytes from" in l or "ping:" in l)][:2]
            return "\n".join(keep)
    return tail(log, 4)


def audit_line(line: str) -> str:
    """One proxy audit JSON line as a short mitmproxy-like line; other lines unchanged."""
    import json

    try:
        a = json.loads(line)
        return (
            f"{a['client_ip']}: {a['method']} {a['scheme']}://{a['host']}{a['path']}  << {a['status']}  "
            f"[{a['decision']}: {a.get('rule') or a.get('reason')}; pod {a.get('pod_namespace')}/{a.get('pod_name')}]"
        )
    except (ValueError, KeyError, TypeError):
        return line


def proxy_container(pod: dict) -> str:
    """The DaemonSet pod's transparent-proxy container: the one running the tproxy-proxy image."""
    from kubesim.kubelet.images import image_name

    for c in pod["spec"]["containers"]:
        if image_name(c.get("image", "")) in ("tproxy-proxy", "mitmproxy") or "mitmdump" in (c.get("command") or [""])[0]:
            if "1080" not in " ".join(c.get("command") or []):  # not the standard-mode proxy
                return c["name"]
    raise DemoError(f"no proxy container in {pod['metadata']['name']}")


def tail(text: str, n: int) -> str:
    return "\n".join(text.rstrip("\n").splitlines()[-n:])


# -- the demo ---------------------------------------------------------------------------------------
class Demo:
    def __init__(self, args):
        self.args = args
        self.t0 = time.monotonic()
        self.cluster = None

    def step(self, msg: str) -> None:
        print(f"[{time.monotonic() - self.t0:5.1f}s] {msg}", flush=True)

    def detail(self, text: str) -> None:
        for line in text.rstrip("\n").splitlines():
            print(f"         {line}", flush=True)

    def client(
        self,
        argv: list[str],
        *,
        check: bool = True,
        show: bool = True,
        timeout: float = 120,
        stdin: str | None = None,
        shown: str | None = None,
    ) -> str:
        """Run the real helm or kubectl as a user types it (KUBECONFIG = the cluster's admin config),
        show the command (``shown``: as typed, e.g. a pipeline) and its output; a failure is a DemoError
        naming the command."""
        binary = {"helm": helm_binary, "kubectl": kubectl_binary}[argv[0]]()
        env = {**os.environ, "KUBECONFIG": self.cluster.kubeconfig}
        proc = subprocess.run(
            [binary, *argv[1:]], capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO_ROOT, input=stdin
        )
        if show:
            self.detail("$ " + (shown or " ".join(argv)))
            self.detail(proc.stdout)
            self.detail(proc.stderr)
        if check and proc.returncode != 0:
            raise DemoError(f"`{' '.join(argv)}` exited {proc.returncode}: {proc.stderr.strip()}")
        return proc.stdout

    def logs(self, pod: dict, container: str) -> str:
        meta = pod["metadata"]
        return self.client(["kubectl", "logs", "-n", meta["namespace"], meta["name"], "-c", container], check=False, show=False)

    def wait(self, what: str, selector: str, namespace: str, count: int, timeout: float) -> list[dict]:
        try:
            return self.cluster.wait_pods(selector, namespace, count=count, timeout=timeout)
        except TimeoutError as e:
            pods = self.cluster.pods(namespace, selector)
            logs = []
            for p in pods:
                st = p.get("status") or {}
                for c in (st.get("initContainerStatuses") or []) + (st.get("containerStatuses") or []):
                    logs.append(
                        f"--- {p['metadata']['name']}/{c['name']} (last lines)\n{tail(self.cluster.read_log(p, c['name']), 5)}"
                    )
            raise DemoError(f"{what} did not become ready in {timeout:.0f}s: {e}\n" + "\n".join(logs)) from None

    def run(self) -> int:
        from kubesim.kubelet.cluster import SimCluster
        from controllerkit.kube import resource_path

        version = getattr(self.args, "k8s_version", "1.7")
        runtime = getattr(self.args, "runtime", "emulate")
        if runtime == "podman":
            from kubesim.kubelet import engine

            try:
                engine.require(images_needed())
            except engine.EngineError as e:
                raise DemoError(str(e)) from None
        self.cluster = SimCluster(
            self.args.run_dir,
            keep_run_dir=self.args.keep,
            k8s_version=version,
            kubelet_options={"backoff_initial": 1.0, "backoff_cap": 4.0, "runtime": runtime},
        )
        webhook = version not in ("1.7", "1.13")
        plugin = "MutatingAdmissionWebhook" if webhook else "Initializers"
        self.step(
            f"Starting a simulated Kubernetes {version} cluster ({plugin} admission plugin on)"
            + ("; pods run the real images on podman" if runtime == "podman" else "")
        )
        self.cluster.start(progress=lambda m: self.detail(m))
        self.step(f"cluster up; run dir {self.cluster.run_dir}")

        values = tutorial_values(version)
        ns = RELEASE_NAMESPACE
        self.detail(f"export KUBECONFIG={self.cluster.kubeconfig}")
        helm_flags, kubectl_flags = no_openapi_flags(version)
        self.step("Installing the chart with Helm")
        if helm_flags:
            self.detail(
                "(Kubernetes 1.7 serves no /openapi/v2, so Helm 3 and kubectl cannot validate client-side: "
                "a 1.7 user passes " + " and ".join(helm_flags + kubectl_flags) + ", and creates the "
                "namespace with kubectl, since helm install --create-namespace always validates)"
            )
            self.client(["kubectl", "create", "namespace", ns])
            self.client(["helm", "install", "tproxy", "chart/", "--namespace", ns, "--set", values, *helm_flags])
        else:
            self.client(["helm", "install", "tproxy", "chart/", "--namespace", ns, "--create-namespace", "--set", values])

        self.step("Waiting for the tproxy DaemonSet (podwatch + mitmproxy) and the initializer")
        ds = self.wait("the tproxy DaemonSet pod", "app=tproxy,component=tproxy", ns, 1, 60)
        self.wait("the initializer", "app=tproxy,component=initializer", "kube-system", 1, 60)
        proxy_pod = ds[0]

        self.step("Creating the example apps")
        if webhook:
            self.detail("(1.16+ serves Deployments as apps/v1 only: the examples go in with that apiVersion)")
        self.example("debian-app.yaml", version)
        self.detail(
            "(the next create is mutated by the webhook: the init container is injected)"
            if webhook
            else "(the next create is held by the Initializer until the init container is injected)"
        )
        t = time.monotonic()
        self.example("debian-app-locked.yaml", version)
        dep = self.cluster.client.get(
            resource_path("apps/v1" if webhook else "extensions/v1beta1", "deployments", "default", "debian-app-locked")
        )
        inits = [c["name"] for c in dep["spec"]["template"]["spec"].get("initContainers") or []]
        if not inits:
            raise DemoError(
                "the locked deployment was created without the injected init container (is the "
                + (
                    "webhook running and the MutatingWebhookConfiguration applied?)"
                    if webhook
                    else "initializer running and the InitializerConfiguration applied?)"
                )
            )
        self.detail(
            f"{'admitted' if webhook else 'initialized'} in {time.monotonic() - t:.1f}s; injected init containers: {inits}"
        )

        self.step(f"The locked example in {FRESH_NAMESPACE}, a namespace the chart knows nothing about")
        self.client(["kubectl", "create", "namespace", FRESH_NAMESPACE])
        self.example("debian-app-locked.yaml", version, FRESH_NAMESPACE)

        self.step("Waiting for the three apps")
        unlocked = self.wait("debian-app", "app=debian-app,variant=unlocked", "default", 1, 60)[0]
        locked = self.wait("debian-app-locked", "app=debian-app,variant=locked", "default", 1, 90)[0]
        fresh = self.wait(f"{FRESH_NAMESPACE}/debian-app-locked", "app=debian-app,variant=locked", FRESH_NAMESPACE, 1, 90)[0]

        self.client(["kubectl", "get", "pods", "--all-namespaces", "-o", "wide"])
        self.step("Waiting for a full round of the example loop in the three logs")
        deadline = time.monotonic() + self.args.timeout
        ru = rl = rf = None
        while time.monotonic() < deadline:
            ru = last_round(self.logs(unlocked, "app"))
            rl = last_round(self.logs(locked, "app"))
            rf = last_round(self.logs(fresh, "app"))
            if ru and rl and rf:
                break
            time.sleep(1.0)

        print()
        for pod in (unlocked, locked, fresh):
            ns_flag = f"-n {pod['metadata']['namespace']} " if pod["metadata"]["namespace"] != "default" else ""
            print(f"$ kubectl logs {ns_flag}{pod['metadata']['name']} -c app   (newest round)")
            print(round_lines(self.logs(pod, "app")) or "(no output)")
            print()
        ip = (locked.get("status") or {}).get("podIP", "")
        pc = proxy_container(proxy_pod)
        proxy_log = self.logs(proxy_pod, pc)
        lines = [l for l in proxy_log.splitlines() if ip and ip in l and ("google" in l)]
        print(
            f"$ kubectl logs -n {proxy_pod['metadata']['namespace']} {proxy_pod['metadata']['name']} -c {pc}   "
            f"(audit lines of the locked pod {ip}, condensed)"
        )
        print("\n".join(audit_line(l) for l in lines[-4:]) or "(no proxy log lines for the locked pod)")
        print()

        problems = []
        if not unlocked_ok(ru):
            problems.append(f"unlocked app: expected www.google.com 200, bucket 200, ping replies; got {ru}")
        if not locked_ok(rl):
            problems.append(f"locked app: expected www.google.com 418, bucket 200, ping 'Operation not permitted'; got {rl}")
        if not locked_ok(rf):
            problems.append(
                f"locked app in {FRESH_NAMESPACE}: expected www.google.com 418, bucket 200, ping "
                f"'Operation not permitted'; got {rf}"
            )
        if not any("www.google.com" in l for l in lines) or not any("storage.googleapis.com" in l for l in lines):
            problems.append("proxy: no log lines for the locked app's requests to www.google.com and storage.googleapis.com")
        if problems:
            raise DemoError("the tutorial's results were not observed:\n  - " + "\n  - ".join(problems))
        self.step(
            "OK: the unlocked app reaches everything; the locked app gets 418 for www.google.com, 200 "
            f"for the allowed bucket, and no ping, in default and in {FRESH_NAMESPACE} (created after "
            "the install)"
        )
        self.step("Removing the release")
        self.client(["helm", "uninstall", "tproxy", "--namespace", ns])
        return 0

    def example(self, name: str, version: str, namespace: str | None = None) -> None:
        argv, stdin = example_argv(name, version)
        ns_args = ["-n", namespace] if namespace else []
        argv = [argv[0], *ns_args, *argv[1:]]
        shown = None
        if stdin is not None:
            shown = f"sed 's#extensions/v1beta1#apps/v1#' examples/{name} | kubectl {' '.join(argv)}"
        self.client(["kubectl", *argv], stdin=stdin, shown=shown)


def images_needed() -> list[str]:
    """Every image the tutorial's pods run: the chart's (as rendered) and the examples'."""
    refs = set()
    texts = [render_chart("tproxy.useInitializer=true,tproxy.useRBAC=true")]
    texts += [open(os.path.join(EXAMPLES, f)).read() for f in ("debian-app.yaml", "debian-app-locked.yaml")]
    for text in texts:
        refs.update(re.findall(r"^\s*(?:-\s+)?image:\s*[\"']?([^\s\"']+)", text, re.M))
    return sorted(refs)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = __doc__.split("\n\n")[0]
    p.add_argument(
        "--runtime",
        choices=("emulate", "podman"),
        default="emulate",
        help="emulate (default, fast): run each image's Dockerfile entrypoint on the host's Python; "
        "podman: run the real images built by `make images`",
    )
    p.add_argument("--run-dir", help="keep logs and volumes here (default: a temporary directory)")
    p.add_argument("--keep", action="store_true", help="keep the run directory after the demo")
    p.add_argument(
        "--k8s-version",
        choices=("1.7", "1.13", "1.28"),
        default="1.7",
        help="the simulated cluster's version: 1.7 (default, the tutorial's) and 1.13 install the "
        "chart with Initializers, 1.28 in webhook mode",
    )
    p.add_argument(
        "--timeout", type=float, default=40.0, help="seconds to wait for the apps' first results once they run (default 40)"
    )


def run(args) -> int:
    if os.geteuid() != 0:
        print("kubesim demo: needs root (network namespaces, iptables, mounts); try: sudo make demo", file=sys.stderr)
        return 2
    from controllerkit.log import setup_logging

    log_path = os.path.join(args.run_dir or tempfile.gettempdir(), f"kubesim-demo-{os.getpid()}.log")
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    logf = open(log_path, "a")
    setup_logging("kubesim", "info", stream=logf)
    demo = Demo(args)

    def on_signal(signum, _frame):
        raise Interrupted()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    rc = 1
    try:
        rc = demo.run()
    except DemoError as e:
        demo.step(f"FAILED: {e}")
        rc = 1
    except Interrupted:
        demo.step("interrupted; cleaning up")
        rc = 130
    except Exception as e:  # noqa: BLE001 - a stage that is not there yet must say so, not crash obscurely
        demo.step(f"FAILED: {type(e).__name__}: {e}")
        rc = 1
    finally:
        for s in old:
            signal.signal(s, signal.SIG_IGN)
        demo.step("Cleaning up (pods, network namespaces, API server)")
        if demo.cluster is not None:
            demo.cluster.stop()
        for s, h in old.items():
            signal.signal(s, h)
        logf.close()
        if rc == 0 and not args.keep:
            os.unlink(log_path)
        else:
            print(f"kubesim component log: {log_path}", file=sys.stderr)
        demo.step(f"done in {time.monotonic() - demo.t0:.0f}s (exit {rc})")
    return rc
