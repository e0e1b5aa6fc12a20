"""proxy.identity.IdentityMap: podwatch's identity file, re-read on change, never fatal."""

import json
import os

from proxy.identity import IdentityMap, canonical_ip


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def write(path, pods, node="node-1"):
    tmp = str(path) + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"version": 1, "node": node, "pods": pods}, f)
    os.replace(tmp, path)  # atomic, like podwatch


def test_lookup_by_client_ip(tmp_path):
    p = tmp_path / "id.json"
    write(p, {"10.0.0.5": {"namespace": "default", "name": "web", "serviceAccount": "sa", "labels": {}}})
    m = IdentityMap(str(p))
    assert m.lookup("10.0.0.5") == {"namespace": "default", "name": "web", "serviceAccount": "sa", "labels": {}}
    assert m.node == "node-1"
    assert m.lookup("10.0.0.6") == {"namespace": "", "name": "", "serviceAccount": "", "labels": {}}


def test_replaced_file_is_picked_up_after_the_interval_not_before(tmp_path):
    p, clock = tmp_path / "id.json", Clock()
    write(p, {"10.0.0.5": {"namespace": "a", "name": "one"}})
    m = IdentityMap(str(p), clock=clock)
    write(p, {"10.0.0.5": {"namespace": "a", "name": "two"}})
    clock.t = 0.5
    assert m.lookup("10.0.0.5")["name"] == "one"  # at most one stat per second
    clock.t = 1.1
    assert m.lookup("10.0.0.5")["name"] == "two"


def test_missing_file_means_empty_identity_not_error(tmp_path):
    errors = []
    m = IdentityMap(str(tmp_path / "absent.json"), on_error=errors.append)
    assert m.lookup("10.0.0.5")["name"] == "" and errors == []


def test_broken_file_keeps_last_good_map_and_reports_once(tmp_path):
    p, clock, errors = tmp_path / "id.json", Clock(), []
    write(p, {"10.0.0.5": {"namespace": "a", "name": "one"}})
    m = IdentityMap(str(p), clock=clock, on_error=errors.append)
    p.write_text("{not json")
    os.utime(p, ns=(0, os.stat(p).st_mtime_ns + 10**9))
    for t in (2, 4, 6):
        clock.t = t
        assert m.lookup("10.0.0.5")["name"] == "one"
    assert len(errors) == 1 and "identity file" in errors[0]


def test_unsupported_version_is_rejected(tmp_path):
    p, errors = tmp_path / "id.json", []
    p.write_text(json.dumps({"version": 2, "pods": {}}))
    IdentityMap(str(p), on_error=errors.append)
    assert "unsupported version 2" in errors[0]


def test_v4_mapped_and_v6_addresses_are_canonical():
    assert canonical_ip("::ffff:10.0.0.1") == "10.0.0.1"
    assert canonical_ip("2001:DB8:0::1") == "2001:db8::1"
    assert canonical_ip("not-an-ip") == "not-an-ip"
