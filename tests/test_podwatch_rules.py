"""podwatch rule rendering: desired state from pod objects, golden restore files, jump fix-up.

Golden files live in tests/golden/podwatch/<scenario>.<family>.<table>.restore; regenerate with
``TPROXY_UPDATE_GOLDEN=1`` after an intended change and review the diff.
"""

from __future__ import annotations

import os

import pytest

from podwatch import identity, rules

GOLDEN = os.path.join(os.path.dirname(__file__), "golden", "podwatch")
ANN = "initializer.kubernetes.io/tproxy"


def pod(ns, name, ip=None, *, ann="true", phase="Running", ips=None, sa=None, labels=None, deleting=False):
    meta = {"namespace": ns, "name": name, "uid": f"uid-{ns}-{name}", "labels": labels or {"app": name}}
    if ann is not None:
        meta["annotations"] = {ANN: ann}
    if deleting:
        meta["deletionTimestamp"] = "2026-11-27T05:00:00Z"
    status = {"phase": phase}
    if ip:
        status["podIP"] = ip
    if ips:
        status["podIPs"] = [{"ip": i} for i in ips]
    spec = {"nodeName": "node-1"}
    if sa:
        spec["serviceAccountName"] = sa
    return {"metadata": meta, "spec": spec, "status": status}


SCENARIOS = {
    "empty": [],
    "web-and-web-2": [pod("default", "web", "10.4.0.5"), pod("default", "web-2", "10.4.0.6")],
    "same-name-two-namespaces": [pod("team-a", "web", "10.4.0.7"), pod("team-b", "web", "10.4.0.8")],
    "ipv6-and-dual-stack": [
        pod("default", "v6only", "2001:db8:1::5"),
        pod("default", "dual", "10.4.0.9", ips=["10.4.0.9", "2001:db8:1::9"]),
    ],
}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_golden_restore_input(scenario):
    rendered = rules.render(rules.locked_pods(SCENARIOS[scenario], ANN), 8080)
    for fam, tables in rendered.items():
        for table, text in tables.items():
            path = os.path.join(GOLDEN, f"{scenario}.{fam}.{table}.restore")
            if os.environ.get("TPROXY_UPDATE_GOLDEN"):
                os.makedirs(GOLDEN, exist_ok=True)
                with open(path, "w") as f:
                    f.write(text)
            with open(path) as f:
                assert text == f.read(), f"{path} differs (TPROXY_UPDATE_GOLDEN=1 to regenerate)"


def test_desired_state_filters_annotation_ip_phase():
    pods = [
        pod("d", "on", "10.0.0.1"),
        pod("d", "off", "10.0.0.2", ann="false"),
        pod("d", "none", "10.0.0.3", ann=None),
        pod("d", "noip"),
        pod("d", "done", "10.0.0.4", phase="Succeeded"),
        pod("d", "failed", "10.0.0.5", phase="Failed"),
        pod("d", "TRUE", "10.0.0.6", ann="TRUE"),
        pod("d", "going", "10.0.0.7", deleting=True),
        pod("d", "bad-ip", "not-an-ip"),
        pod("d", "hostnet", "10.0.0.8"),
    ]
    pods[-1]["spec"]["hostNetwork"] = True  # its IP is the node's: never lock it
    got = {p.name for p in rules.locked_pods(pods, ANN)}
    # a terminating pod still runs during its grace period: its rules stay until it is gone
    assert got == {"on", "TRUE", "going"}
    assert {p.name for p in rules.locked_pods(pods, ANN, namespace="other")} == set()


def test_removing_web_keeps_web_2_and_the_other_namespace():
    everyone = SCENARIOS["web-and-web-2"] + SCENARIOS["same-name-two-namespaces"]
    before = rules.render(rules.locked_pods(everyone, ANN), 8080)["ipv4"]["nat"]
    after = rules.render(
        rules.locked_pods(
            [p for p in everyone if p["metadata"]["name"] != "web" or p["metadata"]["namespace"] != "default"], ANN
        ),
        8080,
    )["ipv4"]["nat"]
    removed = set(before.splitlines()) - set(after.splitlines())
    assert removed == {ln for ln in before.splitlines() if '"default/web"' in ln} and len(removed) == 1


def test_jump_is_left_alone_when_single_and_first():
    nat = rules.OWNED["nat"]
    ours = f'-A PREROUTING -m comment --comment "{nat[2]}" -j {rules.REDIRECT_CHAIN}'
    live = rules.LiveJumps(jumps={"nat": [ours], "filter": []}, first={"nat": True, "filter": False})
    text = rules.render([], 8080, {"ipv4": live})["ipv4"]
    assert "PREROUTING" not in text["nat"]
    assert text["filter"].count("-I FORWARD 1 ") == 1
    live.first["nat"] = False
    live.jumps["nat"] = [ours, ours]
    assert rules.render([], 8080, {"ipv4": live})["ipv4"]["nat"].count("-D PREROUTING ") == 2


def test_bad_host_port_is_rejected():
    with pytest.raises(ValueError, match="not a TCP port"):
        rules.render([], 70000)


def test_comment_quoting_survives_odd_names():
    p = rules.LockedPod(ip="10.0.0.1", namespace='we"ird', name="x")
    assert '--comment "we\'ird/x"' in rules.render([p], 8080)["ipv4"]["nat"]


def test_identity_document():
    pods = rules.locked_pods(SCENARIOS["same-name-two-namespaces"] + [pod("d", "sa", "10.0.0.9", sa="robot")], ANN)
    doc = identity.document("node-1", pods)
    assert doc["version"] == 1 and doc["node"] == "node-1"
    assert doc["pods"]["10.4.0.7"] == {
        "namespace": "team-a",
        "name": "web",
        "serviceAccount": "default",
        "labels": {"app": "web"},
        "uid": "uid-team-a-web",
    }
    assert doc["pods"]["10.0.0.9"]["serviceAccount"] == "robot"


def test_identity_file_is_replaced_atomically_and_only_on_change(tmp_path):
    path = tmp_path / "sub" / "identity.json"
    f = identity.IdentityFile(str(path), "node-1")
    pods = rules.locked_pods(SCENARIOS["web-and-web-2"], ANN)
    assert f.update(pods) and path.exists()
    inode = path.stat().st_ino
    assert not f.update(pods) and path.stat().st_ino == inode
    assert f.update(pods[:1]) and path.stat().st_ino != inode  # new file renamed over the old
    assert list(path.parent.iterdir()) == [path]  # no temporary left behind
