"""Bad input fuzzing (issue 21, item 4): the initializer's ConfigMap, the proxy's policy file, the
identity file and the sidecar's arguments and environment.

For each: whatever the input, no exception escapes (no crash), a rejected input comes with a clear
error (the component's own error type and a non-empty message that names the problem, never a
traceback), and a component that had a good configuration keeps it.
"""

import io
import json
import os
from contextlib import redirect_stderr, redirect_stdout

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from controllerkit.kube import Client
from initializer.config import ConfigError, parse_config
from initializer.controller import Controller
from proxy.identity import IdentityMap
from proxy.policy import Policy, PolicyError

SETTINGS = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)

GOOD_CONFIG = (
    "containers: [{name: tproxy, image: sidecar}]\nvolumes: [{name: ca, emptyDir: {}}]\n"
    "volumeMounts: [{name: ca, mountPath: /etc/ca}]\nenvVars: [{name: A, value: b}]\n"
)
GOOD_POLICY = "mode: enforce\nrules:\n  - host: storage.googleapis.com\n    paths: [/solutions-public-assets/]\n"

# JSON-like values, the shapes YAML documents have
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=20))
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)),
    max_leaves=20,
)
KEYS = {
    "config": [
        "containers",
        "volumes",
        "volumeMounts",
        "envVars",
        "name",
        "image",
        "mountPath",
        "value",
        "emptyDir",
        "configMap",
        "command",
        "args",
        "securityContext",
        "readOnly",
        "valueFrom",
    ],
    "policy": [
        "mode",
        "rules",
        "host",
        "paths",
        "methods",
        "schemes",
        "namespaces",
        "deny_ranges",
        "allow_ranges",
        "enforce",
        "report",
        "open",
        "*.example.org",
        "203.0.113.9",
    ],
}


def mutated(good: str, kind: str):
    """The good document with one subtree replaced by something else (a nearly-right document is
    where validation bugs hide)."""
    doc = yaml.safe_load(good)
    keyish = st.one_of(st.sampled_from(KEYS[kind]), st.text(max_size=8))
    values = st.one_of(
        json_values,
        st.sampled_from(KEYS[kind]),
        st.dictionaries(keyish, json_values, max_size=3),
        st.lists(st.dictionaries(keyish, json_values, max_size=3), max_size=3),
    )

    @st.composite
    def strat(draw):
        d = json.loads(json.dumps(doc))
        node = d
        for _ in range(draw(st.integers(0, 3))):
            if isinstance(node, dict) and node:
                k = draw(st.sampled_from(sorted(node)))
                if not isinstance(node[k], (dict, list)) or not node[k]:
                    break
                node = node[k]
            elif isinstance(node, list) and node:
                i = draw(st.integers(0, len(node) - 1))
                if not isinstance(node[i], (dict, list)) or not node[i]:
                    break
                node = node[i]
        if isinstance(node, dict):
            node[draw(st.one_of(st.sampled_from(sorted(node) or ["x"]), keyish))] = draw(values)
        elif isinstance(node, list):
            node.append(draw(values))
        return yaml.safe_dump(d)

    return strat()


def texts(kind: str):
    good = GOOD_CONFIG if kind == "config" else GOOD_POLICY
    return st.one_of(
        st.text(max_size=200),
        st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
        json_values.map(yaml.safe_dump),
        json_values.map(json.dumps),
        mutated(good, kind),
    )


def clear(message: str) -> bool:
    return bool(message.strip()) and "Traceback" not in message


# -- initializer ConfigMap ------------------------------------------------------------------------
class Recorder:
    def __init__(self):
        self.records = []

    def __getattr__(self, level):
        if level not in ("debug", "info", "warning", "error", "critical", "exception"):
            raise AttributeError(level)
        return lambda event, **kw: self.records.append((level, event, kw))

    def __repr__(self):
        return "Recorder()"


@pytest.fixture(scope="module")
def controller():
    log = Recorder()
    c = Controller(Client.from_url("http://127.0.0.1:9"), logger=log)
    assert c.load_configmap({"metadata": {"name": "cm", "namespace": "default"}, "data": {"config": GOOD_CONFIG}})
    return c, log


@SETTINGS
@given(text=texts("config"))
@example(text="containers: [{name: tproxy, image: x}]\ncontainers: []\n")  # duplicate key
@example(text="[" * 5000)  # deep nesting
@example(text="&a [*a]")  # a recursive alias
def test_initializer_configmap_never_crashes_and_keeps_the_last_good(controller, text):
    c, log = controller
    good = c.config.fingerprint
    try:
        parse_config(text)
        valid = True
    except ConfigError as e:
        assert clear(str(e)), repr(e)
        valid = False
    log.records.clear()
    installed = c.load_configmap({"metadata": {"name": "cm", "namespace": "default"}, "data": {"config": text}})
    assert installed is valid
    if not valid:
        assert c.config.fingerprint == good
        ((level, event, kw),) = log.records
        assert (level, event) == ("error", "config_error_keeping_last_good") and clear(kw["error"])
    else:  # put the good one back for the next example
        assert c.load_configmap({"metadata": {"name": "cm", "namespace": "default"}, "data": {"config": GOOD_CONFIG}})


@SETTINGS
@given(data=st.one_of(st.none(), st.dictionaries(st.text(max_size=8), st.text(max_size=30), max_size=3)))
def test_initializer_configmap_without_a_config_key_is_a_clear_error(controller, data):
    c, log = controller
    good = c.config.fingerprint
    cm = {"metadata": {"name": "cm", "namespace": "default"}, "data": data}
    installed = c.load_configmap(cm)
    if not installed:
        assert c.config.fingerprint == good
    else:
        c.load_configmap({"metadata": {"name": "cm", "namespace": "default"}, "data": {"config": GOOD_CONFIG}})


# -- proxy policy -----------------------------------------------------------------------------------
@SETTINGS
@given(text=texts("policy"))
@example(text="[" * 5000)
@example(text="&a [*a]")
@example(text="rules: [{host: 'a b'}]")
def test_policy_parser_raises_only_policy_errors_with_a_message(text):
    try:
        Policy.from_yaml(text)
    except PolicyError as e:
        assert clear(str(e)), repr(e)


SCOPED = """
rules: [{host: a.example}]
scopes:
  - {name: s, match: {namespaces: [n], labels: {app: x}}, mode: report, rules: [{host: b.example}]}
delegation: {configMap: tproxy-egress, ceiling: {hosts: ["*.corp.example"], ranges: [198.18.0.0/15]}}
"""


@SETTINGS
@given(text=st.one_of(texts("policy"), mutated(SCOPED, "policy")))
@example(text="rules: []\nscopes: [{name: s, match: {labels: {a: [1]}}}]")
@example(text="rules: []\ndelegation: {ceiling: {hosts: [a..b]}}")
def test_scoped_policy_parser_raises_only_policy_errors_with_a_message(text):
    from proxy.scopes import ScopedPolicy

    try:
        ScopedPolicy.from_yaml(text)
    except PolicyError as e:
        assert clear(str(e)), repr(e)


@SETTINGS
@given(text=st.one_of(texts("policy"), st.none(), st.integers()))
@example(text="rules: [{host: '*.example'}]")
@example(text="mode: open")
def test_namespace_policy_parser_raises_only_policy_errors_with_a_message(text):
    from proxy import delegated
    from proxy.scopes import ScopedPolicy

    scoped = ScopedPolicy.from_yaml(SCOPED)
    try:
        scope = delegated.parse(text, "team", scoped, "team/tproxy-egress")
    except PolicyError as e:
        assert clear(str(e)) and str(e).startswith("team/tproxy-egress: "), repr(e)
    else:  # accepted: within the ceiling
        assert all(not r.host.endswith("corp.example") for r in scope.policy.rules)


@pytest.fixture(scope="module")
def addon_with_policy(tmp_path_factory):
    from mitmproxy.test import taddons

    from proxy.core import TproxyAddon

    d = tmp_path_factory.mktemp("policy")
    path = d / "policy.yaml"
    path.write_text(GOOD_POLICY)
    a = TproxyAddon(resolver=None)
    with taddons.context(a) as tctx:
        tctx.configure(a, tproxy_policy=str(path), tproxy_audit=str(d / "audit.jsonl"))
        yield a, str(path)
        a.done()


@SETTINGS
@given(text=st.one_of(texts("policy"), st.binary(max_size=100)))
@example(text=b"mode: enforce\xff\xfe\n")
@example(text="&a [*a]")
def test_proxy_reload_of_any_policy_file_keeps_the_last_good(addon_with_policy, text):
    a, path = addon_with_policy
    before = a.policy
    data = text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass")
    try:
        Policy.from_yaml(data.decode("utf-8"))
        valid = True
    except (PolicyError, UnicodeDecodeError):
        valid = False
    with open(path, "wb") as f:
        f.write(data)
    st_ = os.stat(path)
    os.utime(path, ns=(st_.st_atime_ns, st_.st_mtime_ns + 1_000_000_000))  # a new version, always
    installed = a.check_policy_file()
    assert installed is valid
    if not valid:
        assert a.policy is before
        assert a.policy.decide("www.google.com", method="GET", scheme="https", path="/").allowed is False
    with open(path, "w") as f:
        f.write(GOOD_POLICY)
    st_ = os.stat(path)
    os.utime(path, ns=(st_.st_atime_ns, st_.st_mtime_ns + 2_000_000_000))
    assert a.check_policy_file() is True


# -- identity file ------------------------------------------------------------------------------------
GOOD_IDENTITY = {
    "version": 1,
    "node": "node-1",
    "pods": {"198.18.1.2": {"namespace": "default", "name": "web", "serviceAccount": "default"}},
}
identity_docs = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {"pods": st.dictionaries(st.text(max_size=40), json_values, max_size=4)},
        optional={"version": json_values, "node": json_values},
    ),
    st.fixed_dictionaries(
        {
            "pods": st.dictionaries(
                st.sampled_from(["198.18.1.3", "::ffff:198.18.1.4", "2001:db8::1", "not-an-ip", "", "198.18.1.300"]),
                st.dictionaries(st.sampled_from(["namespace", "name", "serviceAccount"]), json_values, max_size=3),
                max_size=3,
            )
        }
    ),
)


@SETTINGS
@given(content=st.one_of(identity_docs.map(json.dumps), st.binary(max_size=300)))
@example(content="[" * 100000)
@example(content=b"\xff\xfe{")
def test_identity_file_never_crashes_and_keeps_the_last_good(tmp_path_factory, content):
    path = tmp_path_factory.mktemp("id") / "identity.json"
    path.write_text(json.dumps(GOOD_IDENTITY))
    errors = []
    m = IdentityMap(str(path), on_error=errors.append)
    assert m.lookup("198.18.1.2")["name"] == "web"
    data = content.encode() if isinstance(content, str) else content
    path.write_bytes(data)
    os.utime(path, ns=(0, 10**18))
    replaced = m.refresh(force=True)
    m.lookup("198.18.1.3")  # lookups never raise either
    if not replaced:
        assert errors and clear(errors[-1]) and str(path) in errors[-1], errors
        assert m.lookup("198.18.1.2")["name"] == "web"  # last good kept
    found = m.lookup("198.18.1.2")
    for k, v in found.items():
        assert isinstance(v, str) or (k == "labels" and all(isinstance(x, str) for x in (*v, *v.values())))


# -- sidecar arguments and environment ------------------------------------------------------------------
SIDECAR_ENV = ["ALLOW_DNS", "BLOCK_SVC_CIDR", "TPROXY_VERIFY", "TPROXY_VERIFY_TIMEOUT", "TPROXY_IPTABLES_BACKEND"]
env_values = st.one_of(
    st.text(max_size=30),
    st.sampled_from(
        [
            "any",
            "10.0.0.10",
            "10.0.0.0/8,fd00::/8",
            "nan",
            "inf",
            "-1",
            "60",
            "legacy",
            "nft",
            "auto",
            "true",
            "no",
            "10.0.0.1/33",
            " , ",
            "2001:db8::1%eth0",
        ]
    ),
)
argvs = st.lists(
    st.one_of(
        st.sampled_from(["--dry-run", "--no-verify", "-h", "--help", "--dry", "-dry-run", "--", "--dry-run=1", "x"]),
        st.text(max_size=10),
    ),
    max_size=4,
)


@SETTINGS
@given(argv=argvs, env=st.dictionaries(st.sampled_from(SIDECAR_ENV), env_values, max_size=5), resolv=st.text(max_size=120))
@example(argv=["--dry-run"], env={"TPROXY_VERIFY_TIMEOUT": "nan"}, resolv="")
@example(argv=["--dry-run"], env={"BLOCK_SVC_CIDR": "10.0.0.1/33"}, resolv="nameserver 10.0.0.10\n")
def test_sidecar_arguments_and_environment_fail_with_a_message(tmp_path_factory, monkeypatch, argv, env, resolv):
    from sidecar import __main__ as sidecar_main

    conf = tmp_path_factory.mktemp("resolv") / "resolv.conf"
    conf.write_text(resolv)
    for k in SIDECAR_ENV:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.delenv("NODE_NAME", raising=False)
    monkeypatch.setenv("TPROXY_RESOLV_CONF", str(conf))
    for k, v in env.items():
        if "\x00" in v:
            continue
        monkeypatch.setenv(k, v)
    # never touch this machine's iptables: only --dry-run runs (or help/usage errors end earlier)
    run_argv = list(argv) if "--dry-run" in argv else [*argv, "--dry-run"]
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = sidecar_main.main(run_argv)
        except SystemExit as e:  # argparse: usage errors exit 2, --help exits 0
            code = e.code
    monkeypatch.undo()
    assert code in (sidecar_main.EXIT_OK, sidecar_main.EXIT_CONFIG), (code, err.getvalue())
    if code == sidecar_main.EXIT_CONFIG:
        msg = err.getvalue()
        assert clear(msg) and ("tproxy-sidecar" in msg or "usage:" in msg), msg
    elif "-h" not in run_argv and "--help" not in run_argv:
        assert "*filter" in out.getvalue()  # the dry run rendered the lock
