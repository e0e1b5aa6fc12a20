"""The interception probe's answer (controllerkit/probe.py has the contract).

The sidecar proves that its pod's web traffic reaches this proxy with ``GET http://192.0.2.1/.tproxy/probe``
(or ``Host: probe.tproxy.invalid``) and a nonce; the proxy answers it itself, without contacting
anything, without a policy decision and without an audit line.
"""

from __future__ import annotations

from mitmproxy import http

from controllerkit.probe import ANSWER_HEADER, NONCE_HEADER, PROBE_ADDRESS, PROBE_HOST, PROBE_PATH, PROBE_PORT
from proxy.authority import split_host_port
from proxy.identity import canonical_ip


def is_probe(flow: http.HTTPFlow) -> bool:
    if flow.request.path.split("?", 1)[0] != PROBE_PATH:
        return False
    dest = flow.server_conn.address
    if dest and canonical_ip(str(dest[0])) == PROBE_ADDRESS and dest[1] == PROBE_PORT:
        return True
    try:
        host, _ = split_host_port(flow.request.host_header or flow.request.host or "")
    except ValueError:
        return False
    return host.lower().rstrip(".") == PROBE_HOST


def answer(flow: http.HTTPFlow, node: str) -> None:
    """200 with the nonce echoed (``X-Tproxy-Probe``) and ``tproxy proxy on <node>``; 400 without a nonce."""
    nonce = flow.request.headers.get(NONCE_HEADER, "")
    if not nonce:
        flow.response = http.Response.make(400, f"missing {NONCE_HEADER}\n".encode(), {"Content-Type": "text/plain"})
        return
    body = f"tproxy proxy on {node}\n".encode()
    flow.response = http.Response.make(200, body, {"Content-Type": "text/plain", ANSWER_HEADER: nonce})
