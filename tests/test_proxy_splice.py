"""Splice rules (``splice: true``, proxy/splice.py): HTTPS forwarded by SNI without decryption.

Unit tests of the connection decision and the policy field, then end to end in network namespaces
this module creates::

    pod 198.18.5.2 ──veth── node 198.18.5.1   nat PREROUTING -s POD --dport 443 REDIRECT :8080
                                              mitmdump --mode transparent :8080 -s proxy/addon.py
                            node 198.18.6.1 ──veth── internet 198.18.6.2
                                              kubesim.upstream (--record) on 203.0.113.{30,40,50}

The node resolves ``spliced.example`` to 203.0.113.30 and ``bumped.example`` to 203.0.113.40;
203.0.113.50 (the decoy) is an upstream too, serving the same certificates: a proxy that dialled the
address the client connected to would land there, and ``/echo`` says which address it reached.
"""

import asyncio
import functools
import json
import os
import sys

import pytest

from kubesim import netns
from kubesim.polling import wait_for
from kubesim.testca import TestCA
from proxy import delegated, splice
from proxy.decision import ALLOW, Reason
from proxy.explain import explain
from proxy.policy import Policy, PolicyError
from proxy.scopes import ScopedPolicy

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable
MITMDUMP = os.path.join(os.path.dirname(PY), "mitmdump")
POD = "198.18.5.2"
SPLICED, BUMPED, DECOY = "203.0.113.30", "203.0.113.40", "203.0.113.50"
NAMES = {"spliced.example": SPLICED, "bumped.example": BUMPED, "refused.example": DECOY, "denied.example": SPLICED}
POLICY = """\
mode: enforce
deny_hosts: [denied.example]
rules:
  - host: spliced.example
    splice: true
  - host: bumped.example
  - host: denied.example
    splice: true
"""

wait_for = functools.partial(wait_for, timeout=15.0, interval=0.1, retry_on=(Exception,))


# -- the decision (no network) --------------------------------------------------------------------
SCOPED = """\
mode: enforce
deny_hosts: ["*.denied.example"]
rules:
  - host: a.example
    splice: true
  - host: b.example
  - host: c.example
    paths: ["/x/"]
  - host: c.example
    splice: true
  - host: "*.w.example"
    splice: true
    schemes: [https]
  - host: x.denied.example
    splice: true
scopes:
  - name: pay
    match: {namespaces: [payments]}
    mode: report
    rules:
      - host: pay.example
        splice: true
      - host: a.example
"""


def _verdict(sni, namespace=None, port=443, text=SCOPED):
    scoped = ScopedPolicy.from_yaml(text)
    scope = scoped.select(namespace or "", "", {}, {})
    return splice.connection_verdict(sni, port, namespace, False, scope.policy, scoped.deny)


def test_a_splice_rule_splices_by_sni_with_its_rule():
    v = _verdict("A.Example.")
    assert v is not None and v.decision == ALLOW and v.reason == Reason.SPLICED
    assert (v.host, v.port, v.rule.label) == ("a.example", 443, "rules[0] a.example")
    assert _verdict("sub.w.example").rule.label == "rules[4] *.w.example"


def test_only_a_splice_rule_that_decides_splices():
    assert _verdict("b.example") is None  # allowed, but by a rule without splice: intercepted
    assert _verdict("c.example").rule.label == "rules[3] c.example"  # a paths rule never decides a connection
    assert _verdict("nothing.example") is None  # refused: intercepted, the request hook says 418
    assert _verdict("x.denied.example") is None  # deny_hosts always wins
    earlier = "rules:\n  - host: d.example\n  - host: d.example\n    splice: true\n"
    assert _verdict("d.example", text=earlier) is None  # the first matching rule decides, and it does not splice


def test_no_sni_and_ip_literal_sni_are_never_spliced():
    assert _verdict(None) is None
    assert _verdict("") is None
    ip_rule = "rules:\n  - host: 203.0.113.30\n    splice: true\n"
    assert _verdict("203.0.113.30", text=ip_rule) is None


def test_the_pods_scope_decides_the_splice():
    assert _verdict("pay.example", namespace="payments").reason == Reason.SPLICED  # report-mode scope, allow
    assert _verdict("pay.example") is None  # the default scope has no such rule
    assert _verdict("a.example", namespace="payments") is None  # the scope's rule for it does not splice
    assert _verdict("unlisted.example", namespace="payments") is None  # report mode: a report, not an allow


def test_open_mode_splices_nothing():
    assert _verdict("a.example", text="mode: open\nrules:\n  - host: a.example\n    splice: true\n") is None


def test_any_splice_rule_looks_at_every_file_scope():
    assert splice.any_splice_rule(ScopedPolicy.from_yaml(SCOPED))
    assert not splice.any_splice_rule(ScopedPolicy.from_yaml("rules:\n  - host: a.example\n"))
    scoped_only = "scopes:\n  - name: s\n    match: {namespaces: [n]}\n    rules: [{host: a.example, splice: true}]\n"
    assert splice.any_splice_rule(ScopedPolicy.from_yaml(scoped_only))


def test_screen_refuses_a_denied_address_and_pins_the_first():
    v = _verdict("a.example")
    policy = Policy.from_dict({"rules": []})
    assert splice.screen(v, ["10.0.0.1"], policy) is None
    assert splice.screen(v, [SPLICED, "127.0.0.1"], policy) is None
    assert splice.screen(v, [], policy) is None
    assert splice.screen(v, [SPLICED, BUMPED], policy).upstream == SPLICED


@pytest.mark.parametrize(
    "rule, message",
    [
        ('{host: a.example, splice: true, paths: ["/x"]}', "rules[1] (a.example).splice: a spliced rule cannot have paths"),
        ("{host: a.example, splice: true, methods: [GET]}", "rules[1] (a.example).splice: a spliced rule cannot have paths"),
        ("{host: a.example, splice: true, schemes: [http]}", "rules[1] (a.example).splice: only HTTPS"),
        ("{host: a.example, splice: 'yes'}", "rules[1] (a.example).splice: must be true or false"),
    ],
)
def test_splice_with_paths_or_methods_is_a_policy_error_naming_the_rule(rule, message):
    with pytest.raises(PolicyError) as e:
        ScopedPolicy.from_yaml(f"rules:\n  - {{host: ok.example}}\n  - {rule}\n", source="p.yaml")
    assert str(e.value).startswith("p.yaml: " + message)
    with pytest.raises(PolicyError, match=r"scopes\[0\] \(s\)\.rules\[0\] \(a\.example\)\.splice"):
        ScopedPolicy.from_yaml(f"scopes:\n  - name: s\n    match: {{namespaces: [n]}}\n    rules: [{rule.replace('[1]', '')}]\n")


def test_splice_defaults_off_and_false_is_accepted():
    p = Policy.from_yaml("rules:\n  - host: a.example\n  - host: b.example\n    splice: false\n    paths: [/x]\n")
    assert [r.splice for r in p.rules] == [False, False]


def test_a_namespace_policy_may_not_splice():
    scoped = ScopedPolicy.from_yaml("rules: []\ndelegation: {configMap: tproxy-egress}\n")
    with pytest.raises(PolicyError, match=r"rules\[0\]: 'splice' is not allowed in a namespace policy"):
        delegated.parse("rules:\n  - host: a.example\n    splice: true\n", "team", scoped, "team/tproxy-egress")
    assert delegated.parse("rules:\n  - host: a.example\n", "team", scoped, "team/tproxy-egress").policy.rules


def test_the_adapter_reaches_what_splicing_needs_in_mitmproxy():
    from mitmproxy import connection, tls
    from mitmproxy.proxy import context

    from proxy import mitm

    client = connection.Client(peername=(POD, 40000), sockname=(DECOY, 443))
    ctx = context.Context(client, None)
    ctx.server = connection.Server(address=(DECOY, 443))
    hello = tls.ClientHelloData(ctx, type("Hello", (), {"sni": "spliced.example"})())
    assert mitm.client_hello(hello) == (client, "spliced.example", 443)
    mitm.splice(hello, "spliced.example", 443)
    assert hello.ignore_connection and ctx.server.address == ("spliced.example", 443)


def _hello(sni):
    from mitmproxy import connection, tls
    from mitmproxy.proxy import context, mode_specs

    client = connection.Client(peername=(POD, 40000), sockname=(DECOY, 443), proxy_mode=mode_specs.ProxyMode.parse("transparent"))
    client.state = connection.ConnectionState.OPEN
    ctx = context.Context(client, None)
    ctx.server = connection.Server(address=(DECOY, 443))
    return tls.ClientHelloData(ctx, type("Hello", (), {"sni": sni})())


def test_the_hello_hook_splices_to_the_names_checked_address():
    from proxy.core import TproxyAddon

    async def resolve(host, port):
        return {"spliced.example": [SPLICED], "bumped.example": [BUMPED], "denied.example": [SPLICED]}.get(host, ["10.0.0.9"])

    addon = TproxyAddon(resolver=resolve)
    assert addon.tls_clienthello(_hello("spliced.example")) is None  # the built-in policy splices nothing
    addon._install_policy(ScopedPolicy.from_yaml(POLICY + "  - host: internal.example\n    splice: true\n"))
    outcomes = {}
    for sni in ("spliced.example", "bumped.example", "denied.example", "refused.example", "internal.example", None):
        hello = _hello(sni)
        asyncio.run(addon.tls_clienthello(hello))
        outcomes[sni] = (hello.ignore_connection, hello.context.server.address)
        approved = addon.pinning.approved.get(hello.context.client.id, {})
        assert approved == ({("spliced.example", 443): SPLICED} if sni == "spliced.example" else {})
    assert outcomes == {
        "spliced.example": (True, ("spliced.example", 443)),
        **{
            sni: (False, (DECOY, 443))
            for sni in ("bumped.example", "denied.example", "refused.example", "internal.example", None)
        },
    }


def test_explain_says_when_a_connection_would_be_spliced():
    scoped = ScopedPolicy.from_yaml(SCOPED)
    lines = explain(scoped, "https://a.example/any/path")
    assert lines[-1].startswith("splice: yes, by rules[0] a.example")
    assert not any(line.startswith("splice") for line in explain(scoped, "https://b.example/"))
    assert not any(line.startswith("splice") for line in explain(scoped, "http://a.example/"))
    assert not any(line.startswith("splice") for line in explain(scoped, "https://x.denied.example/"))


# -- end to end -----------------------------------------------------------------------------------
CLIENT = r"""
import json, socket, ssl, sys
spec = json.loads(sys.argv[1])
ctx = ssl.create_default_context(cafile=spec["cafile"])
if not spec["sni"]:
    ctx.check_hostname = False
out = {}
try:
    sock = socket.create_connection((spec["addr"], 443), 10)
    tls = ctx.wrap_socket(sock, server_hostname=spec["sni"])
except ssl.SSLError as e:
    print(json.dumps({"tls_error": str(e)}))
    sys.exit(0)
issuer = dict(x[0] for x in tls.getpeercert()["issuer"])
out["issuer"] = issuer.get("organizationName") or issuer.get("commonName")
f = tls.makefile("rb")
out["responses"] = []
for _ in range(spec.get("requests", 1)):
    tls.sendall(f"GET /echo HTTP/1.1\r\nHost: {spec['host']}\r\n\r\n".encode())
    status = int(f.readline().split()[1])
    headers = {}
    while True:
        line = f.readline().decode("latin-1").strip()
        if not line:
            break
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    body = f.read(int(headers.get("content-length", 0)))
    out["responses"].append({"status": status, "headers": headers, "body": body.decode("latin-1")})
print(json.dumps(out))
"""


class World:
    def __init__(self, tmp):
        self.tmp, self.procs, self.nss = tmp, [], []

    def ns(self, prefix):
        n = netns.Netns.create(prefix)
        self.nss.append(n)
        return n

    def spawn(self, ns, argv, name):
        out = open(os.path.join(self.tmp, f"{name}.out"), "w")
        err = open(os.path.join(self.tmp, f"{name}.err"), "w")
        p = ns.popen(argv, stdout=out, stderr=err, cwd=REPO, env={**os.environ, "PYTHONPATH": REPO})
        self.procs.append(p)
        return p

    def close(self):
        netns.stop(self.procs, self.nss)

    def tls(self, addr, sni, *, cafile, host=None, requests=1):
        spec = {"addr": addr, "sni": sni, "cafile": cafile, "host": host or sni or addr, "requests": requests}
        r = self.pod.run(PY, "-c", CLIENT, json.dumps(spec), check=False, timeout=30)
        assert r.returncode == 0, r.stdout + r.stderr
        return json.loads(r.stdout)

    def audit(self):
        with open(self.audit_file) as f:
            return [json.loads(line) for line in f if line.strip()]

    def recorded_snis(self):
        r = self.inet.run("curl", "-sS", "-m", "5", f"http://{BUMPED}/.upstream/requests", timeout=10)
        return [x.get("sni") for x in json.loads(r.stdout)]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    if not netns.available():
        pytest.skip("needs root and iproute2")
    w = World(str(tmp_path_factory.mktemp("proxy-splice")))
    try:
        _build(w)
        yield w
    finally:
        w.close()


def _build(w):
    pod, node, inet = w.pod, w.node, w.inet = w.ns("sppod"), w.ns("spnode"), w.ns("spinet")
    netns.veth(node, "pod0", pod, "eth0")
    netns.veth(node, "up0", inet, "eth0")
    pod.add_addr("eth0", POD + "/24")
    node.add_addr("pod0", "198.18.5.1/24")
    node.add_addr("up0", "198.18.6.1/24")
    inet.add_addr("eth0", "198.18.6.2/24")
    for a in (SPLICED, BUMPED, DECOY):
        inet.add_addr("lo", a + "/32")
    pod.route("default", "via", "198.18.5.1")
    node.route("203.0.113.0/24", "via", "198.18.6.2")
    inet.route("198.18.5.0/24", "via", "198.18.6.1")
    node.sysctl("net.ipv4.ip_forward", 0)  # the proxy is the only way out
    node.write_hosts({addr: [n for n, a in NAMES.items() if a == addr] for addr in set(NAMES.values())})
    node.run(
        "iptables",
        "-t",
        "nat",
        "-A",
        "PREROUTING",
        "-s",
        POD,
        "-p",
        "tcp",
        "--dport",
        "443",
        "-j",
        "REDIRECT",
        "--to-ports",
        "8080",
    )

    w.ca = TestCA(os.path.join(w.tmp, "ca"))
    up = [PY, "-m", "kubesim.upstream", "--http-port", "80", "--https-port", "443", "--cert-dir", w.ca.directory]
    up += ["--hosts", ",".join(NAMES), "--record"]
    for a in (SPLICED, BUMPED, DECOY):
        up += ["--bind", a]
    w.spawn(inet, up, "upstream")

    w.policy_file = os.path.join(w.tmp, "policy.yaml")
    with open(w.policy_file, "w") as f:
        f.write(POLICY)
    w.audit_file = os.path.join(w.tmp, "audit.jsonl")
    confdir = os.path.join(w.tmp, "mitm")
    w.mitm_ca = os.path.join(confdir, "mitmproxy-ca-cert.pem")
    w.spawn(
        node,
        [
            MITMDUMP,
            "--mode",
            "transparent",
            "--listen-port",
            "8080",
            "--set",
            f"confdir={confdir}",
            "-s",
            os.path.join(REPO, "proxy", "addon.py"),
            "--set",
            "connection_strategy=lazy",
            "--set",
            "flow_detail=0",
            "--set",
            "termlog_verbosity=error",
            "--set",
            f"tproxy_extra_ca={w.ca.ca_file}",
            "--set",
            f"tproxy_policy={w.policy_file}",
            "--set",
            f"tproxy_audit={w.audit_file}",
            "--set",
            "tproxy_audit_flush_ms=0",
        ],
        "mitmdump",
    )
    wait_for(lambda: inet.run("curl", "-sSf", "-m", "2", f"http://{BUMPED}/.upstream/stats").returncode == 0, what="upstream")
    wait_for(lambda: os.path.exists(w.mitm_ca) and ":8080" in node.run("ss", "-ltn").stdout, timeout=20, what="mitmdump")


def _lines(world, **match):
    return [a for a in world.audit() if all(a.get(k) == v for k, v in match.items())]


def test_spliced_host_sees_the_origins_certificate_and_lands_on_the_names_address(world):
    before = len(_lines(world, reason="spliced"))
    # the client aims at the decoy address: the proxy must dial spliced.example's address instead
    r = world.tls(DECOY, "spliced.example", cafile=world.ca.ca_file, requests=2)
    assert "tls_error" not in r, r  # verified against the upstream test CA: the origin's certificate
    assert [x["status"] for x in r["responses"]] == [200, 200]
    for resp in r["responses"]:
        seen = json.loads(resp["body"])
        assert seen["local_address"] == SPLICED, seen  # the name's address, never the client's
        assert seen["sni"] == "spliced.example"
        assert "x-tproxy-reason" not in resp["headers"]
    # one audit line for the connection, none per request
    lines = wait_for(lambda: _lines(world, reason="spliced")[before:] or None, what="splice audit line")
    assert len(lines) == 1
    line = lines[0]
    assert (line["decision"], line["host"], line["port"], line["sni"]) == ("allow", "spliced.example", 443, "spliced.example")
    assert (line["method"], line["path"], line["status"], line["upstream"]) == (None, None, None, SPLICED)
    assert line["rule"] == "rules[0] spliced.example"


def test_a_spliced_connection_is_not_the_proxys_to_terminate(world):
    r = world.tls(SPLICED, "spliced.example", cafile=world.mitm_ca)  # trusting only the proxy's CA
    assert "certificate verify failed" in r.get("tls_error", ""), r


def test_default_off_is_intercepted_and_decided_per_request(world):
    r = world.tls(BUMPED, "bumped.example", cafile=world.ca.ca_file)
    assert "certificate verify failed" in r.get("tls_error", ""), r  # the proxy's certificate, as before
    r = world.tls(DECOY, "bumped.example", cafile=world.mitm_ca, requests=2)
    assert [x["status"] for x in r["responses"]] == [200, 200]
    assert json.loads(r["responses"][0]["body"])["local_address"] == BUMPED
    lines = wait_for(
        lambda: [a for a in _lines(world, host="bumped.example", path="/echo") if a["reason"] == "rule"][-2:] or None
    )
    assert all(a["method"] == "GET" and a["status"] == 200 for a in lines)


def test_refused_sni_is_intercepted_and_refused(world):
    r = world.tls(DECOY, "refused.example", cafile=world.ca.ca_file)
    assert "certificate verify failed" in r.get("tls_error", ""), r  # not spliced
    r = world.tls(DECOY, "refused.example", cafile=world.mitm_ca)
    resp = r["responses"][0]
    assert (resp["status"], resp["headers"]["x-tproxy-reason"]) == (418, "no-matching-rule")


def test_denied_host_with_a_splice_rule_is_refused(world):
    r = world.tls(SPLICED, "denied.example", cafile=world.mitm_ca)
    resp = r["responses"][0]
    assert (resp["status"], resp["headers"]["x-tproxy-reason"]) == (418, "denied-host")


def test_tls_without_sni_is_intercepted_and_refused(world):
    r = world.tls(SPLICED, None, cafile=world.mitm_ca, host="spliced.example")
    resp = r["responses"][0]
    assert (resp["status"], resp["headers"]["x-tproxy-reason"]) == (418, "tls-without-sni")
    assert not _lines(world, reason="spliced", sni=None)


def _set_policy(world, text, log_event):
    """Replace the policy file; wait for mitmdump's next ``log_event`` line (policy_loaded/policy_rejected)."""
    err = os.path.join(world.tmp, "mitmdump.err")
    before = open(err).read().count(log_event)
    tmp = world.policy_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, world.policy_file)
    wait_for(lambda: open(err).read().count(log_event) > before, what=log_event)


def test_policy_reloads_turn_splicing_off_and_a_splice_with_paths_is_rejected(world):
    try:
        _set_policy(world, POLICY.replace("splice: true", "splice: false", 1), '"policy_loaded"')
        r = world.tls(SPLICED, "spliced.example", cafile=world.ca.ca_file)
        assert "certificate verify failed" in r.get("tls_error", ""), r  # intercepted now
        _set_policy(world, POLICY, '"policy_loaded"')
        bad = POLICY.replace("  - host: bumped.example\n", '  - host: bumped.example\n    splice: true\n    paths: ["/x/"]\n')
        _set_policy(world, bad, '"policy_rejected"')
        err = open(os.path.join(world.tmp, "mitmdump.err")).read()
        assert "rules[1] (bumped.example).splice: a spliced rule cannot have paths or methods" in err
        r = world.tls(DECOY, "spliced.example", cafile=world.ca.ca_file)  # the last good policy still splices
        assert json.loads(r["responses"][0]["body"])["local_address"] == SPLICED
    finally:
        _set_policy(world, POLICY, '"policy_loaded"')


def test_refused_connections_never_reached_an_upstream(world):
    # only the allowed names ever reached the internet (the recorded SNIs of every HTTPS request)
    assert set(world.recorded_snis()) <= {"spliced.example", "bumped.example", None}
