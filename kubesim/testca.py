"""A throw-away certificate authority for the simulated internet (tests and the demo).

The upstream servers in the "internet" namespace present certificates issued by this CA, and the
proxy verifies them with ``--set ssl_verify_upstream_trusted_ca=<ca_file>``: upstream TLS stays
verified in tests exactly as in production, only the trust anchor differs.

The CA is created once per directory and reused (its key is kept next to it), so several processes
(the demo driver, the upstream server, a test) that point at the same directory agree on one CA.
Creation and issuing hold an exclusive ``flock`` on the directory so concurrent first use is safe.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re

import trustme

CA_CERT = "ca.pem"
CA_KEY = "ca.key"


def _write_atomic(path: str, data: bytes, mode: int = 0o644) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


class TestCA:
    """``TestCA(directory)``: load the CA in ``directory`` or create it; ``issue([...])`` leaf certs."""

    __test__ = False  # not a pytest test class despite the name

    def __init__(self, directory: str | os.PathLike):
        self.directory = os.fspath(directory)
        os.makedirs(self.directory, exist_ok=True)
        with self._locked():
            cert, key = self._path(CA_CERT), self._path(CA_KEY)
            if os.path.exists(cert) and os.path.exists(key):
                with open(cert, "rb") as c, open(key, "rb") as k:
                    self._ca = trustme.CA.from_pem(c.read(), k.read())
            else:
                self._ca = trustme.CA(organization_name="tproxy test CA")
                _write_atomic(key, self._ca.private_key_pem.bytes(), 0o600)
                _write_atomic(cert, self._ca.cert_pem.bytes())

    def _path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    @contextlib.contextmanager
    def _locked(self):
        fd = os.open(self._path(".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    @property
    def ca_file(self) -> str:
        """PEM file with the CA certificate: the trust anchor to hand to clients and the proxy."""
        return self._path(CA_CERT)

    def issue(self, hostnames: list[str]) -> tuple[str, str]:
        """Issue (or reuse) a server certificate for ``hostnames``; return ``(cert_path, key_path)``.

        The certificate file holds the leaf followed by the chain; names may be DNS names,
        wildcards or IP addresses (trustme puts IPs into iPAddress SANs).
        """
        if not hostnames:
            raise ValueError("issue() needs at least one hostname")
        names = [h.strip().lower().rstrip(".") for h in hostnames]
        slug = re.sub(r"[^a-z0-9.-]+", "_", names[0].replace("*", "wildcard"))[:60]
        digest = hashlib.sha256(",".join(names).encode()).hexdigest()[:10]
        cert_path, key_path = self._path(f"{slug}-{digest}.pem"), self._path(f"{slug}-{digest}.key")
        with self._locked():
            if not (os.path.exists(cert_path) and os.path.exists(key_path)):
                leaf = self._ca.issue_cert(*names)
                _write_atomic(key_path, leaf.private_key_pem.bytes(), 0o600)
                _write_atomic(cert_path, b"".join(b.bytes() for b in leaf.cert_chain_pems))
        return cert_path, key_path
