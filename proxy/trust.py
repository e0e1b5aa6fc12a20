"""Upstream trust: the public roots plus ``tproxy_extra_ca``, as one private bundle file.

mitmproxy's ``ssl_verify_upstream_trusted_ca`` *replaces* the public roots; the addon writes the
public roots (certifi, as mitmproxy uses by default, plus the OS bundle when present) followed by
the extra CA into a private temp file and points that option at it. Upstream TLS is always verified.
"""

from __future__ import annotations

import os
import tempfile

from mitmproxy import exceptions

OS_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


def write_bundle(extra: str) -> str:
    """Write the public roots followed by the PEM file ``extra`` into a private file; return its path."""
    import certifi

    try:
        with open(extra, encoding="ascii") as f:
            extra_pem = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise exceptions.OptionsError(f"tproxy_extra_ca: cannot read {extra!r}: {getattr(e, 'strerror', None) or e}") from None
    if "-----BEGIN CERTIFICATE-----" not in extra_pem:
        raise exceptions.OptionsError(f"tproxy_extra_ca: {extra!r} holds no PEM certificate")
    parts = []
    for path in (certifi.where(), OS_BUNDLE):
        try:
            with open(path, encoding="ascii", errors="replace") as f:
                parts.append(f.read())
        except OSError:
            pass
    parts.append(extra_pem)
    fd, bundle = tempfile.mkstemp(prefix="tproxy-upstream-ca-", suffix=".pem")
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(p.strip() + "\n" for p in parts))
    return bundle


def remove_bundle(path: str) -> None:
    if path:
        try:
            os.unlink(path)
        except OSError:
            pass
