"""Pure parts of the netns kubelet and its CLIs (no root needed)."""

import os

import pytest

from kubesim.apply import ApplyError, load_documents
from kubesim.demo import last_round, locked_ok, round_lines, unlocked_ok
from kubesim.kubelet.controller import template_hash
from kubesim.kubelet.images import REPO_ROOT, ImageIndex, container_argv, image_name, parse_dockerfile
from kubesim.kubelet.containerspec import expand
from kubesim.kubelet.runtime import Backoff
from kubesim.logs import LogsError, matches, parse_selector, pick_container


def test_image_name_strips_registry_tag_and_digest():
    assert image_name("gcr.io/proj/tproxy-sidecar:0.1.0") == "tproxy-sidecar"
    assert image_name("tproxy-proxy@sha256:abc") == "tproxy-proxy"
    assert image_name("localhost:5000/example-app:debian") == "example-app"


def test_every_component_image_maps_to_its_dockerfile_entrypoint():
    idx = ImageIndex()
    assert idx.resolve("tproxy-initializer:0.1.0").entrypoint == ["python3", "-m", "initializer"]
    assert idx.resolve("tproxy-podwatch").entrypoint == ["python3", "-m", "podwatch"]
    assert idx.resolve("reg/tproxy-sidecar:1").entrypoint == ["/opt/tproxy/sidecar/start.sh"]
    proxy = idx.resolve("tproxy-proxy:0.1.0")
    assert proxy.entrypoint[0] == "mitmdump" and "/opt/tproxy/proxy/addon.py" in proxy.entrypoint
    # each COPY of a product package (context: the repository root) becomes a bind of that directory
    assert (os.path.join(REPO_ROOT, "proxy"), "/opt/tproxy/proxy") in proxy.copies
    assert (os.path.join(REPO_ROOT, "setup.cfg"), "/opt/tproxy/setup.cfg") in proxy.copies
    assert proxy.workdir == "/opt/tproxy"


def test_example_app_image_copies_its_start_script():
    img = ImageIndex().resolve("example-app:debian")
    assert img.entrypoint == ["/opt/app/start.sh"]
    assert (os.path.join(REPO_ROOT, "examples", "image-debian", "start.sh"), "/opt/app/start.sh") in img.copies


def test_unknown_image_runs_on_the_host_rootfs():
    img = ImageIndex().resolve("debian:12")
    assert not img.local and img.entrypoint == []


def test_dockerfile_without_build_comment_is_not_an_image(tmp_path):
    p = tmp_path / "Dockerfile"
    p.write_text('FROM x\nENTRYPOINT ["a"]\n')
    assert parse_dockerfile(str(p)) is None


def test_command_and_args_follow_kubernetes_rules():
    img = ImageIndex().resolve("tproxy-podwatch")
    assert container_argv(img, None, ["-hostPort=8080"]) == ["python3", "-m", "podwatch", "-hostPort=8080"]
    assert container_argv(img, ["sh", "-c"], ["x"]) == ["sh", "-c", "x"]
    assert container_argv(img, None, None) == ["python3", "-m", "podwatch"]


def test_var_expansion_like_kubernetes():
    env = {"A": "1", "B": "two"}
    assert expand("$(A)-$(B)", env) == "1-two"
    assert expand("$(MISSING)", env) == "$(MISSING)"
    assert expand("$$(A)", env) == "$(A)"
    assert expand("$A", env) == "$A"


def test_backoff_doubles_to_the_cap():
    b = Backoff(1, 5)
    assert [b.next() for _ in range(5)] == [1, 2, 4, 5, 5]


def test_template_hash_is_stable_and_changes_with_the_template():
    t = {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}
    assert template_hash(t) == template_hash({"spec": t["spec"], "metadata": t["metadata"]})
    assert template_hash(t).isdigit()
    t2 = {**t, "spec": {"containers": [{"name": "c", "image": "j"}]}}
    assert template_hash(t2) != template_hash(t)


def test_apply_loads_helm_style_multi_document_yaml():
    text = (
        "---\n# Source: x\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\n\n---\n"
        "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Secret, metadata: {name: s}}\n"
    )
    docs = load_documents(text)
    assert [d["kind"] for d in docs] == ["ConfigMap", "Secret"]


@pytest.mark.parametrize(
    "text,msg",
    [
        ("a: [", "not valid YAML"),
        ("- 1\n", "not a mapping"),
        ("kind: ConfigMap\nmetadata: {name: a}\n", "has no apiVersion"),
        ("apiVersion: v1\nkind: ConfigMap\nmetadata: {}\n", "has no metadata.name"),
    ],
)
def test_apply_rejects_bad_documents_with_a_clear_error(text, msg):
    with pytest.raises(ApplyError, match=msg):
        load_documents(text, "f.yaml")


def test_the_examples_parse():
    for fn in ("debian-app.yaml", "debian-app-locked.yaml", "debian-app-locked-manual.yaml"):
        docs = load_documents(open(os.path.join(REPO_ROOT, "examples", fn)).read(), fn)
        assert docs[0]["kind"] == "Deployment"
    locked = load_documents(open(os.path.join(REPO_ROOT, "examples", "debian-app-locked.yaml")).read())[0]
    assert locked["metadata"]["annotations"]["initializer.kubernetes.io/tproxy"] == "true"


def test_selectors():
    sel = parse_selector("app=debian-app,variant!=unlocked,tier")
    assert matches({"app": "debian-app", "variant": "locked", "tier": "x"}, sel)
    assert not matches({"app": "debian-app", "variant": "unlocked", "tier": "x"}, sel)
    assert not matches({"app": "debian-app", "variant": "locked"}, sel)


def test_logs_needs_a_container_name_when_there_are_several():
    meta = {"name": "p", "containers": ["a", "b"], "initContainers": ["i"]}
    with pytest.raises(LogsError, match="a container name must be specified"):
        pick_container(meta, None)
    assert pick_container(meta, "i") == "i"
    with pytest.raises(LogsError, match="is not valid"):
        pick_container(meta, "zz")


LOCKED_LOG = """Fri Nov 27 05:14:40 UTC 2026 https://www.google.com: 000
Fri Nov 27 05:14:42 UTC 2026 https://www.google.com: 418
Fri Nov 27 05:14:42 UTC 2026 https://storage.googleapis.com/solutions-public-assets/: 200
Fri Nov 27 05:14:42 UTC 2026 PING www.google.com (203.0.113.10) 56(84) bytes of data.
ping: sendmsg: Operation not permitted

--- www.google.com ping statistics ---
"""


def test_demo_reads_the_newest_complete_round():
    r = last_round(LOCKED_LOG)
    assert r["google"] == "418" and r["bucket"] == "200" and locked_ok(r) and not unlocked_ok(r)
    shown = round_lines(LOCKED_LOG).splitlines()
    assert len(shown) == 4 and shown[-1] == "ping: sendmsg: Operation not permitted"


def test_demo_does_not_accept_an_incomplete_round():
    assert last_round("x https://www.google.com: 418\n") is None
    assert not locked_ok(None)
