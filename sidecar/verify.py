"""Prove that this pod's web traffic is intercepted by the tproxy proxy (fail closed).

The probe contract is in :mod:`controllerkit.probe`. One attempt sends ``GET /.tproxy/probe`` to
192.0.2.1:80 with a fresh nonce; only the tproxy proxy answers with that nonce echoed. Each
failed attempt is classified so that the final error names the missing piece.
"""

from __future__ import annotations

import errno
import http.client
import secrets
import socket
import time
from dataclasses import dataclass
from typing import Callable

from controllerkit import probe
from controllerkit.backoff import Backoff

NO_ANSWER = "no-answer"
REFUSED = "refused"
WRONG_ANSWER = "wrong-answer"
OK = "ok"


@dataclass
class Attempt:
    outcome: str
    detail: str


def probe_once(timeout: float, *, address: str = probe.PROBE_ADDRESS, port: int = probe.PROBE_PORT) -> Attempt:
    nonce = secrets.token_hex(16)
    conn = http.client.HTTPConnection(address, port, timeout=timeout)
    try:
        conn.request(
            "GET",
            probe.PROBE_PATH,
            headers={"Host": probe.PROBE_HOST, probe.NONCE_HEADER: nonce, "Connection": "close", "User-Agent": "tproxy-sidecar"},
        )
        resp = conn.getresponse()
        resp.read(4096)
        answer = resp.getheader(probe.ANSWER_HEADER)
        if resp.status == 200 and answer == nonce:
            return Attempt(OK, "the tproxy proxy answered the probe")
        got = "no " + probe.ANSWER_HEADER + " header" if answer is None else f"{probe.ANSWER_HEADER} {answer!r} is not our nonce"
        return Attempt(WRONG_ANSWER, f"HTTP {resp.status} with {got}")
    except ConnectionRefusedError:
        return Attempt(REFUSED, "connection refused")
    except http.client.RemoteDisconnected:
        return Attempt(WRONG_ANSWER, "the connection was closed without an HTTP answer")
    except (socket.timeout, TimeoutError):
        return Attempt(NO_ANSWER, f"no answer within {timeout:.1f}s")
    except OSError as e:
        if e.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
            return Attempt(NO_ANSWER, f"{e.strerror or e}")
        if e.errno == errno.EPERM:
            return Attempt(NO_ANSWER, "Operation not permitted (the pod's own lock refused tcp/80)")
        if e.errno in (errno.ECONNRESET, errno.EPIPE):
            return Attempt(REFUSED, f"connection reset ({e.strerror or e})")
        return Attempt(NO_ANSWER, f"{type(e).__name__}: {e}")
    except http.client.HTTPException as e:
        return Attempt(WRONG_ANSWER, f"not a valid HTTP answer ({type(e).__name__}: {e})")
    finally:
        conn.close()


def explain(attempt: Attempt, node: str) -> str:
    where = f"node {node}" if node else "this pod's node"
    if attempt.outcome == NO_ANSWER:
        return (
            f"interception not proven: node redirect missing (is podwatch running on {where}?): "
            f"the probe to {probe.PROBE_ADDRESS}:{probe.PROBE_PORT} got {attempt.detail}"
        )
    if attempt.outcome == REFUSED:
        return (
            f"interception not proven: something other than the tproxy proxy answered "
            f"({attempt.detail}; is the tproxy proxy listening on the host port of {where}, "
            f"and is podwatch's redirect in place?)"
        )
    return f"interception not proven: something other than the tproxy proxy answered the probe ({attempt.detail})"


def verify(
    timeout: float,
    *,
    node: str = "",
    log: Callable[..., None] = lambda *a, **k: None,
    attempt_timeout: float = 3.0,
    prober: Callable[[float], Attempt] = probe_once,
) -> tuple[bool, str]:
    """Retry with short backoff until the proxy answers or ``timeout`` seconds pass."""
    deadline = time.monotonic() + max(timeout, 0.0)
    backoff, n = Backoff(0.2, 2.0, jitter=0), 0
    while True:
        n += 1
        remaining = deadline - time.monotonic()
        att = prober(max(0.2, min(attempt_timeout, remaining)))
        if att.outcome == OK:
            log("probe_ok", attempt=n, detail=att.detail)
            return True, att.detail
        log("probe_failed", attempt=n, outcome=att.outcome, detail=att.detail)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False, explain(att, node)
        time.sleep(min(backoff.next(), remaining))
