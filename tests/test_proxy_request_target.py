"""proxy.request_target: the HTTP/1 request target as the client wrote it, kept past mitmproxy's
transparent mode. These tests fail loudly when a mitmproxy upgrade moves what the adapter wraps."""

import inspect

import pytest
from mitmproxy.net.http import http1
from mitmproxy.proxy.layers.http import _http1

from proxy import request_target


@pytest.fixture(autouse=True)
def installed():
    request_target.install()


def parse(line: bytes):
    return http1.read_request_head([line + b"\r\n", b"Host: a.example\r\n"])


def test_the_server_layer_calls_the_wrapped_parser():
    # mitmproxy's HTTP/1 server layer looks the parser up on this module at every request head
    assert _http1.http1 is http1
    assert "http1.read_request_head(" in inspect.getsource(_http1.Http1Server)
    assert request_target.installed() and http1.read_request_head.tproxy_wrapped


def test_install_is_idempotent():
    wrapped = http1.read_request_head
    request_target.install()
    assert http1.read_request_head is wrapped


@pytest.mark.parametrize(
    "line, target",
    [
        (b"GET https://b.example/x?y HTTP/1.1", ("https", "b.example", 443)),
        (b"GET http://b.example/x HTTP/1.1", ("http", "b.example", 80)),
        (b"GET HTTP://B.example:8080/x HTTP/1.1", ("http", "B.example", 8080)),
        (b"GET https://b.example.:443/ HTTP/1.1", ("https", "b.example.", 443)),
    ],
)
def test_absolute_form_keeps_scheme_host_and_port(line, target):
    assert request_target.absolute_target(parse(line)) == target


@pytest.mark.parametrize("line", [b"GET /x HTTP/1.1", b"OPTIONS * HTTP/1.1", b"CONNECT b.example:443 HTTP/1.1"])
def test_other_forms_have_no_absolute_target(line):
    assert request_target.absolute_target(parse(line)) is None


def test_target_survives_transparent_mode_overwriting_scheme_host_and_port():
    req = parse(b"GET http://b.example/x HTTP/1.1")
    # what mitmproxy's HttpStream does in transparent mode, before any hook
    req.data.host, req.data.port, req.scheme = "203.0.113.9", 443, "https"
    assert request_target.absolute_target(req) == ("http", "b.example", 80)
