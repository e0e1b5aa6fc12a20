"""The chart's mitmproxy CA: given with --set-file or generated, one CA across the Secret, the
root-certs bundle and the DaemonSet checksum, and usable by a real mitmdump from a read-only confdir."""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trustme
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from chart_helpers import REPO, helm, one, render, render_text

FULL = "tproxy-tproxy"


def _secret(objs) -> dict[str, bytes]:
    return {k: base64.b64decode(v) for k, v in one(objs, "Secret", f"{FULL}-certs")["data"].items()}


def _root_bundle(objs) -> str:
    return one(objs, "ConfigMap", f"{FULL}-root-certs")["data"]["root-certs.crt"]


@pytest.fixture(scope="module")
def given_ca(tmp_path_factory):
    ca = trustme.CA()
    d = tmp_path_factory.mktemp("ca")
    ca.cert_pem.write_to_path(str(d / "ca.crt"))
    ca.private_key_pem.write_to_path(str(d / "ca.key"))
    return ca, d / "ca.crt", d / "ca.key"


def _set_file(crt: Path, key: Path) -> list[str]:
    return ["--set-file", f"tproxy.ca.cert={crt}", "--set-file", f"tproxy.ca.key={key}"]


def test_given_ca_is_used_everywhere_and_stable(given_ca):
    ca, crt, key = given_ca
    objs = render(None, *_set_file(crt, key))
    sec = _secret(objs)
    cert_pem = ca.cert_pem.bytes().strip()
    key_pem = ca.private_key_pem.bytes().strip()
    # mitmproxy's confdir format: private key, then certificate.
    assert sec["mitmproxy-ca.pem"] == key_pem + b"\n" + cert_pem + b"\n"
    assert sec["mitmproxy-ca-cert.pem"].strip() == cert_pem
    assert b"BEGIN DH PARAMETERS" in sec["mitmproxy-dhparam.pem"]
    assert _root_bundle(objs).strip() == cert_pem.decode()
    assert one(objs, "Secret")["metadata"]["annotations"]["tproxy/ca-source"] == "values"
    # Rendering again (an upgrade) gives the same Secret and the same pod-template checksum,
    # so the proxies are not restarted for nothing.
    again = render(None, *_set_file(crt, key))
    assert one(again, "Secret") == one(objs, "Secret")
    ann = lambda o: one(o, "DaemonSet")["spec"]["template"]["metadata"]["annotations"]["checksum/ca"]
    assert ann(again) == ann(objs) == hashlib.sha256(sec["mitmproxy-ca.pem"]).hexdigest()


def test_generated_ca_is_one_ca_across_secret_and_bundle():
    objs = render({"tproxy.rootCertsNamespaces": ["team-a"]})
    sec = _secret(objs)
    assert one(objs, "Secret")["metadata"]["annotations"]["tproxy/ca-source"] == "generated"
    cert = x509.load_pem_x509_certificate(sec["mitmproxy-ca-cert.pem"])
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    key = serialization.load_pem_private_key(sec["mitmproxy-ca.pem"], password=None)
    assert key.public_key().public_numbers() == cert.public_key().public_numbers()
    assert x509.load_pem_x509_certificates(sec["mitmproxy-ca.pem"])[0] == cert
    for cm in [o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-root-certs")]:
        assert x509.load_pem_x509_certificate(cm["data"]["root-certs.crt"].encode()) == cert
    assert (
        one(objs, "DaemonSet")["spec"]["template"]["metadata"]["annotations"]["checksum/ca"]
        == hashlib.sha256(sec["mitmproxy-ca.pem"]).hexdigest()
    )


def test_extra_trusted_certs_are_appended_to_the_bundle(given_ca, tmp_path):
    ca, crt, key = given_ca
    other = trustme.CA()
    other.cert_pem.write_to_path(str(tmp_path / "extra.crt"))
    objs = render(None, *_set_file(crt, key), "--set-file", f"tproxy.ca.extraTrustedCerts={tmp_path / 'extra.crt'}")
    certs = x509.load_pem_x509_certificates(_root_bundle(objs).encode())
    assert [c.subject for c in certs] == [
        x509.load_pem_x509_certificate(ca.cert_pem.bytes()).subject,
        x509.load_pem_x509_certificate(other.cert_pem.bytes()).subject,
    ]


def test_half_a_ca_is_refused_with_a_clear_error(given_ca):
    _, crt, key = given_ca
    proc = helm("template", "tproxy", str(REPO / "chart"), "--set-file", f"tproxy.ca.cert={crt}", check=False)
    assert proc.returncode != 0
    assert "tproxy.ca.cert and tproxy.ca.key must be given together" in proc.stderr


def test_a_ca_that_is_not_pem_is_refused(given_ca, tmp_path):
    _, crt, key = given_ca
    (tmp_path / "bad.crt").write_text("not a certificate\n")
    proc = helm("template", "tproxy", str(REPO / "chart"), *_set_file(tmp_path / "bad.crt", key), check=False)
    assert proc.returncode != 0 and "tproxy.ca.cert must be a PEM certificate" in proc.stderr
    proc = helm("template", "tproxy", str(REPO / "chart"), *_set_file(crt, crt), check=False)
    assert proc.returncode != 0 and "tproxy.ca.key must be an unencrypted PEM private key" in proc.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.root
def test_mitmdump_uses_the_rendered_secret_from_a_read_only_confdir(tmp_path):
    """The Secret volume is read-only: mitmdump must start from exactly the files the chart puts
    there (it writes mitmproxy-dhparam.pem when that is missing, hence the chart ships it) and sign
    leaf certificates with the chart's CA, which the root-certs bundle lets clients verify."""
    objs = render()
    conf = tmp_path / "conf"
    conf.mkdir()
    volume = one(objs, "DaemonSet")["spec"]["template"]["spec"]["volumes"]
    items = next(v for v in volume if v["name"] == "mitmproxy-certs")["secret"]["items"]
    sec = _secret(objs)
    for item in items:
        (conf / item["path"]).write_bytes(sec[item["key"]])
    bundle = tmp_path / "root-certs.crt"
    bundle.write_text(_root_bundle(objs))
    port = _free_port()
    mitmdump = str(Path(sys.executable).parent / "mitmdump")  # the test environment's mitmproxy 11.0.2
    script = (
        f"mount --bind {conf} {conf} && mount -o remount,ro,bind {conf} && "
        f"exec {mitmdump} --listen-host 127.0.0.1 -p {port} --set confdir={conf} "
        f"--set connection_strategy=lazy"
    )
    log = open(tmp_path / "mitmdump.log", "w+")
    proc = subprocess.Popen(
        ["unshare", "-m", "sh", "-c", script], stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "HOME": str(tmp_path)}
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, f"mitmdump exited: {(tmp_path / 'mitmdump.log').read_text()}"
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=1)
                break
            except OSError:
                assert time.monotonic() < deadline, "mitmdump did not listen within 20 s"
                time.sleep(0.1)
        with sock:
            sock.sendall(b"CONNECT app.example.test:443 HTTP/1.1\r\nHost: app.example.test:443\r\n\r\n")
            assert sock.recv(1024).startswith(b"HTTP/1.1 200")
            ctx = ssl.create_default_context(cafile=str(bundle))
            with ctx.wrap_socket(sock, server_hostname="app.example.test") as tls:  # verifies the chain
                leaf = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))
        ca = x509.load_pem_x509_certificate(sec["mitmproxy-ca-cert.pem"])
        assert leaf.issuer == ca.subject
        assert sorted(p.name for p in conf.iterdir()) == sorted(i["path"] for i in items)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


def test_upgrade_keeps_the_ca_through_helm_lookup(kubesim_server, tmp_path):
    """Helm 3 `lookup` against a live API server (the kubesim emulator, through
    `helm template --dry-run=server`): the first render generates a CA; once that Secret is in the
    cluster, the next render (an upgrade) reuses it instead of generating a new one."""
    from kubesim.testing import api_client_for, raw

    kubeconfig = kubesim_server.write_kubeconfig(str(tmp_path / "kubeconfig"))
    admin = api_client_for(kubesim_server)
    ns = "tproxy-system"
    assert raw(admin, "POST", "/api/v1/namespaces", body={"metadata": {"name": ns}})[0] == 201
    live = ("--dry-run=server", "--kubeconfig", kubeconfig)

    first = [d for d in yaml.safe_load_all(render_text(None, *live, namespace=ns)) if d]
    secret = one(first, "Secret", f"{FULL}-certs")
    assert secret["metadata"]["annotations"]["tproxy/ca-source"] == "generated"
    status, body = raw(admin, "POST", f"/api/v1/namespaces/{ns}/secrets", body=secret)  # what install does
    assert status == 201, body

    second = [d for d in yaml.safe_load_all(render_text({"tproxy.hostPort": 8081}, *live, namespace=ns)) if d]
    again = one(second, "Secret", f"{FULL}-certs")
    assert again["metadata"]["annotations"]["tproxy/ca-source"] == "existing-secret"
    assert again["data"] == secret["data"]
    assert _root_bundle(second) == _root_bundle(first)
    checksum = lambda objs: one(objs, "DaemonSet")["spec"]["template"]["metadata"]["annotations"]["checksum/ca"]
    assert checksum(second) == checksum(first)
    admin.close()
