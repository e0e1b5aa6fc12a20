"""Every use of mitmproxy internals, in one place; tests/test_proxy_mitm.py fails if a release moves them.

The rest of the proxy uses only mitmproxy's documented addon API (hooks, ``ctx.options``,
``OptionsError``, ``flow.request``/``response``/``metadata``, ``http.Response.make``). What it needs
beyond that is here:

- :func:`request_facts` reads a request's raw fields (``Request.data``: path, method, authority
  and headers as sent, without the property getters' work) and the connection's proxy mode
  (``mitmproxy.proxy.mode_specs``) for the decision.
- :func:`set_host_port` writes ``Request.data`` directly (host, port, authority) instead of the
  ``host``/``port`` setters, which rebuild the Host header each (``mitmproxy.net.http.url.hostport``).
- :func:`pin_server_address` / :func:`restore_server_address` move an upstream connection to the
  checked address and give it its name back once open, which ``Connection.__setattr__`` refuses
  on an open connection (hence ``object.__setattr__``).
- :func:`install_request_target` / :func:`absolute_target`: the HTTP/1 request-head parser wrapper
  (proxy/request_target.py) that keeps an absolute-form target as written.
- :func:`client_hello` / :func:`splice`: a ClientHello's client, SNI and destination port, and
  forwarding its connection undecrypted (``ignore_connection``) to the policy's name instead of
  the address the client dialled (proxy/splice.py).
- :func:`hook_table`: every hook name mitmproxy dispatches (``mitmproxy.hooks.all_hooks``), for
  the hooks-as-module-attributes entry point (proxy/addon.py).
"""

from __future__ import annotations

from mitmproxy import http
from mitmproxy.connection import ConnectionState
from mitmproxy.net.http import url
from mitmproxy.proxy import mode_specs

from proxy import request_target
from proxy.decision import RequestFacts

install_request_target = request_target.install
absolute_target = request_target.absolute_target

_CLOSED = ConnectionState.CLOSED
_RegularMode = mode_specs.RegularMode


def is_regular_mode(client) -> bool:
    """True for a client of a standard (regular) mode proxy (``-p 1080``), False for transparent."""
    return isinstance(client.proxy_mode, _RegularMode)


def is_closed(conn) -> bool:
    """True once mitmproxy has closed the connection (its ``client_disconnected`` hook has run)."""
    return conn.state is _CLOSED


def request_facts(flow: http.HTTPFlow, regular: bool, namespace: str | None) -> RequestFacts:
    """The decision's view of a request (proxy/decision.py), read once."""
    req = flow.request
    data = req.data
    h2 = req.is_http2 or req.is_http3
    dest = flow.server_conn.address
    client = flow.client_conn
    return RequestFacts(
        req.method,
        req.path,
        req.scheme,
        data.headers.get_all("Host"),
        req.authority if data.authority else "",
        h2,
        None if h2 else absolute_target(req),
        regular,
        req.host,
        req.port,
        dest[1] if dest else None,
        bool(client.tls),
        client.sni,
        namespace,
    )


def set_host_port(req: http.Request, host: str, port: int, host_headers: list[str] | None = None) -> None:
    """``req.host = host; req.port = port`` with the same end state, minus the work that changes nothing.

    mitmproxy's ``host`` and ``port`` setters each rebuild ``host[:port]`` and rewrite the Host
    header / ``:authority`` (a case-insensitive multidict scan each), even when they already say
    exactly that -- the usual case here, where the request's own Host named the policy host. This
    writes ``req.data`` directly and touches the header / authority only when they differ from
    what the setters would have written (``url.hostport`` of the new scheme, host and port). An
    HTTP/1 absolute-form target is dropped: the upstream gets origin-form (``/path?query``).
    ``host_headers``: the request's Host values if the caller has just read them (saves a scan)."""
    data = req.data
    data.host = host
    data.port = port
    val = url.hostport(req.scheme, host, port)
    if host_headers is None:
        host_headers = data.headers.get_all("Host")
    if host_headers and host_headers != [val]:  # present and not already right
        data.headers["Host"] = val
    if data.authority:
        if req.is_http2 or req.is_http3:
            if req.authority != val:
                req.authority = val
        else:  # HTTP/1: origin-form (RFC 9112 3.2.1), never the client's absolute-form target
            data.authority = b""


def pin_server_address(server, address: tuple[str, int]) -> None:
    """Dial ``address`` for a server connection that is not open yet (``server_connect``)."""
    server.address = address


def restore_server_address(server, address: tuple[str, int]) -> None:
    """Give an open server connection back the (name, port) it was approved for, so that mitmproxy
    reuses it for the next keep-alive request to that name (it matches connections by address).
    ``Connection.__setattr__`` refuses address changes on open connections; this one only restores
    the name the connection was approved and verified (SNI) for."""
    object.__setattr__(server, "address", address)


def client_hello(data) -> tuple:
    """``(client connection, SNI or None, destination port or None)`` of a ``tls_clienthello`` hook."""
    dest = data.context.server.address
    return data.context.client, data.client_hello.sni, (dest[1] if dest else None)


def splice(data, host: str, port: int) -> None:
    """Forward the connection of a ``tls_clienthello`` hook without decryption, to ``(host, port)``:
    the server connection (not open yet: ``connection_strategy=lazy``) is readdressed to the name the
    policy allowed, and ``server_connect`` pins it to that name's checked address (proxy/pinning.py)."""
    data.context.server.address = (host, port)
    data.ignore_connection = True


def hook_table(addon) -> dict:
    """``{hook name: bound method or None}`` for every hook mitmproxy knows (see proxy/addon.py)."""
    # Importing the layers registers their hooks in mitmproxy.hooks.all_hooks (a running mitmproxy
    # has done so already; this makes the table complete in any context).
    import mitmproxy.addonmanager  # noqa: F401
    import mitmproxy.proxy.layers  # noqa: F401
    import mitmproxy.proxy.server_hooks  # noqa: F401
    from mitmproxy import hooks

    # add_log is mitmproxy's deprecated log event: merely having the attribute (even None) makes
    # AddonManager.register warn "The add_log event has been deprecated" on every (re)load.
    return {name: getattr(addon, name, None) for name in hooks.all_hooks if name != "add_log"}
