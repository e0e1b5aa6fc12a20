"""The audit log: one JSON object per decision, written in batches.

The line is assembled from pre-encoded parts (the client's fields, the rule's) and escaped fields,
always the same fields in the same order (proxy/README.md, "Audit lines"): one line per request is
the proxy's hottest path after mitmproxy itself.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time

import structlog
from mitmproxy import exceptions

log = structlog.get_logger()

_quote = json.encoder.encode_basestring_ascii  # the C escaper json.dumps uses: '"..."', ASCII-safe

NO_RULE_MEMBERS = '"rule":null,"rule_index":null'

# json.dumps with any non-default argument builds a new JSONEncoder per call; build it once.
encode = json.JSONEncoder(default=str, separators=(",", ":")).encode


def _jstr(value) -> str:
    """A JSON string (or null) for an audit field."""
    return "null" if value is None else _quote(value if isinstance(value, str) else str(value))


def _jint(value) -> str:
    """A JSON number (or null) for an audit field."""
    return "null" if value is None else str(int(value))


class AuditLog:
    """One JSON object per line, to stdout (``-``) or appended to a file; thread-safe.

    Unbuffered until :meth:`attach` is called (by the addon's ``running`` hook, i.e. inside a
    running mitmproxy): from then on lines written on the event loop's thread are collected and
    written together at most ``flush_seconds`` later (or at once when ``MAX_PENDING`` lines wait),
    one ``write`` + ``flush`` per batch instead of per request. A crash (kill -9) can therefore
    lose the last ``flush_seconds`` of lines; a clean shutdown (``done``) writes them all. Lines
    from other threads, and every line before ``attach``, are written at once.
    """

    FLUSH_SECONDS = 0.05  # default of the tproxy_audit_flush_ms option
    MAX_PENDING = 256

    def __init__(self, target: str, flush_seconds: float = FLUSH_SECONDS):
        self.target = target
        self.flush_seconds = flush_seconds  # 0: every line written at once, also when attached
        self._lock = threading.Lock()
        self._pending: list[str] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._timer: asyncio.TimerHandle | None = None
        self._ts_sec, self._ts_prefix = -1, ""
        if target == "-":
            self._file = None
        else:
            try:
                self._file = open(target, "a", encoding="utf-8", buffering=1)
            except OSError as e:
                raise exceptions.OptionsError(f"tproxy_audit: cannot open {target!r}: {e.strerror or e}") from None

    def attach(self, loop: asyncio.AbstractEventLoop, thread: int | None = None) -> None:
        """Batch the lines written on the thread running ``loop`` (default: the calling thread)."""
        self._loop, self._loop_thread = loop, thread or threading.get_ident()

    def replaced_by(self, target: str) -> "AuditLog":
        """A log to ``target`` with this one's batch window and loop; this one is closed."""
        new = AuditLog(target, self.flush_seconds)
        if self._loop is not None:
            new.attach(self._loop, self._loop_thread)
        self.close()
        return new

    def decision(
        self,
        client_members: str,
        policy_mode: str,
        scope_members: str,
        method,
        scheme,
        host,
        port,
        path,
        sni,
        decision,
        reason,
        rule,
        upstream,
        status,
        nbytes,
        error=None,
    ) -> None:
        """Write one decision line. ``client_members``: the client's fields, JSON-encoded without
        braces (proxy/clients.py); ``scope_members``: the deciding scope's (``"scope":...``,
        proxy/scopes.py); ``rule``: a policy Rule (its ``audit_members``) or None."""
        self.write_line(
            f'{{"ts":"{self._timestamp(time.time())}","event":"decision",{client_members},'
            f'"policy_mode":{_jstr(policy_mode)},{scope_members},"method":{_jstr(method)},"scheme":{_jstr(scheme)},'
            f'"host":{_jstr(host)},"port":{_jint(port)},"path":{_jstr(path)},'
            f'"sni":{_jstr(sni)},"decision":{_jstr(decision)},"reason":{_jstr(reason)},'
            f'{rule.audit_members if rule is not None else NO_RULE_MEMBERS},"upstream":{_jstr(upstream)},'
            f'"status":{_jint(status)},"bytes":{_jint(nbytes)}' + (f',"error":{_jstr(error)}}}' if error else "}")
        )

    def _timestamp(self, now: float) -> str:
        """``2026-11-27T06:05:28.123Z`` (UTC, milliseconds); the date-time part formatted once a second."""
        sec = int(now)
        if sec != self._ts_sec:
            self._ts_sec, self._ts_prefix = sec, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        return f"{self._ts_prefix}.{int(now * 1000) % 1000:03d}Z"

    def write(self, record: dict) -> None:
        self.write_line(encode(record))

    def write_line(self, line: str) -> None:
        """Write one already-encoded JSON object (no newline)."""
        with self._lock:
            self._pending.append(line + "\n")
            if (
                self._loop is not None
                and self.flush_seconds > 0
                and threading.get_ident() == self._loop_thread
                and len(self._pending) < self.MAX_PENDING
            ):
                if self._timer is None:
                    self._timer = self._loop.call_later(self.flush_seconds, self.flush)
                return
            self._write_pending()

    def flush(self) -> None:
        with self._lock:
            self._write_pending()

    def _write_pending(self) -> None:  # with self._lock held
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._pending:
            return
        data = "".join(self._pending)
        self._pending.clear()
        f = self._file or sys.stdout
        try:
            f.write(data)
            f.flush()
        except (OSError, ValueError) as e:  # a closed or full target must not take the proxy down
            log.error("audit_write_failed", target=self.target, error=str(e), lines=data.count("\n"))

    def close(self) -> None:
        self.flush()
        self._loop = None
        if self._file:
            self._file.close()
