"""Fault injection (--faults): parsing, determinism under a seed, and each fault's effect."""

import time

import kubernetes.client as k
import pytest

from kubesim.apiserver import APIServer, FaultSpec
from kubesim.testing import api_client_for, raw, watch_events

CM = "/api/v1/namespaces/default/configmaps"


def test_parse_spec_and_errors():
    fs = FaultSpec.parse("conflict=0.2,watch_cut_after=50,watch_cut=0.05,gone=0.1,latency_ms=5,error500=0.01", seed=3)
    assert (fs.conflict, fs.watch_cut_after, fs.watch_cut, fs.gone, fs.latency_ms, fs.error500) == (0.2, 50, 0.05, 0.1, 5, 0.01)
    for bad, msg in (
        ("conflict=2", r"outside \[0, 1\]"),
        ("nope=1", "unknown fault"),
        ("conflict", "key=value"),
        ("latency_ms=x", "not an integer"),
        ("gone=abc", "not a number"),
    ):
        with pytest.raises(ValueError, match=msg):
            FaultSpec.parse(bad)


def conflict_pattern(seed):
    srv = APIServer(faults="conflict=0.3", seed=seed).start()
    try:
        c = api_client_for(srv)
        s, cm = raw(c, "POST", CM, body={"metadata": {"name": "x"}})
        out = []
        for i in range(40):
            cm["data"] = {"i": str(i)}
            cm["metadata"].pop("resourceVersion", None)
            s, body = raw(c, "PUT", f"{CM}/x", body=cm)
            out.append(s)
            if s == 409:
                assert body["reason"] == "Conflict" and "the object has been modified" in body["message"]
            else:
                cm = body
        return out
    finally:
        srv.stop()


def test_conflicts_are_deterministic_under_a_seed():
    """The same seed gives the same sequence of injected 409s; another seed a different one."""
    a, b, other = conflict_pattern(7), conflict_pattern(7), conflict_pattern(8)
    assert a == b
    assert 3 <= a.count(409) <= 25 and set(a) == {200, 409}
    assert a != other


def test_error500_injects_internal_errors_without_side_effects():
    srv = APIServer(faults="error500=1").start()
    try:
        c = api_client_for(srv)
        s, body = raw(c, "POST", CM, body={"metadata": {"name": "e"}})
        assert s == 500 and body["reason"] == "InternalError"
        srv.set_faults(None)
        assert raw(c, "GET", f"{CM}/e")[0] == 404
    finally:
        srv.stop()


def test_exempt_header_and_runtime_change():
    """X-Kubesim-No-Faults: 1 bypasses faults (for test set-up); set_faults changes them at runtime."""
    srv = APIServer(faults="error500=1").start()
    try:
        c = api_client_for(srv)
        c.set_default_header("X-Kubesim-No-Faults", "1")
        assert raw(c, "POST", CM, body={"metadata": {"name": "ok"}})[0] == 201
        plain = api_client_for(srv)
        assert raw(plain, "GET", CM)[0] == 500
        srv.set_faults("latency_ms=200")
        t0 = time.monotonic()
        assert raw(plain, "GET", CM)[0] == 200
        assert time.monotonic() - t0 >= 0.2
    finally:
        srv.stop()


def test_watch_cut_after_n_events():
    srv = APIServer(faults="watch_cut_after=3").start()
    try:
        c = api_client_for(srv)
        for i in range(6):
            k.CoreV1Api(c).create_namespaced_config_map("default", {"metadata": {"name": f"w{i}"}})
        evs = list(watch_events(c, CM, {"timeoutSeconds": "5"}))
        assert len(evs) == 3, "stream closed after 3 events, long before the timeout"
    finally:
        srv.stop()


def test_gone_fault_answers_410_to_resumed_watches():
    srv = APIServer(faults="gone=1").start()
    try:
        c = api_client_for(srv)
        evs = list(watch_events(c, CM, {"resourceVersion": str(srv.store.rv)}, timeout=5))
        assert evs[0]["type"] == "ERROR" and evs[0]["object"]["code"] == 410
        # a watch without a resourceVersion (a fresh list+watch) is not affected
        evs = list(watch_events(c, CM, {"timeoutSeconds": "1"}))
        assert all(e["type"] == "ADDED" for e in evs)
    finally:
        srv.stop()


def test_random_watch_cuts_are_seeded():
    def cut_lengths(seed):
        srv = APIServer(faults="watch_cut=0.3", seed=seed).start()
        try:
            c = api_client_for(srv)
            for i in range(30):
                k.CoreV1Api(c).create_namespaced_config_map("default", {"metadata": {"name": f"w{i}"}})
            return [len(list(watch_events(c, CM, {"timeoutSeconds": "1"}))) for _ in range(4)]
        finally:
            srv.stop()

    a = cut_lengths(1)
    assert a == cut_lengths(1)
    assert all(n < 30 for n in a)


def test_conflict_fault_hits_only_preconditioned_patches():
    """A PATCH without resourceVersion never gets 409 (the server re-applies it); one with it can."""
    srv = APIServer(faults="conflict=1").start()
    try:
        c = api_client_for(srv)
        s, cm = raw(c, "POST", CM, body={"metadata": {"name": "p"}})
        assert raw(c, "PATCH", f"{CM}/p", body={"data": {"a": "1"}}, content_type="application/merge-patch+json")[0] == 200
        rv = raw(c, "GET", f"{CM}/p")[1]["metadata"]["resourceVersion"]
        s, body = raw(
            c,
            "PATCH",
            f"{CM}/p",
            body={"metadata": {"resourceVersion": rv}, "data": {"a": "2"}},
            content_type="application/merge-patch+json",
        )
        assert s == 409 and body["reason"] == "Conflict"
    finally:
        srv.stop()
