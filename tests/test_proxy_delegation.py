"""Namespace policies (proxy/delegation.py) through the addon against a kubesim API server, and
the identity the addon decides with when a pod address is reused (proxy/clients.py)."""

from __future__ import annotations

import asyncio
import json
import os

import pytest
from mitmproxy.test import tutils

from kubesim.testing import api_client_for, raw, wait_for
from mitmproxy.test import taddons
from test_proxy_addon import _bump, audit_lines, fake_resolve, make_flow, write_policy

from proxy.core import TproxyAddon

POLICY = """
rules: [{host: storage.googleapis.com}]
deny_hosts: [b.a.example]
scopes:
  - name: payments
    match: {namespaces: [payments]}
    mode: report
    rules: [{host: www.google.com}]
delegation:
  configMap: tproxy-egress
  ceiling:
    hosts: ["*.corp.example"]
    ranges: [198.18.0.0/15]
"""
PODS = {"10.0.0.5": ("team-a", "web"), "10.0.0.6": ("team-b", "job"), "10.0.0.7": ("payments", "api")}


def write_identity(path, pods: dict) -> None:
    doc = {
        "version": 1,
        "node": "node-1",
        "pods": {
            ip: {"namespace": ns, "name": name, "serviceAccount": "default", "labels": {}} for ip, (ns, name) in pods.items()
        },
    }
    if os.path.exists(path):
        _bump(path, json.dumps(doc))
    else:
        with open(path, "w") as f:
            f.write(json.dumps(doc))


@pytest.fixture
def audit_file(tmp_path):
    return tmp_path / "audit.jsonl"


@pytest.fixture
def addon(audit_file):
    a = TproxyAddon(resolver=fake_resolve)
    with taddons.context(a) as tctx:
        tctx.configure(a, tproxy_audit=str(audit_file))
        a.tctx = tctx
        yield a
        a.done()


@pytest.fixture
def cluster(kubesim_server_factory, tmp_path):
    srv = kubesim_server_factory(k8s_version="1.13")
    client = api_client_for(srv)
    for ns in ("team-a", "team-b", "payments"):
        status, out = raw(client, "POST", "/api/v1/namespaces", body={"metadata": {"name": ns}})
        assert status in (201, 409), out
    yield srv, client, srv.write_kubeconfig(str(tmp_path / "kubeconfig"))
    client.close()


def put_configmap(client, ns: str, text: str, name: str = "tproxy-egress") -> None:
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": ns}, "data": {"policy.yaml": text}}
    status, out = raw(client, "PUT", f"/api/v1/namespaces/{ns}/configmaps/{name}", body=body)
    if status == 404:
        status, out = raw(client, "POST", f"/api/v1/namespaces/{ns}/configmaps", body=body)
    assert status in (200, 201), out


def decide(addon, host: str, client_ip: str) -> tuple[str, str]:
    """(decision, scope) of a request from ``client_ip`` (a new connection) to ``host``."""
    f = make_flow(host, "/", client_ip=client_ip)
    asyncio.run(addon.request(f))
    if f.response is None:  # allowed or reported: as if the upstream answered
        f.response = tutils.tresp()
        addon.response(f)
    addon.client_disconnected(f.client_conn)
    line = audit_lines(addon.audit_path)[-1]
    return line["decision"], line["scope"]


@pytest.fixture
def wired(addon, audit_file, cluster, tmp_path):
    srv, client, kubeconfig = cluster
    identity = str(tmp_path / "identity.json")
    write_identity(identity, PODS)
    addon.audit_path = audit_file
    addon.tctx.configure(addon, tproxy_kubeconfig=kubeconfig, tproxy_identity=identity, tproxy_audit_flush_ms=0)
    addon.tctx.configure(addon, tproxy_policy=write_policy(tmp_path, POLICY))
    assert addon.delegation_watch is not None and addon.delegation_watch.informer.wait_for_sync(10)
    return addon, client, identity


def rejections(addon, ns: str, cause: str) -> float:
    return (
        addon.metrics.registry.get_sample_value("tproxy_namespace_policy_rejections_total", {"namespace": ns, "cause": cause})
        or 0.0
    )


def events(client, ns: str) -> list[dict]:
    status, out = raw(client, "GET", f"/api/v1/namespaces/{ns}/events")
    assert status == 200, out
    return [e for e in out["items"] if e.get("reason") == "PolicyRejected"]


def test_namespace_policies_load_edit_and_reject(wired):
    addon, client, _ = wired
    # nothing delegated yet: team-a gets the default
    assert decide(addon, "a.example", "10.0.0.5") == ("block", "default")
    put_configmap(client, "team-a", "rules: [{host: a.example}]\n")
    wait_for(lambda: "team-a" in addon.delegated, what="team-a's policy loaded")
    assert decide(addon, "a.example", "10.0.0.5") == ("allow", "namespace:team-a")
    assert decide(addon, "a.example", "10.0.0.6") == ("block", "default")  # not team-b's
    assert decide(addon, "storage.googleapis.com", "10.0.0.5") == ("block", "namespace:team-a")  # no fall-through
    assert decide(addon, "b.a.example", "10.0.0.5") == ("block", "namespace:team-a")  # the deny list wins
    # the file's scope for payments keeps its own mode
    assert decide(addon, "a.example", "10.0.0.7") == ("report", "payments")

    # edited at run time
    put_configmap(client, "team-a", "rules: [{host: www.google.com}]\n")
    wait_for(
        lambda: decide(addon, "www.google.com", "10.0.0.5") == ("allow", "namespace:team-a"), what="the edited policy in force"
    )
    assert decide(addon, "a.example", "10.0.0.5") == ("block", "namespace:team-a")

    # a ceiling violation: rejected with the reason (metric, Event); the last good stays
    put_configmap(client, "team-a", "rules: [{host: db.corp.example}]\n")
    wait_for(lambda: rejections(addon, "team-a", "ceiling") == 1, what="the ceiling rejection counted")
    ev = wait_for(lambda: events(client, "team-a"), what="a PolicyRejected event")
    assert ev[0]["involvedObject"]["kind"] == "ConfigMap" and ev[0]["involvedObject"]["name"] == "tproxy-egress"
    assert ev[0]["type"] == "Warning" and "the ceiling forbids it (*.corp.example)" in ev[0]["message"]
    assert "last good policy stays" in ev[0]["message"]
    assert decide(addon, "www.google.com", "10.0.0.5") == ("allow", "namespace:team-a")

    # one that does not parse, in a namespace that never had a good one: the default
    put_configmap(client, "team-b", "rules: [\n")
    wait_for(lambda: rejections(addon, "team-b", "parse") == 1, what="the parse rejection counted")
    assert "team-b" not in addon.delegated
    assert decide(addon, "storage.googleapis.com", "10.0.0.6") == ("allow", "default")
    assert "no policy of its own" in wait_for(lambda: events(client, "team-b"))[0]["message"]

    # other ConfigMaps are not policies; deleting the ConfigMap removes the namespace's policy
    put_configmap(client, "team-b", "rules: [{host: a.example}]\n", name="something-else")
    assert raw(client, "DELETE", "/api/v1/namespaces/team-a/configmaps/tproxy-egress")[0] == 200
    wait_for(lambda: "team-a" not in addon.delegated, what="team-a's policy removed")
    assert decide(addon, "www.google.com", "10.0.0.5") == ("block", "default")
    assert "team-b" not in addon.delegated


def test_a_tighter_ceiling_drops_a_namespace_policy_it_forbids(wired, tmp_path):
    addon, client, _ = wired
    put_configmap(client, "team-a", "rules: [{host: a.example}]\n")
    wait_for(lambda: "team-a" in addon.delegated)
    _bump(addon.policy.source, POLICY.replace('hosts: ["*.corp.example"]', 'hosts: ["*.corp.example", a.example]'))
    assert addon.check_policy_file()
    assert "team-a" not in addon.delegated and rejections(addon, "team-a", "ceiling") == 1
    assert decide(addon, "a.example", "10.0.0.5") == ("block", "default")


# -- identity at connection time -----------------------------------------------------------------------
def test_a_reused_address_never_carries_the_old_pods_policy(wired):
    """Pod team-a/web (10.0.0.5) is deleted; its address goes to payments/api at once. podwatch
    rewrites the identity file; the very next connection (well within the map's 1 s poll interval)
    is judged as the new pod's."""
    addon, client, identity = wired
    put_configmap(client, "team-a", "rules: [{host: a.example}]\n")
    wait_for(lambda: "team-a" in addon.delegated)
    assert decide(addon, "a.example", "10.0.0.5") == ("allow", "namespace:team-a")
    write_identity(identity, {**PODS, "10.0.0.5": ("payments", "api-2")})
    assert decide(addon, "a.example", "10.0.0.5") == ("report", "payments")
    # gone, the new pod's entry not known yet: no identity, the default
    write_identity(identity, {k: v for k, v in PODS.items() if k != "10.0.0.5"})
    assert decide(addon, "a.example", "10.0.0.5") == ("block", "default")
    # claimed by two pods at once (podwatch's conflict entry): neither's policy
    doc = json.loads(open(identity).read())
    doc["pods"]["10.0.0.5"] = {"conflict": True, "claimants": ["team-a/web", "payments/api-2"]}
    _bump(identity, json.dumps(doc))
    assert decide(addon, "a.example", "10.0.0.5") == ("block", "default")


def test_without_api_access_namespaces_get_the_files_scopes(addon, tmp_path, monkeypatch):
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    addon.tctx.configure(addon, tproxy_kubeconfig=str(tmp_path / "missing"))
    addon.tctx.configure(addon, tproxy_policy=write_policy(tmp_path, POLICY))
    assert addon.delegation_watch is None and addon.delegated == {}
    assert addon.policy.config_map == "tproxy-egress"


def test_a_bad_scoped_policy_file_keeps_the_last_good_and_its_namespace_policies(wired):
    addon, client, _ = wired
    put_configmap(client, "team-a", "rules: [{host: a.example}]\n")
    wait_for(lambda: "team-a" in addon.delegated)
    before, mine = addon.policy, addon.delegated
    _bump(before.source, POLICY.replace("mode: report", "mode: loud"))
    assert addon.check_policy_file() is False
    assert addon.policy is before and addon.delegated is mine
    assert addon.metrics.registry.get_sample_value("tproxy_policy_reloads_total", {"result": "error"}) == 1
    assert decide(addon, "a.example", "10.0.0.7") == ("report", "payments")
    assert decide(addon, "a.example", "10.0.0.5") == ("allow", "namespace:team-a")
