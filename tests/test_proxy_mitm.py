"""proxy.mitm, the one adapter to mitmproxy's internals: what it relies on exists, has the type it
expects and behaves as it expects. A mitmproxy upgrade that moves any of it fails here, loudly, instead
of silently changing what the proxy dials. (The HTTP/1 parser wrapper: tests/test_proxy_request_target.py.)"""

import ast
import glob
import os

import pytest
from mitmproxy import connection, hooks, http
from mitmproxy.net.http import url
from mitmproxy.proxy import mode_specs
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import tflow, tutils

from proxy import authority, mitm, request_target
from proxy.core import TproxyAddon
from proxy.decision import RequestFacts

PROXY_DIR = os.path.join(os.path.dirname(__file__), "..", "proxy")


# -- Request.data: read by request_facts, written by set_host_port -----------------------------------
def test_request_data_holds_the_raw_fields_with_their_types():
    req = tutils.treq(host="a.example", port=8080, scheme=b"https", authority=b"a.example:8080", path=b"/x?y")
    data = req.data
    assert isinstance(data, http.RequestData)
    for name, kind in (
        ("host", str),
        ("port", int),
        ("method", bytes),
        ("scheme", bytes),
        ("authority", bytes),
        ("path", bytes),
        ("headers", http.Headers),
    ):
        assert isinstance(getattr(data, name), kind), name
    # the properties are decodings of the raw fields, nothing more
    assert (req.host, req.port, req.method, req.scheme, req.path) == ("a.example", 8080, "GET", "https", "/x?y")
    assert req.authority == "a.example:8080" and data.headers.get_all("Host") == req.headers.get_all("Host")


def test_request_data_writes_are_what_the_properties_read():
    req = tutils.treq()
    req.data.host, req.data.port = "b.example", 8443
    assert (req.host, req.port) == ("b.example", 8443)
    assert req.url.startswith("http://b.example:8443/")


@pytest.mark.parametrize(
    "scheme, port, h2, authority",
    [
        ("https", 443, False, b""),
        ("http", 80, False, b""),
        ("http", 8080, False, b""),
        ("https", 443, False, b"other.example:443"),
        ("https", 443, True, b"Other.Example"),
        ("https", 8443, True, b"x"),
    ],
)
def test_set_host_port_ends_where_mitmproxys_setters_end(scheme, port, h2, authority):
    """Same host, port and Host header / :authority as ``req.host = ...; req.port = ...`` (HTTP/1: the
    absolute-form target is dropped, the setters would keep it)."""

    def make():
        req = tutils.treq(scheme=scheme.encode(), port=port, authority=authority, host="client.example")
        req.headers["Host"] = "client.example"
        if h2:
            req.http_version = "HTTP/2.0"
        return req

    ours, theirs = make(), make()
    mitm.set_host_port(ours, "policy.example", port)
    theirs.host, theirs.port = "policy.example", port
    assert (ours.host, ours.port, ours.headers.get_all("Host")) == (theirs.host, theirs.port, theirs.headers.get_all("Host"))
    if h2:
        assert ours.authority == theirs.authority == url.hostport(scheme, "policy.example", port)
    else:
        assert ours.data.authority == b""  # origin-form upstream


def test_url_helpers_behave_as_the_adapter_and_authority_expect():
    assert url.hostport("https", "a.example", 443) == "a.example"
    assert url.hostport("http", "a.example", 8080) == "a.example:8080"
    for scheme in ("http", "https", "ftp", ""):
        assert authority.default_port(scheme) == url.default_port(scheme), scheme


def test_request_facts_reads_a_transparent_http1_request():
    req = tutils.treq(host="203.0.113.9", port=443, scheme=b"https", authority=b"a.example", path=b"/p")
    req.headers["Host"] = "a.example"
    cc = tflow.tclient_conn()
    cc.proxy_mode, cc.tls, cc.sni = ProxyMode.parse("transparent"), True, "a.example"
    sc = tflow.tserver_conn()
    sc.address = ("203.0.113.9", 443)
    f = tflow.tflow(client_conn=cc, server_conn=sc, req=req)
    assert mitm.request_facts(f, False, "ns") == RequestFacts(
        "GET", "/p", "https", ["a.example"], "a.example", False, None, False, "203.0.113.9", 443, 443, True, "a.example", "ns"
    )


def test_request_facts_reads_an_http2_authority():
    req = tutils.treq(authority=b"b.example", path=b"/")
    req.http_version = "HTTP/2.0"
    f = tflow.tflow(req=req)
    facts = mitm.request_facts(f, False, None)
    assert facts.http2 and facts.authority == "b.example" and facts.absolute_target is None


# -- proxy mode and connection state --------------------------------------------------------------
def test_proxy_modes_are_told_apart_by_class():
    assert issubclass(mode_specs.RegularMode, mode_specs.ProxyMode)
    cc = tflow.tclient_conn()
    cc.proxy_mode = ProxyMode.parse("regular")
    assert mitm.is_regular_mode(cc)
    cc.proxy_mode = ProxyMode.parse("transparent")
    assert not mitm.is_regular_mode(cc)


def test_connection_state_closed_is_what_a_disconnected_client_has():
    cc = tflow.tclient_conn()
    cc.state = connection.ConnectionState.CLOSED
    assert mitm.is_closed(cc)
    cc.state = connection.ConnectionState.OPEN
    assert not mitm.is_closed(cc)


# -- the server connection's address: pinned before connect, restored once open ---------------------
def test_a_server_connection_not_yet_open_can_be_pinned():
    srv = connection.Server(address=("a.example", 443))
    mitm.pin_server_address(srv, ("203.0.113.20", 443))
    assert srv.address == ("203.0.113.20", 443)


def test_an_open_server_connection_refuses_address_changes_except_through_the_adapter():
    """If this starts to pass without the adapter (mitmproxy no longer refuses), restore_server_address
    can become a plain assignment; if the attribute moves, pinning no longer restores the name."""
    srv = connection.Server(address=("203.0.113.20", 443))
    srv.state = connection.ConnectionState.OPEN
    with pytest.raises(RuntimeError):
        srv.address = ("a.example", 443)
    mitm.restore_server_address(srv, ("a.example", 443))
    assert srv.address == ("a.example", 443)
    assert "address" in connection.Server.__dataclass_fields__


# -- the hook table (proxy/addon.py) ----------------------------------------------------------------
def test_every_hook_the_addon_implements_is_a_hook_mitmproxy_dispatches():
    table = mitm.hook_table(TproxyAddon())
    assert set(table) == set(hooks.all_hooks) - {"add_log"}
    implemented = {name for name, fn in table.items() if fn is not None}
    assert implemented == {
        "load",
        "configure",
        "running",
        "done",
        "request",
        "http_connect",
        "responseheaders",
        "response",
        "error",
        "server_connect",
        "server_connected",
        "server_connect_error",
        "tcp_start",
        "tls_clienthello",
        "client_disconnected",
    }
    # the arguments mitmproxy passes are what the hooks take
    assert [f.name for f in hooks.all_hooks["server_connect"].__dataclass_fields__.values()] == ["data"]
    assert [f.name for f in hooks.all_hooks["request"].__dataclass_fields__.values()] == ["flow"]
    assert [f.name for f in hooks.all_hooks["client_disconnected"].__dataclass_fields__.values()] == ["client"]


def test_the_parser_wrapper_is_the_adapters():
    assert mitm.install_request_target is request_target.install
    assert mitm.absolute_target is request_target.absolute_target


# -- nothing else reaches into mitmproxy ----------------------------------------------------------------
INTERNALS = ("mitmproxy.net", "mitmproxy.proxy", "mitmproxy.hooks", "mitmproxy.connection")
ADAPTER_FILES = {"mitm.py", "request_target.py"}


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(PROXY_DIR, "*.py"))), ids=os.path.basename)
def test_only_the_adapter_uses_mitmproxy_internals(path):
    if os.path.basename(path) in ADAPTER_FILES:
        return
    tree = ast.parse(open(path).read())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            assert not any(n.startswith(INTERNALS) for n in names), f"{path}:{node.lineno} imports {names}"
        if isinstance(node, ast.Import):
            assert not any(a.name.startswith(INTERNALS) for a in node.names), f"{path}:{node.lineno}"
        if (
            isinstance(node, ast.Attribute)
            and node.attr == "data"
            and (getattr(node.value, "attr", None) == "request" or getattr(node.value, "id", None) in ("req", "request"))
        ):
            raise AssertionError(f"{path}:{node.lineno}: Request.data outside proxy/mitm.py")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "__setattr__":
            raise AssertionError(f"{path}:{node.lineno}: __setattr__ outside proxy/mitm.py")
