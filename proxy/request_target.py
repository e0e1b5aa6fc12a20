"""The HTTP/1 request target as the client wrote it: the one place that reaches into mitmproxy for it.

An origin server that receives an absolute-form target (``GET https://b.example/x HTTP/1.1``) uses
the target's authority and ignores ``Host`` (RFC 9112 §3.2.2), so the decision has to know the
target's scheme, host and port. mitmproxy keeps only the authority: in transparent mode (and inside
a CONNECT tunnel) it overwrites the request's scheme, host and port with the connection's before any
addon hook runs, so ``GET http://a.example/x`` sent inside TLS to port 443 looks, to the addon, like
``https://a.example:443``.

:func:`install` wraps ``mitmproxy.net.http.http1.read_request_head`` -- the parser mitmproxy's
HTTP/1 server layer calls for every request head -- so that an absolute-form request carries its
target as parsed: :func:`absolute_target` returns ``(scheme, host, port)`` for it (the port
defaulted from the scheme), ``None`` for origin-form, asterisk-form, CONNECT and HTTP/2 requests.
The wrapper adds one attribute check per request head. ``tests/test_proxy_request_target.py``
fails if a mitmproxy upgrade moves the parser or the call.
"""

from __future__ import annotations

from typing import Optional

from mitmproxy import http
from mitmproxy.net.http import http1

_ATTR = "tproxy_absolute_target"  # set on absolute-form Request objects by the wrapped parser


def _wrap(read_request_head):
    def read_request_head_keeping_target(lines):
        request = read_request_head(lines)
        data = request.data
        if data.authority and data.method != b"CONNECT":
            # as mitmproxy's parser produced them, before any mode rewrites them
            setattr(request, _ATTR, (data.scheme.decode("ascii", "replace").lower(), request.host, data.port))
        return request

    read_request_head_keeping_target.tproxy_wrapped = read_request_head
    return read_request_head_keeping_target


def install() -> None:
    """Wrap mitmproxy's HTTP/1 request-head parser (idempotent)."""
    if not getattr(http1.read_request_head, "tproxy_wrapped", None):
        http1.read_request_head = _wrap(http1.read_request_head)


def installed() -> bool:
    return bool(getattr(http1.read_request_head, "tproxy_wrapped", None))


def absolute_target(request: http.Request) -> Optional[tuple[str, str, int]]:
    """``(scheme, host, port)`` of an HTTP/1 absolute-form target as the client wrote it, else None."""
    return getattr(request, _ATTR, None)
