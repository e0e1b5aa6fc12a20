"""initializer/mutate.py: the decision and the injection, as pure functions."""

import copy
import json

import pytest

from initializer import mutate
from initializer.config import parse_config
from initializer.mutate import (
    ALPHA_INIT_ANNOTATION,
    BETA_INIT_ANNOTATION,
    FAIL,
    IGNORE,
    INJECT,
    SKIP,
    InjectionConflict,
    apply_injection,
    decide,
)
from initializer_objects import ANN, NAME
from initializer_objects import deployment as _deployment


CFG = parse_config("""
containers:
  - {name: tproxy, image: tproxy-sidecar, securityContext: {privileged: true}}
volumes:
  - {name: ca-certs-debian, configMap: {name: tproxy-root-certs}}
volumeMounts:
  - {name: ca-certs-debian, mountPath: /etc/ssl/certs/}
  - {name: ca-certs-debian, mountPath: /usr/local/share/ca-certificates/extra/}
envVars:
  - {name: http_proxy, value: "node:1080"}
""")


def deployment(pending=(NAME,), annotated=True, ns="default", **podspec):
    return _deployment(
        "web", annotated=annotated, pending=pending, meta={"namespace": ns, "uid": "u1", "resourceVersion": "7"}, **podspec
    )


def run(obj, require=False, **kw):
    return decide(obj, CFG, initializer_name=NAME, annotation=ANN, require_annotation=require, **kw)


def test_inject_adds_everything_and_completes_initialization():
    d = deployment()
    snapshot = copy.deepcopy(d)
    dec = run(d)
    assert d == snapshot, "decide must not modify its input (it may be the informer's cached object)"
    assert dec.action == INJECT
    new = dec.obj
    assert new["metadata"]["initializers"] is None
    assert new["metadata"]["resourceVersion"] == "7", "the write must carry the precondition"
    pod = new["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["initContainers"]] == ["tproxy"]
    assert [v["name"] for v in pod["volumes"]] == ["ca-certs-debian"]
    app = pod["containers"][0]
    assert [m["mountPath"] for m in app["volumeMounts"]] == ["/etc/ssl/certs/", "/usr/local/share/ca-certificates/extra/"]
    assert app["env"] == [{"name": "http_proxy", "value": "node:1080"}]
    assert new["spec"]["template"]["metadata"]["annotations"] == {ANN: "true"}
    assert BETA_INIT_ANNOTATION not in new["spec"]["template"]["metadata"]["annotations"]


def test_our_init_container_runs_before_user_init_containers_which_get_mounts_and_env():
    d = deployment(initContainers=[{"name": "migrate", "image": "m"}])
    pod = run(d).obj["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["initContainers"]] == ["tproxy", "migrate"]
    assert pod["initContainers"][1]["env"] == [{"name": "http_proxy", "value": "node:1080"}]
    assert "env" not in pod["initContainers"][0], "never inject env into our own init container"


def test_injection_is_idempotent():
    once = run(deployment()).obj
    again = copy.deepcopy(once)
    again["metadata"]["initializers"] = {"pending": [{"name": NAME}]}
    twice = run(again).obj
    assert twice["spec"] == once["spec"]


def test_server_defaults_on_existing_objects_are_not_conflicts():
    once = run(deployment()).obj
    again = copy.deepcopy(once)
    again["metadata"]["initializers"] = {"pending": [{"name": NAME}]}
    pod = again["spec"]["template"]["spec"]
    pod["initContainers"][0]["terminationMessagePath"] = "/dev/termination-log"
    pod["volumes"][0]["configMap"]["defaultMode"] = 420
    dec = run(again)
    assert dec.action == INJECT
    assert len(dec.obj["spec"]["template"]["spec"]["initContainers"]) == 1


def test_zero_values_the_server_omits_are_not_conflicts():
    """A config with ``readOnly: false``, ``value: ""`` and ``args: []`` against an object that went
    through the API server (which drops those omitempty zero values): injected once, no 422."""
    cfg = parse_config("""
containers: [{name: tproxy, image: s, args: [], securityContext: {privileged: true}}]
volumes: [{name: ca, emptyDir: {}}]
volumeMounts: [{name: ca, mountPath: /ca, readOnly: false}]
envVars: [{name: EMPTY, value: ""}]
""")
    once = decide(deployment(), cfg, initializer_name=NAME, annotation=ANN, require_annotation=False).obj
    served = json.loads(
        json.dumps(once).replace(', "readOnly": false', "").replace(', "value": ""', "").replace(', "args": []', "")
    )
    assert "readOnly" not in json.dumps(served) and '"args"' not in json.dumps(served)
    served["metadata"]["initializers"] = {"pending": [{"name": NAME}]}
    dec = decide(served, cfg, initializer_name=NAME, annotation=ANN, require_annotation=False)
    assert dec.action == INJECT, dec.reason
    assert dec.obj["spec"] == served["spec"], "nothing added twice"
    # ...but an empty struct is a real value: a user volume "ca" with another source still conflicts
    clash = deployment(volumes=[{"name": "ca", "hostPath": {"path": "/"}}])
    assert decide(clash, cfg, initializer_name=NAME, annotation=ANN, require_annotation=False).action == FAIL


def test_quantities_the_server_rewrote_are_not_conflicts():
    """The API server stores quantities in canonical form (1000m -> 1, 1024Mi -> 1Gi, 0.5 -> 500m). An
    object that already carries our injection, exported and created again, must not fail with a 422.
    A quantity of another value still conflicts."""
    cfg = parse_config("""
containers: [{name: tproxy, image: s, securityContext: {privileged: true},
              resources: {limits: {cpu: 1000m, memory: 1024Mi}, requests: {cpu: "0.5"}}}]
volumes: [{name: scratch, emptyDir: {sizeLimit: 2048Mi}}]
""")
    once = decide(deployment(), cfg, initializer_name=NAME, annotation=ANN, require_annotation=False).obj
    served = copy.deepcopy(once)
    tproxy = served["spec"]["template"]["spec"]["initContainers"][0]
    tproxy["resources"] = {"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "500m"}}
    served["spec"]["template"]["spec"]["volumes"][0]["emptyDir"]["sizeLimit"] = "2Gi"
    served["metadata"]["initializers"] = {"pending": [{"name": NAME}]}
    dec = decide(served, cfg, initializer_name=NAME, annotation=ANN, require_annotation=False)
    assert dec.action == INJECT, dec.reason
    assert dec.obj["spec"] == served["spec"], "nothing added twice"
    tproxy["resources"]["limits"]["cpu"] = "2"
    dec = decide(served, cfg, initializer_name=NAME, annotation=ANN, require_annotation=False)
    assert dec.action == FAIL and "init container 'tproxy' with a different definition" in dec.reason
    # outside quantity fields, "1" and "1000m" are different strings
    assert not mutate._subset({"env": [{"name": "X", "value": "1000m"}]}, {"env": [{"name": "X", "value": "1"}]})


@pytest.mark.parametrize(
    "podspec, message",
    [
        (
            {"volumes": [{"name": "ca-certs-debian", "emptyDir": {}}]},
            "spec.template.spec.volumes already has volume 'ca-certs-debian' with a different definition",
        ),
        (
            {"initContainers": [{"name": "tproxy", "image": "evil"}]},
            "initContainers already has init container 'tproxy' with a different definition",
        ),
        ({"containers": [{"name": "tproxy", "image": "x"}]}, "already has a container named 'tproxy'"),
        (
            {"containers": [{"name": "app", "image": "d", "env": [{"name": "http_proxy", "value": "direct"}]}]},
            "container 'app' already has environment variable 'http_proxy'",
        ),
        (
            {"containers": [{"name": "app", "image": "d", "volumeMounts": [{"name": "own", "mountPath": "/etc/ssl/certs/"}]}]},
            "container 'app' already has a volume mount at '/etc/ssl/certs/'",
        ),
    ],
)
def test_conflicts_fail_the_create_with_a_422_saying_what_conflicted(podspec, message):
    d = deployment(**podspec)
    dec = run(d)
    assert dec.action == FAIL
    assert message in dec.reason
    result = dec.obj["metadata"]["initializers"]["result"]
    assert result["status"] == "Failure" and result["code"] == 422 and result["reason"] == "Invalid"
    assert result["message"].startswith("tproxy initializer: ") and message in result["message"]
    assert dec.obj["metadata"]["initializers"]["pending"] == [{"name": NAME}]
    assert dec.obj["spec"] == d["spec"], "a failed object is not mutated"


def test_mount_of_unknown_volume_is_a_conflict():
    cfg = parse_config("volumeMounts: [{name: nowhere, mountPath: /x}]")
    with pytest.raises(InjectionConflict, match="refers to volume 'nowhere'"):
        apply_injection(deployment(), cfg, annotation=ANN)


def test_mount_of_user_volume_is_allowed():
    cfg = parse_config("volumeMounts: [{name: mine, mountPath: /x}]")
    d = apply_injection(deployment(volumes=[{"name": "mine", "emptyDir": {}}]), cfg, annotation=ANN)
    assert d["spec"]["template"]["spec"]["containers"][0]["volumeMounts"] == [{"name": "mine", "mountPath": "/x"}]


def test_not_ours_first_is_ignored_and_ours_later_stays_in_order():
    assert run(deployment(pending=("other.example.com", NAME))).action == IGNORE
    dec = run(deployment(pending=(NAME, "b.example.com", "c.example.com")))
    assert dec.action == INJECT
    assert dec.obj["metadata"]["initializers"] == {"pending": [{"name": "b.example.com"}, {"name": "c.example.com"}]}
    assert dec.pending_after == ("b.example.com", "c.example.com")


def test_not_pending_or_empty_pending_or_result_set_is_ignored():
    assert run(deployment(pending=None)).action == IGNORE
    assert run(deployment(pending=())).action == IGNORE
    d = deployment()
    d["metadata"]["initializers"]["result"] = mutate.failure_status("x")
    assert run(d).action == IGNORE


@pytest.mark.parametrize(
    "value, injects",
    [(True, True), ("TRUE", True), (" True ", True), (None, False), ("false", False), ("yes", False), ("", False)],
)
def test_require_annotation_semantics(value, injects):
    d = deployment(annotated=value)
    dec = run(d, require=True)
    if injects:
        assert dec.action == INJECT
    else:
        assert dec.action == SKIP and ANN in dec.reason
        assert dec.obj["spec"] == d["spec"], "skipped deployments are initialized untouched"
        assert dec.obj["metadata"]["initializers"] is None


def test_without_require_annotation_every_deployment_is_injected_like_the_original():
    assert run(deployment(annotated=None)).action == INJECT


def test_excluded_namespace_only_removes_our_entry():
    dec = run(deployment(ns="kube-system"), exclude_namespaces=frozenset({"kube-system"}))
    assert dec.action == SKIP and "kube-system" in dec.reason
    assert dec.obj["metadata"]["initializers"] is None
    assert "initContainers" not in dec.obj["spec"]["template"]["spec"]


def test_17_init_container_annotation_is_rewritten_to_match_the_field():
    user = [{"name": "migrate", "image": "m"}]
    d = deployment(initContainers=copy.deepcopy(user))
    d["spec"]["template"]["metadata"]["annotations"] = {
        BETA_INIT_ANNOTATION: json.dumps(user),
        ALPHA_INIT_ANNOTATION: json.dumps(user),
    }
    new = run(d).obj
    ann = new["spec"]["template"]["metadata"]["annotations"]
    field = new["spec"]["template"]["spec"]["initContainers"]
    assert [c["name"] for c in field] == ["tproxy", "migrate"]
    assert json.loads(ann[BETA_INIT_ANNOTATION]) == field
    assert json.loads(ann[ALPHA_INIT_ANNOTATION]) == field


def test_17_annotation_overrides_the_field_on_input():
    # A 1.6-style object whose init containers live only in the annotation: the effective list is the
    # annotation's, and the result carries both (consistent).
    d = deployment()
    d["spec"]["template"]["metadata"]["annotations"] = {BETA_INIT_ANNOTATION: json.dumps([{"name": "old", "image": "o"}])}
    new = run(d).obj
    assert [c["name"] for c in new["spec"]["template"]["spec"]["initContainers"]] == ["tproxy", "old"]


def test_malformed_17_annotation_fails_clearly():
    d = deployment()
    d["spec"]["template"]["metadata"]["annotations"] = {ALPHA_INIT_ANNOTATION: "[{"}
    dec = run(d)
    assert dec.action == FAIL and "pod.alpha.kubernetes.io/init-containers is not valid JSON" in dec.reason


def test_template_annotations_are_kept():
    d = deployment()
    d["spec"]["template"]["metadata"]["annotations"] = {"keep": "me"}
    assert run(d).obj["spec"]["template"]["metadata"]["annotations"] == {"keep": "me", ANN: "true"}


# --- properties: whatever the user's pod template, one injection is complete and a second is a no-op

from hypothesis import given, settings  # noqa: E402 - the property tests' own imports, kept with them
from hypothesis import strategies as st  # noqa: E402

_names = st.sampled_from(["app", "web", "side", "db", "cache"])
_user_env = st.lists(
    st.fixed_dictionaries({"name": st.sampled_from(["A", "B", "PATH"]), "value": st.sampled_from(["1", "2"])}),
    max_size=3,
    unique_by=lambda e: e["name"],
)
_user_mounts = st.lists(
    st.fixed_dictionaries({"name": st.just("data"), "mountPath": st.sampled_from(["/data", "/var/x", "/srv"])}),
    max_size=2,
    unique_by=lambda m: m["mountPath"],
)
_container = st.fixed_dictionaries({"name": _names, "image": st.just("img"), "env": _user_env, "volumeMounts": _user_mounts})
_pod = st.fixed_dictionaries(
    {
        "containers": st.lists(_container, min_size=1, max_size=3, unique_by=lambda c: c["name"]),
        "initContainers": st.lists(
            _container.map(lambda c: dict(c, name="init-" + c["name"])), max_size=2, unique_by=lambda c: c["name"]
        ),
        "volumes": st.just([{"name": "data", "emptyDir": {}}]),
    }
)


@settings(max_examples=60, deadline=None)
@given(pod=_pod, with_annotation=st.booleans())
def test_injection_is_complete_and_idempotent_for_any_template(pod, with_annotation):
    d = deployment(**pod)
    if with_annotation and pod["initContainers"]:
        d["spec"]["template"]["metadata"]["annotations"] = {BETA_INIT_ANNOTATION: json.dumps(pod["initContainers"])}
    first = run(d)
    assert first.action == INJECT
    spec = first.obj["spec"]["template"]["spec"]
    assert [c["name"] for c in spec["initContainers"]][0] == "tproxy"
    assert [c["name"] for c in spec["initContainers"]].count("tproxy") == 1
    for c in spec["containers"] + spec["initContainers"][1:]:
        paths = [m["mountPath"] for m in c.get("volumeMounts") or []]
        assert len(paths) == len(set(paths)) and "/etc/ssl/certs/" in paths
        names = [e["name"] for e in c.get("env") or []]
        assert len(names) == len(set(names)) and "http_proxy" in names
    again = copy.deepcopy(first.obj)
    again["metadata"]["initializers"] = {"pending": [{"name": NAME}]}
    second = run(again)
    assert second.action == INJECT and second.obj["spec"] == first.obj["spec"]


def test_our_name_twice_in_pending_is_handled_in_two_idempotent_passes():
    # The server merges InitializerConfigurations without removing duplicates (docs/initializers-1.7.md §1a).
    first = run(deployment(pending=(NAME, NAME)))
    assert first.action == INJECT and first.pending_after == (NAME,)
    second = run(first.obj)
    assert second.action == INJECT and second.obj["spec"] == first.obj["spec"]
    assert second.obj["metadata"]["initializers"] is None
