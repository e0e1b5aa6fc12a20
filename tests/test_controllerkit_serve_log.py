"""controllerkit.serve (HealthServer endpoints) and controllerkit.log (JSON lines)."""

import io
import json
import logging
import urllib.error
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, Counter

from controllerkit.log import get_logger, setup_logging
from controllerkit.serve import HealthServer


def fetch(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode(), r.headers.get("Content-Type")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(), e.headers.get("Content-Type")


@pytest.fixture
def health():
    state = {"ready": (False, "informers not synced")}
    reg = CollectorRegistry()
    Counter("tproxy_test_things", "things", registry=reg).inc(3)
    srv = HealthServer(0, host="127.0.0.1", ready=lambda: state["ready"], registry=reg).start()
    yield srv, state
    srv.stop()


def test_healthz_ok_and_unknown_path_404(health):
    srv, _ = health
    assert srv.port != 0
    base = f"http://127.0.0.1:{srv.port}"
    assert fetch(base + "/healthz")[:2] == (200, "ok\n")
    code, body, _ = fetch(base + "/nope")
    assert code == 404 and "/metrics" in body


def test_readyz_follows_ready_callback_with_reason(health):
    srv, state = health
    url = f"http://127.0.0.1:{srv.port}/readyz"
    assert fetch(url)[:2] == (503, "informers not synced\n")
    state["ready"] = True
    assert fetch(url)[:2] == (200, "ok\n")
    state["ready"] = False
    assert fetch(url)[:2] == (503, "not ready\n")
    state["ready"] = (True, "")
    assert fetch(url)[0] == 200


def test_readyz_when_check_raises_is_503_with_reason():
    def broken():
        raise RuntimeError("store missing")

    srv = HealthServer(0, host="127.0.0.1", ready=broken).start()
    try:
        code, body, _ = fetch(f"http://127.0.0.1:{srv.port}/readyz")
        assert code == 503 and "store missing" in body
    finally:
        srv.stop()


def test_metrics_prometheus_text(health):
    srv, _ = health
    code, body, ctype = fetch(f"http://127.0.0.1:{srv.port}/metrics")
    assert code == 200 and ctype.startswith("text/plain")
    assert "tproxy_test_things_total 3.0" in body


def test_stop_frees_the_port(health):
    srv, _ = health
    port = srv.port
    srv.stop()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)


@pytest.fixture(autouse=True)
def restore_logging():
    """setup_logging configures process-wide state; leave the session as it was found."""
    import structlog

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.reset_defaults()
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(level)


def lines(buf):
    return [json.loads(line) for line in buf.getvalue().splitlines() if line.strip()]


def test_setup_logging_json_lines_with_leading_keys():
    buf = io.StringIO()
    log = setup_logging("podwatch", "info", stream=buf)
    log.info("rules_applied", pods=3, node="n1")
    get_logger(informer="pods").warning("watch_failed", error="boom")
    log.debug("hidden")
    out = lines(buf)
    assert len(out) == 2, "debug is filtered at level info"
    first = out[0]
    assert list(first)[:4] == ["ts", "level", "component", "event"]
    assert first["level"] == "info" and first["component"] == "podwatch" and first["event"] == "rules_applied"
    assert first["pods"] == 3 and first["node"] == "n1"
    assert first["ts"].endswith("Z") and "T" in first["ts"]
    assert out[1]["informer"] == "pods" and out[1]["level"] == "warning" and out[1]["component"] == "podwatch"


def test_setup_logging_is_idempotent_and_renders_stdlib_logs():
    buf = io.StringIO()
    setup_logging("initializer", "debug", stream=buf)
    setup_logging("initializer", "debug", stream=buf)
    get_logger().debug("once")
    logging.getLogger("urllib3.test").warning("pool full %s", "x")
    out = lines(buf)
    assert [o["event"] for o in out] == ["once", "pool full x"]
    assert out[1]["level"] == "warning" and out[1]["logger"] == "urllib3.test"
    assert out[1]["component"] == "initializer"


def test_setup_logging_exception_info_is_in_the_line():
    buf = io.StringIO()
    log = setup_logging("proxy", stream=buf)
    try:
        raise ValueError("bad policy")
    except ValueError:
        log.exception("reload_failed")
    (line,) = lines(buf)
    assert line["level"] == "error" and "ValueError: bad policy" in line["exception"]


def test_setup_logging_rejects_unknown_level():
    with pytest.raises(ValueError, match="unknown log level 'loud'"):
        setup_logging("x", "loud", stream=io.StringIO())


def test_default_stream_follows_current_stderr(monkeypatch):
    first = io.StringIO()
    monkeypatch.setattr("sys.stderr", first)
    log = setup_logging("podwatch")
    first.close()  # e.g. pytest's capture of an earlier test, or a detached terminal
    second = io.StringIO()
    monkeypatch.setattr("sys.stderr", second)
    log.info("still_logging")
    logging.getLogger("kubernetes.test").error("lib error")
    assert [o["event"] for o in lines(second)] == ["still_logging", "lib error"]
