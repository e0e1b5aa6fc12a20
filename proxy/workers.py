"""The proxy container's entry point: N mitmdump workers on consecutive ports, supervised.

::

    python -m proxy.workers [--workers auto|N] [--port 8080] [--metrics-port 9182] [--audit -]
                            [--ports-file F] -- <mitmdump options: --mode transparent -s addon.py --set ...>

One mitmdump process uses one core (Python, one event loop). Worker ``i`` listens on ``port + i``
with the same options, so all share the CA (confdir), the policy file and its hot reload (each
worker watches the file), and podwatch's identity file. podwatch spreads the locked pods'
connections over the range with one ``REDIRECT --to-ports A-B --random`` per pod (podwatch/rules.py);
the range is written to ``--ports-file`` for it to read.

What the supervisor adds:

- ``--workers auto`` (default): one per CPU this container may use (proxy/cpus.py: affinity, capped
  by the cgroup quota). More workers than that is refused (exit 2): they would only contend.
- every port of the range, and the metrics port, is checked free before anything starts (a clash
  is exit 2 naming the port), and the options the supervisor owns per worker (``--listen-port``,
  ``tproxy_metrics_port``, ``tproxy_metrics_host``, ``tproxy_audit``) are refused in the mitmdump part.
- a worker that exits is restarted after a capped exponential backoff (``worker_exited`` and
  ``worker_restart`` log lines, ``tproxy_worker_restarts_total``). While it is down its port has no
  listener, so connections the kernel's random pick sends there are reset: refused, never passed
  around the proxy (the redirect does not depend on a listener, and podwatch's guard rejects
  anything forwarded). A worker that exits ``--max-start-failures`` times in a row without ever
  becoming ready (a bad option, a broken image) stops the supervisor with the worker's exit status
  named: a clear crash loop for the kubelet instead of a silent one.
- one audit target: workers write their lines to a pipe; the supervisor appends whole lines
  (proxy/audit_relay.py). One ``/metrics`` per node: the workers' registries summed
  (proxy/worker_metrics.py), plus ``/healthz`` and ``/readyz`` (ready when every worker is).
- SIGTERM/SIGINT: every worker gets SIGTERM (its ``done`` hook flushes the audit log), then the
  supervisor exits 0.
"""

from __future__ import annotations

import argparse
import functools
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge

from controllerkit.backoff import Backoff
from controllerkit.cli import ExactArgumentParser
from controllerkit.log import setup_logging
from proxy.audit_relay import AuditSink, relay
from proxy.cpus import usable_cpus
from proxy.worker_metrics import SummingCollector

log = structlog.get_logger()

OWNED_SETTINGS = ("tproxy_metrics_port", "tproxy_metrics_host", "tproxy_audit")
OWNED_FLAGS = ("--listen-port", "-p", "--listen-host")
STABLE_SECONDS = 30.0  # a worker up this long has its restart backoff reset
TICK = 0.2


class UsageError(Exception):
    """Bad flags or an unusable port range: exit 2 with this message."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_port_free(port: int, what: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError as e:
            raise UsageError(f"port {port} ({what}) is not free: {e.strerror or e}") from None


def raise_open_files_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit (the workers inherit it); (old soft, new soft).

    Every proxied connection holds two descriptors in its worker (the pod's socket and the upstream
    one), and an idle keep-alive connection holds them for as long as the pod keeps it open. With a
    container's usual soft limit of 1024 a worker would stop accepting (EMFILE) at about 500
    connections; mitmproxy does not raise the limit itself.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == hard:
        return soft, soft
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return soft, hard


def check_worker_args(args: list[str]) -> None:
    for i, a in enumerate(args):
        if a in OWNED_FLAGS or a.startswith(tuple(f + "=" for f in OWNED_FLAGS)):
            raise UsageError(f"{a}: the supervisor sets each worker's listen port (use --port)")
        if a == "--set" and i + 1 < len(args) and args[i + 1].split("=", 1)[0] in OWNED_SETTINGS:
            raise UsageError(
                f"--set {args[i + 1]}: the supervisor owns {args[i + 1].split('=', 1)[0]} (use --metrics-port / --audit)"
            )


def resolve_workers(value: str, cpus: int) -> int:
    if value == "auto":
        return cpus
    try:
        n = int(value)
    except ValueError:
        raise UsageError(f"--workers {value!r}: not a number or 'auto'") from None
    if n < 1:
        raise UsageError(f"--workers {n}: at least 1")
    if n > cpus:
        raise UsageError(
            f"--workers {n}: more than the {cpus} CPU(s) this container may use "
            "(affinity and cgroup quota); extra workers would only contend for them"
        )
    return n


def plan_ports(port: int, n: int, metrics_port: int) -> list[int]:
    ports = list(range(port, port + n))
    if port < 1 or ports[-1] > 65535:
        raise UsageError(f"--port {port} with {n} workers needs ports {port}-{ports[-1]}: not all TCP ports")
    if metrics_port in ports:
        raise UsageError(f"--metrics-port {metrics_port} is inside the workers' port range {port}-{ports[-1]}")
    return ports


def write_ports_file(path: str, ports: list[int]) -> None:
    """``A-B`` (or ``A``) for podwatch, replaced atomically."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="ascii") as f:
        f.write(f"{ports[0]}-{ports[-1]}\n" if len(ports) > 1 else f"{ports[0]}\n")
    os.replace(tmp, path)


_PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int | None = None) -> None:
    """In the forked worker, before exec: SIGKILL when the supervisor dies, however it dies (a SIGKILL
    to the supervisor leaves no chance to stop its workers; orphaned workers would keep the node's
    ports, so a new supervisor could not start). In a container the runtime does the same when PID 1
    exits; this covers the supervisor run any other way."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if parent is not None and os.getppid() != parent:  # it died before the prctl took effect
        os._exit(1)


class Worker:
    def __init__(self, index: int, port: int, argv: list[str], sink: AuditSink, restart_initial: float = 0.5):
        self.index, self.port, self.sink = index, port, sink
        self.metrics_port = free_port()
        self.argv = argv + [
            "--listen-port",
            str(port),
            "--set",
            f"tproxy_metrics_port={self.metrics_port}",
            "--set",
            "tproxy_metrics_host=127.0.0.1",
            "--set",
            "tproxy_audit=-",
        ]
        self.proc: subprocess.Popen | None = None
        self.ready = False
        self.started = 0.0
        self.restart_at: float | None = None
        self.start_failures = 0
        self.backoff = Backoff(restart_initial, max(30.0, restart_initial))

    def start(self) -> None:
        self.proc = subprocess.Popen(
            self.argv,
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "TPROXY_WORKER": str(self.index)},
            preexec_fn=functools.partial(die_with_parent, os.getpid()),
        )
        self.ready, self.started, self.restart_at = False, time.monotonic(), None
        assert self.proc.stdout is not None
        threading.Thread(target=relay, args=(self.proc.stdout, self.sink), daemon=True, name=f"audit-relay-{self.index}").start()
        log.info("worker_started", worker=self.index, port=self.port, pid=self.proc.pid, metrics_port=self.metrics_port)

    def poll_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/readyz", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False


class Supervisor:
    def __init__(self, workers: list[Worker], max_start_failures: int):
        self.workers = workers
        self.max_start_failures = max_start_failures
        self.stop = threading.Event()
        self.failed: str | None = None
        self.registry = CollectorRegistry(auto_describe=True)
        self.restarts = Counter(
            "tproxy_worker_restarts", "Proxy workers restarted after they exited.", ["worker"], registry=self.registry
        )
        self.scrape_errors = Counter("tproxy_worker_scrape_errors", "Worker metrics scrapes that failed.", registry=self.registry)
        gauge = Gauge("tproxy_workers", "Proxy workers, by state (configured, ready).", ["state"], registry=self.registry)
        gauge.labels("configured").set_function(lambda: len(self.workers))
        gauge.labels("ready").set_function(lambda: sum(w.ready for w in self.workers))
        self.registry.register(SummingCollector(lambda: [w.metrics_port for w in self.workers if w.ready], self._scrape_error))

    def _scrape_error(self, port: int, error: Exception) -> None:
        self.scrape_errors.inc()
        log.warning("worker_scrape_failed", metrics_port=port, error=str(error))

    def readiness(self) -> tuple[bool, str]:
        ready = sum(w.ready for w in self.workers)
        return ready == len(self.workers), f"{ready}/{len(self.workers)} proxy workers ready"

    def tick(self) -> None:
        now = time.monotonic()
        for w in self.workers:
            if w.proc is None:
                if w.restart_at is not None and now >= w.restart_at:
                    self.restarts.labels(str(w.index)).inc()
                    w.start()
                continue
            code = w.proc.poll()
            if code is None:
                if not w.ready and w.poll_ready():
                    w.ready, w.start_failures = True, 0
                    log.info("worker_ready", worker=w.index, port=w.port)
                elif w.ready and now - w.started > STABLE_SECONDS:
                    w.backoff.reset()
                continue
            was_ready, w.proc, w.ready = w.ready, None, False
            if not was_ready:
                w.start_failures += 1
                if w.start_failures >= self.max_start_failures:
                    self.failed = (
                        f"worker {w.index} (port {w.port}) exited {w.start_failures} times in a row "
                        f"before it was ready (last exit status {code}); see its log lines above"
                    )
                    log.error("worker_crash_loop", worker=w.index, port=w.port, exit_status=code, failures=w.start_failures)
                    self.stop.set()
                    return
            delay = w.backoff.next()
            w.restart_at = now + delay
            log.error(
                "worker_exited",
                worker=w.index,
                port=w.port,
                exit_status=code,
                was_ready=was_ready,
                restart_in_seconds=round(delay, 2),
                effect="connections sent to this port are refused (reset) until it is back",
            )

    def run(self) -> int:
        for w in self.workers:
            w.start()
        while not self.stop.is_set():
            self.tick()
            self.stop.wait(TICK)
        self.shutdown()
        return 1 if self.failed else 0

    def shutdown(self) -> None:
        procs = [w.proc for w in self.workers if w.proc is not None]
        for p in procs:
            p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 8
        for p in procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        log.info("workers_stopped", workers=len(self.workers))


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    if "--" in argv:
        cut = argv.index("--")
        own, worker_args = argv[:cut], argv[cut + 1 :]
    else:
        own, worker_args = argv, []
    p = ExactArgumentParser(prog="python -m proxy.workers", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--workers",
        default=os.environ.get("TPROXY_WORKERS", "auto"),
        help="worker processes: 'auto' (one per usable CPU) or a number up to that",
    )
    p.add_argument("--port", type=int, default=8080, help="worker i listens on port+i")
    p.add_argument("--metrics-port", type=int, default=0, help="the node's summed /metrics, /healthz, /readyz (0: off)")
    p.add_argument("--metrics-host", default="0.0.0.0")
    p.add_argument("--audit", default="-", help="audit target: '-' (stdout) or a file appended to")
    p.add_argument("--ports-file", default="", help="write the port range here for podwatch ('A-B')")
    p.add_argument("--mitmdump", default="", help="the mitmdump binary (default: from PATH or next to python)")
    p.add_argument(
        "--max-start-failures", type=int, default=5, help="exit when a worker dies this many times in a row before it was ready"
    )
    p.add_argument(
        "--restart-initial",
        type=float,
        default=0.5,
        help="seconds before the first restart of a dead worker (doubling, capped at 30 s)",
    )
    p.add_argument("--log-level", default="info")
    return p.parse_args(own), worker_args


def mitmdump_binary(given: str) -> str:
    if given:
        return given
    found = shutil.which("mitmdump") or os.path.join(os.path.dirname(sys.executable), "mitmdump")
    if not os.path.exists(found):
        raise UsageError("mitmdump not found on PATH; pass --mitmdump")
    return found


def main(argv: list[str] | None = None) -> int:
    args, worker_args = parse(sys.argv[1:] if argv is None else argv)
    setup_logging("proxy-workers", args.log_level)
    try:
        check_worker_args(worker_args)
        if args.max_start_failures < 1 or args.restart_initial < 0:
            raise UsageError("--max-start-failures must be >= 1 and --restart-initial >= 0")
        cpus = usable_cpus()
        n = resolve_workers(str(args.workers), cpus)
        ports = plan_ports(args.port, n, args.metrics_port)
        for i, port in enumerate(ports):
            check_port_free(port, f"worker {i}")
        if args.metrics_port:
            check_port_free(args.metrics_port, "metrics")
        binary = mitmdump_binary(args.mitmdump)
        sink = AuditSink(args.audit)
    except (UsageError, OSError) as e:
        print(f"proxy.workers: {e}", file=sys.stderr)
        return 2
    try:
        before, after = raise_open_files_limit()
    except (ValueError, OSError) as e:  # not fatal: the workers run with the limit they were given
        log.warning("open_files_limit_unchanged", error=str(e), limit=resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    else:
        if after != before:
            log.info("open_files_limit_raised", soft_before=before, soft=after, reason="two descriptors per proxied connection")
    workers = [Worker(i, port, [binary, *worker_args], sink, args.restart_initial) for i, port in enumerate(ports)]
    sup = Supervisor(workers, args.max_start_failures)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: sup.stop.set())
    server = None
    if args.metrics_port:
        from controllerkit.serve import HealthServer

        server = HealthServer(args.metrics_port, host=args.metrics_host, ready=sup.readiness, registry=sup.registry).start()
    if args.ports_file:
        try:
            write_ports_file(args.ports_file, ports)
        except OSError as e:
            if server:
                server.stop()
            print(f"proxy.workers: cannot write the ports file for podwatch: {e}", file=sys.stderr)
            return 2
    log.info("workers_starting", workers=n, cpus=cpus, ports=f"{ports[0]}-{ports[-1]}", audit=args.audit)
    try:
        code = sup.run()
    finally:
        if server:
            server.stop()
        sink.close()
    if sup.failed:
        print(f"proxy.workers: {sup.failed}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
