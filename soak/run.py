"""The soak itself: a simulated cluster with the chart installed, then continuous churn and chaos
for a bounded time, with the invariants checked all along (see soak/README.md).

Threads (all stop at the deadline; every loop and wait is bounded):
- creators: create annotated and plain Deployments in several namespaces, check each answer;
- deleter: deletes each Deployment after its random lifetime;
- chaos: one perturbation at a time (kill -9 of an initializer, podwatch or the proxy, an external
  flush of one of the node's chains, a good or a bad policy reload), then measures convergence;
- faults: cycles the API server's faults (conflicts, watch cuts, 410s, latency, 500s) for the
  components (the simulated kubelet and the soak's own requests are exempt);
- sampler: RSS, fds and threads of every component process, the node's rule count, the leak counter.
"""

from __future__ import annotations

import os
import random
import shlex
import signal
import threading
import time
import traceback

import yaml

from controllerkit.errors import ApiError
from kubesim.kubelet import e2e
from kubesim.polling import scaled
from soak import checks

DEPLOY = "/apis/extensions/v1beta1/namespaces/{ns}/deployments"
POLICY = "/api/v1/namespaces/default/configmaps/tproxy-tproxy-policy"
NAMESPACES = ["default", "soak-a", "soak-b"]
BLOCKED = "https://www.google.com/"
ALLOWED = "https://storage.googleapis.com/solutions-public-assets/hello.txt"
DS_SELECTOR = "app=tproxy,component=tproxy"
INI_SELECTOR = "app=tproxy,component=initializer"
#: podwatch's --resync-period (chart default) + margin: the stated convergence bound after a flush
RESYNC_PERIOD = 30.0
CONVERGE_BOUND = {
    "flush": RESYNC_PERIOD + 15,
    "kill-podwatch": 30.0,
    "kill-proxy": 30.0,
    "policy-good": 20.0,
    "policy-bad": 20.0,
    "kill-initializer": 30.0,
}
FAULT_PHASES = [
    "",
    "conflict=0.3",
    "watch_cut=0.05",
    "gone=0.5,watch_cut=0.02",
    "latency_ms=40",
    "error500=0.05",
    "conflict=0.2,error500=0.03,watch_cut=0.02,gone=0.2,latency_ms=10",
]
#: what a locked soak pod does all the time: web requests (through the proxy) and bypass attempts
#: (another port, ping) that its lock must refuse; the leak counter sees any that get out
LOCKED_LOOP = (
    "while true; do curl -s -m 3 -o /dev/null https://www.google.com/; "
    "curl -s -m 3 -o /dev/null https://storage.googleapis.com/solutions-public-assets/hello.txt; "
    "curl -s -m 2 -o /dev/null http://203.0.113.10:8443/; "
    "ping -c 1 -W 1 203.0.113.10 >/dev/null 2>&1; sleep 2; done"
)
FLUSHES = {  # one layer at a time: (table, argv after the binary); the other layer stays in place
    "flush nat TPROXY-REDIRECT": ["-t", "nat", "-F", "TPROXY-REDIRECT"],
    "delete nat PREROUTING jump": [
        "-t",
        "nat",
        "-D",
        "PREROUTING",
        "-j",
        "TPROXY-REDIRECT",
        "-m",
        "comment",
        "--comment",
        "__jump__",
    ],
    "flush the whole nat table": ["-t", "nat", "-F"],
    "flush filter TPROXY-GUARD": ["-t", "filter", "-F", "TPROXY-GUARD"],
    "flush filter FORWARD": ["-t", "filter", "-F", "FORWARD"],
}


def deployment(name: str, locked: bool) -> dict:
    labels = {"app": "soak", "soak": name}
    cmd = ["sh", "-c", LOCKED_LOOP] if locked else ["sleep", "100000"]
    meta = {"name": name, "labels": {"app": "soak"}}
    if locked:
        meta["annotations"] = {checks.ANNOTATION: "true"}
    return {
        "apiVersion": "extensions/v1beta1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "app", "image": "debian:12", "command": cmd}]},
            },
        },
    }


class Soak:
    def __init__(
        self, minutes: float, report_dir: str, seed: int = 1, max_live: int = 12, create_rate: float | None = None, log=print
    ):
        self.duration = minutes * 60
        self.report_dir = os.path.abspath(report_dir)
        self.rng = random.Random(seed)
        self.seed = seed
        self.max_live = max_live
        # the full run's target: >= 1,000 creates in 10 minutes
        self.create_rate = create_rate or 2.0
        self.say = log
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.t0 = 0.0
        self.creates: list[dict] = []
        self.live: list[tuple[float, str, str]] = []  # (expires, ns, name)
        self.perturbations: list[dict] = []
        self.samples: list[dict] = []
        self.faults_log: list[tuple[float, str]] = []
        self.errors: list[str] = []
        self.canary_checks: list[dict] = []
        self.leak_samples: list[tuple[float, int]] = []
        self.leak_events: list[dict] = []  # per source address, with whose it was (see attribute_leaks)
        self.counter = 0
        self.current = ("start", 0.0)  # the perturbation in progress (kind, since)
        self.c = None

    # -- helpers --------------------------------------------------------------------------------
    def now(self) -> float:
        return time.monotonic() - self.t0

    def node(self, *argv, check=False):
        return self.c.topology.node.run(*argv, check=check)

    def ipt(self, tool: str = "iptables") -> str:
        return f"{tool}-{self.backend}" if self.backend else tool

    def rules(self) -> dict:
        nat = self.node(f"{self.ipt('iptables')}-save", "-t", "nat").stdout
        filt = self.node(f"{self.ipt('iptables')}-save", "-t", "filter").stdout
        return checks.node_rules(nat, filt)

    def all_pods(self) -> list[dict]:
        return self.c.pods()

    def component_pids(self) -> dict[str, list[int]]:
        """Running component processes by name: initializer (one per replica), podwatch, proxy."""
        out: dict[str, list[int]] = {"initializer": [], "podwatch": [], "proxy": []}
        for p in self.c.pods("default", DS_SELECTOR) + self.c.pods("kube-system", INI_SELECTOR):
            rt = self.c.pod_runtime(p)
            if rt is None:
                continue
            for ct in rt.containers:
                if ct.proc is None or ct.proc.poll() is not None:
                    continue
                name = (
                    "podwatch"
                    if "podwatch" in ct.name
                    else "initializer"
                    if "initializer" in ct.name
                    else "proxy"
                    if ct.name == self.proxy_name
                    else None
                )
                if name:
                    out[name].append(ct.proc.pid)
        return out

    def curl(self, pod: dict, url: str) -> str:
        try:
            return self.c.exec_in_pod(
                pod, ["curl", "-s", "-m", str(int(scaled(8))), "-o", "/dev/null", "-w", "%{http_code}", url], timeout=scaled(30)
            ).stdout
        except Exception as e:  # noqa: BLE001 - a pod that went away is an answer too
            return f"error: {e}"

    def proxy_log(self) -> str:
        pods = self.c.pods("default", DS_SELECTOR)
        return self.c.read_log(pods[0], self.proxy_name) if pods else ""

    # -- setup --------------------------------------------------------------------------------------
    def setup(self) -> None:
        from kubesim.kubelet.cluster import SimCluster

        self.c = SimCluster(kubelet_options={"backoff_initial": 0.5, "backoff_cap": 4.0})
        self.c.start()
        # the simulated kubelet and the soak's own requests are exempt from the faults; the components
        # (in-cluster config from their pods) get them
        self.c.client.api_client.set_default_header("X-Kubesim-No-Faults", "1")
        e2e.apply(self.c, e2e.chart_documents())
        for ns in NAMESPACES[1:]:
            e2e.create_namespace(self.c, ns)
        ds = self.c.wait_pods(DS_SELECTOR, "default", timeout=90)[0]
        self.c.wait_pods(INI_SELECTOR, "kube-system", count=2, timeout=90)
        from kubesim.demo import proxy_container

        self.proxy_name = proxy_container(ds)
        self.backend = None
        for b in ("nft", "legacy"):
            if "TPROXY-GUARD" in self.node(f"iptables-{b}-save", "-t", "filter").stdout:
                self.backend = b
        self.leaks = e2e.LeakCounter(self.c.topology.internet).install()
        self.install_leak_by_ip()
        self.c.client.create(DEPLOY.format(ns="default"), deployment("soak-canary", True))
        self.canary = self.c.wait_pods("soak=soak-canary", timeout=90)[0]
        self.good_policy = self.c.client.get(POLICY)["data"]["policy.yaml"]
        self.say(f"soak: cluster up, iptables backend {self.backend}, canary {self.canary['status']['podIP']}")

    # -- leak attribution ---------------------------------------------------------------------------
    BY_IP = "SOAK-LEAK-BY-IP"

    def install_leak_by_ip(self) -> None:
        """A second counter in the internet namespace, one rule per IPv4 pod address (same exclusion
        as the LeakCounter: the probe address), so a counted packet can be traced to a pod."""
        from kubesim.topology import POD_CIDR
        from controllerkit.probe import PROBE_ADDRESS

        net = POD_CIDR.rsplit(".", 1)[0]
        rules = [f"-A {self.BY_IP} -d {PROBE_ADDRESS}/32 -j RETURN"] + [f"-A {self.BY_IP} -s {net}.{i}/32" for i in range(1, 255)]
        text = f"*filter\n:{self.BY_IP} - [0:0]\n-I INPUT 1 -s {POD_CIDR} -j {self.BY_IP}\n" + "\n".join(rules) + "\nCOMMIT\n"
        self.c.topology.internet.run("iptables-restore", "--noflush", input=text)
        self._by_ip_last: dict[str, int] = {}
        self._pods_prev: dict[str, list] = {}

    def leak_by_ip(self) -> dict[str, int]:
        out = self.c.topology.internet.run("iptables", "-w", "-L", self.BY_IP, "-v", "-x", "-n").stdout
        counts = {}
        for line in out.splitlines():  # pkts bytes [target] prot opt in out source destination
            f = line.split()
            if f and f[0].isdigit() and "RETURN" not in f:
                src = [x for x in f if x.startswith("198.18.")]
                if src:
                    counts[src[0]] = int(f[0])
        return counts

    def attribute_leaks(self) -> None:
        """Every 0.5 s: which pod addresses were counted since the last look, and what each address was
        at both looks: a locked pod present in the API both times (``live``: the invariant broken), a
        locked pod deleted from the API in between or before while the kubelet still ran it
        (``deleted``), a plain pod (``plain``), or nothing known (``unknown``)."""
        while not self.stop.is_set():
            self.stop.wait(0.5)
            try:
                pods = self.all_pods()
                now_by_ip: dict[str, list] = {}
                for p in pods:
                    ip = (p.get("status") or {}).get("podIP")
                    if ip:
                        now_by_ip.setdefault(ip, []).append(p)
                runtimes = {
                    rt.net.ip: uid
                    for uid, rt in list(self.c.kubelet.runtimes.items())
                    if rt.net is not None and not rt.host_network
                }
                counts = self.leak_by_ip()
            except Exception:  # noqa: BLE001 - try again next tick
                continue
            for ip, n in counts.items():
                delta = n - self._by_ip_last.get(ip, 0)
                if delta <= 0:
                    continue
                before, after = self._pods_prev.get(ip, []), now_by_ip.get(ip, [])
                locked_before = [p for p in before if checks.locked_pod_ips([p])]
                locked_after = [p for p in after if checks.locked_pod_ips([p])]
                uids_after = {p["metadata"]["uid"] for p in locked_after}
                if [p for p in locked_before if p["metadata"]["uid"] in uids_after]:
                    kind = "live"
                elif locked_before or (ip in runtimes and not after):
                    kind = "deleted"
                elif before or after:
                    kind = "plain" if not (locked_before or locked_after) else "live"
                else:
                    kind = "unknown"
                who = (locked_before or before or after or [{"metadata": {"name": "?", "namespace": "?"}}])[0]["metadata"]
                self.leak_events.append(
                    {
                        "t": self.now(),
                        "ip": ip,
                        "packets": delta,
                        "kind": kind,
                        "pod": f"{who.get('namespace')}/{who.get('name')}",
                        "kubelet_still_runs_it": ip in runtimes,
                        "during": f"{self.current[0]} (since t={self.current[1]:.1f}s)",
                    }
                )
            self._by_ip_last = counts
            self._pods_prev = now_by_ip

    # -- workload -------------------------------------------------------------------------------
    def creator(self, wid: int) -> None:
        interval = 3.0 / self.create_rate  # three creators share the rate
        while not self.stop.is_set():
            t_next = time.monotonic() + interval * self.rng.uniform(0.5, 1.5)
            with self.lock:
                busy = len(self.live) >= self.max_live
                self.counter += 1
                n = self.counter
            if busy:
                self.stop.wait(0.2)
                continue
            locked = self.rng.random() < 0.5
            ns = self.rng.choice(NAMESPACES)
            name = f"soak-{'l' if locked else 'p'}-{n}"
            rec = {"t": self.now(), "ns": ns, "name": name, "locked": locked}
            t = time.monotonic()
            err = obj = None
            try:
                obj = self.c.client.create(DEPLOY.format(ns=ns), deployment(name, locked))
            except ApiError as e:
                err = e
            except Exception as e:  # noqa: BLE001 - no answer at all
                err = e
            rec["latency"] = time.monotonic() - t
            rec["outcome"] = checks.classify_create(rec["latency"], err)
            if err is not None:
                rec["error"] = f"{getattr(err, 'code', '')} {getattr(err, 'reason', '')}: {getattr(err, 'message', err)}"
            else:
                rec["injection"] = checks.injection_problem(obj, locked)
            with self.lock:
                self.creates.append(rec)
                if err is None or rec["outcome"] == "hang":
                    self.live.append((time.monotonic() + self.rng.uniform(2, 8), ns, name))
            self.stop.wait(max(0.0, t_next - time.monotonic()))

    def deleter(self) -> None:
        while not self.stop.is_set():
            now = time.monotonic()
            with self.lock:
                due = [x for x in self.live if x[0] <= now]
                self.live = [x for x in self.live if x[0] > now]
            for _, ns, name in due:
                self.delete(ns, name)
            self.stop.wait(0.2)

    def delete(self, ns: str, name: str) -> None:
        try:
            self.c.client.delete(f"{DEPLOY.format(ns=ns)}/{name}")
        except ApiError as e:
            if e.code != 404:
                self.errors.append(f"delete {ns}/{name}: {e}")

    # -- chaos ------------------------------------------------------------------------------------
    def faults(self) -> None:
        i = 0
        while not self.stop.is_set():
            spec = FAULT_PHASES[i % len(FAULT_PHASES)]
            self.c.server.set_faults(spec or None)
            self.faults_log.append((self.now(), spec or "none"))
            i += 1
            self.stop.wait(12)
        self.c.server.set_faults(None)

    def chaos(self) -> None:
        kinds = ["kill-initializer", "kill-podwatch", "kill-proxy", "flush", "flush", "policy-good", "policy-bad"]
        order = []
        while not self.stop.is_set():
            if not order:
                order = kinds[:]
                self.rng.shuffle(order)
            kind = order.pop()
            self.current = (kind, self.now())
            try:
                rec = getattr(self, "do_" + kind.replace("-", "_"))()
            except Exception as e:  # noqa: BLE001 - record, keep going
                rec = {"kind": kind, "error": f"{e!r}", "trace": traceback.format_exc()[-1500:]}
            rec.setdefault("kind", kind)
            self.current = ("pause", self.now())
            self.perturbations.append(rec)
            self.stop.wait(self.rng.uniform(1, 4))

    def _kill(self, component: str) -> dict:
        pids = self.component_pids()[component]
        if not pids:
            return {"error": f"no running {component} process"}
        pid = self.rng.choice(pids)
        os.kill(pid, signal.SIGKILL)
        return {"t": self.now(), "pid": pid}

    def replaced(self, component: str, rec: dict, count: int = 1) -> bool:
        """The killed process is gone and ``count`` processes of the component run again."""
        pids = self.component_pids()[component]
        return rec.get("pid") not in pids and len(pids) >= count

    def do_kill_initializer(self) -> dict:
        rec = self._kill("initializer")
        t = time.monotonic()
        ok = self._wait(lambda: self.replaced("initializer", rec, 2), CONVERGE_BOUND["kill-initializer"])
        rec.update(converged=ok, converge_s=time.monotonic() - t if ok else None, what="both replicas running again")
        return rec

    def do_kill_podwatch(self) -> dict:
        must = checks.locked_pod_ips(self.all_pods())
        rec = self._kill("podwatch")
        t = time.monotonic()
        last = []

        def converged():
            nonlocal last
            # the pods locked at the kill that still exist (deleted ones need no rules)
            last = self.gaps(must & checks.locked_pod_ips(self.all_pods()))
            return self.replaced("podwatch", rec) and self.podwatch_ready() and last == []

        ok = self._wait(converged, CONVERGE_BOUND["kill-podwatch"])
        rec.update(
            converged=ok,
            converge_s=time.monotonic() - t if ok else None,
            what="a new podwatch ready and every locked pod's rules in place",
            gaps=None if ok else last,
        )
        return rec

    def do_kill_proxy(self) -> dict:
        rec = self._kill("proxy")
        t = time.monotonic()
        seen = []

        def back():
            if not self.replaced("proxy", rec):
                return False
            code = self.curl(self.canary, BLOCKED)
            seen.append(code)
            return code == "418"

        ok = self._wait(back, CONVERGE_BOUND["kill-proxy"], interval=0.5)
        rec.update(
            converged=ok,
            converge_s=time.monotonic() - t if ok else None,
            what="the canary's blocked request answered 418 again",
            bypass=[c for c in seen if c == "200"],
        )
        return rec

    def do_flush(self) -> dict:
        name = self.rng.choice(sorted(FLUSHES))
        argv = FLUSHES[name]
        if "__jump__" in argv:  # delete the jump rule as it is written (its comment varies)
            pre = [
                l
                for l in self.node(f"{self.ipt()}-save", "-t", "nat").stdout.splitlines()
                if l.startswith("-A PREROUTING") and "TPROXY-REDIRECT" in l
            ]
            if not pre:
                return {"flush": name, "error": "no jump to delete"}
            argv = ["-t", "nat", "-D"] + shlex.split(pre[0])[1:]
        must = checks.locked_pod_ips(self.all_pods())
        t_flush = self.now()
        r = self.node(self.ipt(), "-w", *argv)
        if r.returncode != 0:
            return {"flush": name, "error": r.stderr.strip()}
        t = time.monotonic()
        last = []

        def converged():
            nonlocal last
            still = must & checks.locked_pod_ips(self.all_pods())
            last = self.gaps(still)
            return last == []

        ok = self._wait(converged, CONVERGE_BOUND["flush"], interval=0.25)
        return {
            "t": t_flush,
            "flush": name,
            "converged": ok,
            "converge_s": time.monotonic() - t if ok else None,
            "what": "jumps first, every locked pod's redirect and guard back",
            "gaps": None if ok else last,
        }

    def do_policy_good(self) -> dict:
        pol = yaml.safe_load(self.good_policy)
        pol.setdefault("rules", []).append({"host": f"soak-{self.rng.randrange(10**6)}.example.org"})
        self.set_policy(yaml.safe_dump(pol))
        t = time.monotonic()
        loaded_before = self.proxy_log().count('"policy_loaded"')
        ok = self._wait(lambda: self.proxy_log().count('"policy_loaded"') > loaded_before, CONVERGE_BOUND["policy-good"])
        rec = {
            "t": self.now(),
            "converged": ok,
            "converge_s": time.monotonic() - t if ok else None,
            "what": "the proxy logged policy_loaded",
        }
        rec["canary"] = (self.curl(self.canary, BLOCKED), self.curl(self.canary, ALLOWED))
        self.set_policy(self.good_policy)
        return rec

    def do_policy_bad(self) -> dict:
        before = self.proxy_log().count('"policy_rejected"')
        self.set_policy("mode: [this is not a policy\n")
        t = time.monotonic()
        ok = self._wait(lambda: self.proxy_log().count('"policy_rejected"') > before, CONVERGE_BOUND["policy-bad"])
        rec = {
            "t": self.now(),
            "converged": ok,
            "converge_s": time.monotonic() - t if ok else None,
            "what": "the proxy logged policy_rejected (last good kept)",
        }
        rec["canary"] = (self.curl(self.canary, BLOCKED), self.curl(self.canary, ALLOWED))
        self.set_policy(self.good_policy)
        return rec

    def set_policy(self, text: str) -> None:
        cm = self.c.client.get(POLICY)
        cm["data"]["policy.yaml"] = text
        self.c.client.replace(POLICY, cm)

    def podwatch_ready(self) -> bool:
        r = self.node("curl", "-s", "-m", "2", "-o", "/dev/null", "-w", "%{http_code}", "http://127.0.0.1:9181/readyz")
        return r.stdout == "200"

    def gaps(self, must: set[str]) -> list[str]:
        return checks.convergence_gaps(self.rules(), must)

    def _wait(self, cond, bound: float, interval: float = 0.2) -> bool:
        """True as soon as cond() holds, False after ``bound`` s (scaled). Never raises."""
        deadline = time.monotonic() + scaled(bound)
        while time.monotonic() < deadline:
            try:
                if cond():
                    return True
            except Exception:  # noqa: BLE001 - a transient API or exec error: poll again
                pass
            time.sleep(interval)
        return False

    # -- sampling ---------------------------------------------------------------------------------
    @staticmethod
    def proc_stats(pid: int) -> dict | None:
        try:
            with open(f"/proc/{pid}/status") as f:
                st = dict(l.split(":", 1) for l in f if ":" in l)
            return {
                "rss_mb": int(st["VmRSS"].split()[0]) / 1024,
                "threads": int(st["Threads"]),
                "fds": len(os.listdir(f"/proc/{pid}/fd")),
            }
        except (OSError, KeyError, ValueError):
            return None

    def sampler(self) -> None:
        while not self.stop.is_set():
            s = {"t": self.now(), "procs": {}}
            try:
                for comp, pids in self.component_pids().items():
                    for i, pid in enumerate(sorted(pids)):
                        st = self.proc_stats(pid)
                        if st:
                            s["procs"][f"{comp}#{i}" if comp == "initializer" else comp] = {"pid": pid, **st}
                st = self.proc_stats(os.getpid())
                if st:
                    s["procs"]["kubesim (API server + kubelet + soak)"] = {"pid": os.getpid(), **st}
                r = self.rules()
                locked = checks.locked_pod_ips(self.all_pods())
                s["rule_lines"] = r["rule_lines"]
                s["locked_pods"] = len(locked)
                s["leaks"] = self.leaks.packets()
                self.leak_samples.append((s["t"], s["leaks"]))
            except Exception as e:  # noqa: BLE001
                s["error"] = repr(e)
            self.samples.append(s)
            self.stop.wait(2.0)

    def canary_prober(self) -> None:
        while not self.stop.is_set():
            self.stop.wait(10)
            self.canary_checks.append({"t": self.now(), "blocked": self.curl(self.canary, BLOCKED)})

    # -- the run ------------------------------------------------------------------------------------
    def run(self) -> dict:
        os.makedirs(self.report_dir, exist_ok=True)
        started = time.time()
        from controllerkit.log import setup_logging

        self.logf = open(os.path.join(self.report_dir, "kubesim.log"), "a")
        setup_logging("kubesim", "info", stream=self.logf)
        try:
            self.setup()
            self.t0 = time.monotonic()
            threads = [threading.Thread(target=self.creator, args=(i,), name=f"creator-{i}") for i in range(3)]
            threads += [
                threading.Thread(target=f, name=f.__name__)
                for f in (self.deleter, self.chaos, self.faults, self.sampler, self.canary_prober, self.attribute_leaks)
            ]
            for t in threads:
                t.daemon = True
                t.start()
            while self.now() < self.duration:
                time.sleep(1)
                if int(self.now()) % 30 == 0:
                    self.progress()
            self.stop.set()
            for t in threads:
                t.join(scaled(90))
            hung = [t.name for t in threads if t.is_alive()]
            if hung:
                self.errors.append(f"soak threads still running after the end: {hung}")
            self.c.server.set_faults(None)
            final = self.finish()
        except Exception:  # noqa: BLE001
            self.errors.append(traceback.format_exc())
            final = {}
        finally:
            if self.c is not None:
                self.c.stop()
            self.logf.flush()
        from soak import report

        results = report.summarize(self, final, started)
        report.write(results, self.samples, self.report_dir)
        return results

    def progress(self) -> None:
        with self.lock:
            n = len(self.creates)
        self.say(
            f"soak: t={self.now():.0f}s creates={n} perturbations={len(self.perturbations)} "
            f"leaks={self.leak_samples[-1][1] if self.leak_samples else '?'}"
        )

    def finish(self) -> dict:
        """After the chaos: delete every soak deployment, check the node converges to the canary's rules
        only, then the controls that show the leak counter and the convergence check can fail."""
        out = {}
        with self.lock:
            live, self.live = self.live, []
        for _, ns, name in live:
            self.delete(ns, name)
        canary_ip = self.canary["status"]["podIP"]
        t = time.monotonic()
        last = []

        def only_canary():
            nonlocal last
            r = self.rules()
            last = checks.convergence_gaps(r, {canary_ip}) + [
                f"rules for gone pods: {sorted(r['redirect'] - {canary_ip})}"
            ] * bool(r["redirect"] - {canary_ip})
            return not last and not [
                p for p in self.all_pods() if p["metadata"]["name"].startswith("soak-") and "canary" not in p["metadata"]["name"]
            ]

        ok = self._wait(only_canary, 90, 0.5)
        out["final_convergence"] = {"converged": ok, "s": time.monotonic() - t, "gaps": last}
        out["leaks_during_soak"] = self.leaks.packets()
        out["final_canary"] = (self.curl(self.canary, BLOCKED), self.curl(self.canary, ALLOWED))
        out["control_convergence"] = self.control_convergence()
        out["control_leak"] = self.control_leak()
        out["control_lock_removed"] = self.control_lock_removed()
        return out

    def control_convergence(self) -> dict:
        """podwatch frozen (SIGSTOP), the redirect chain flushed: the check must say "not converged";
        then SIGCONT and it converges again."""
        pid = self.component_pids()["podwatch"][0]
        canary_ip = self.canary["status"]["podIP"]
        os.kill(pid, signal.SIGSTOP)
        try:
            self.node(self.ipt(), "-w", "-t", "nat", "-F", "TPROXY-REDIRECT")
            frozen_gaps = self.gaps({canary_ip})  # nothing can repair it while podwatch is frozen
        finally:
            os.kill(pid, signal.SIGCONT)
        t = time.monotonic()
        ok = self._wait(lambda: self.gaps({canary_ip}) == [], CONVERGE_BOUND["flush"])
        return {
            "gaps_while_frozen": frozen_gaps,
            "detected": bool(frozen_gaps),
            "converged_after_resume": ok,
            "s": time.monotonic() - t,
        }

    def control_lock_removed(self) -> dict:
        """A throwaway locked pod loses its own lock (the OUTPUT jump deleted in its namespace, what a
        privileged app container could do) and sends tcp to 203.0.113.10:8443 itself. The node's guard
        must still stop it (0 counted). Then its guard rule is deleted at the node too: the same packets
        must now be counted: with both layers gone the counter shows the leak."""
        name = "soak-control-unlocked"
        self.c.client.create(DEPLOY.format(ns="default"), deployment(name, True))
        try:
            pod = self.c.wait_pods(f"soak={name}", timeout=90)[0]
            ip = pod["status"]["podIP"]
            ns = self.c.pod_runtime(pod).net.netns
            removed = []
            for b in ("nft", "legacy"):
                for line in ns.run(f"iptables-{b}-save", "-t", "filter", check=False).stdout.splitlines():
                    if line.startswith("-A OUTPUT") and "TPROXY-EGRESS" in line:
                        ns.run(f"iptables-{b}", "-w", "-D", *shlex.split(line)[1:], check=False)
                        removed.append(b)

            def send():
                return ns.run(
                    "curl", "-s", "-m", "2", "-o", "/dev/null", "-w", "%{http_code}", "http://203.0.113.10:8443/", check=False
                )

            before = self.leaks.packets()
            first = send()
            guard_only = self.leaks.packets() - before
            guard = [
                l
                for l in self.node(f"{self.ipt()}-save", "-t", "filter").stdout.splitlines()
                if l.startswith(f"-A TPROXY-GUARD -s {ip}/32")
            ]
            for line in guard:
                self.node(self.ipt(), "-w", "-D", *shlex.split(line)[1:])
            before = self.leaks.packets()
            send()
            both = self.leaks.packets() - before
            return {
                "pod_lock_removed": removed,
                "counted_with_guard": guard_only,
                "curl_with_guard": first.stdout,
                "guard_rules_deleted": len(guard),
                "counted_without_guard": both,
                "detected": bool(removed) and guard_only == 0 and both > 0,
            }
        finally:
            self.delete("default", name)

    def control_leak(self) -> dict:
        """A pod without the lock (a plain deployment) talks to the internet directly: the counter must
        count it. Proves the counter sees pod-sourced packets after everything the soak did."""
        before = self.leaks.packets()
        dep = deployment("soak-control-leak", False)
        dep["spec"]["template"]["spec"]["containers"][0]["command"] = [
            "sh",
            "-c",
            "while true; do curl -s -m 2 -o /dev/null http://203.0.113.10:8443/; sleep 0.5; done",
        ]
        self.c.client.create(DEPLOY.format(ns="default"), dep)
        try:
            ok = self._wait(lambda: self.leaks.packets() > before, 60, 0.5)
            return {"counted": self.leaks.packets() - before, "detected": ok}
        finally:
            self.delete("default", "soak-control-leak")
