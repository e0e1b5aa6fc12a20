"""The workers' audit lines, relayed whole into the one audit target of the node's proxy.

Every worker writes its audit lines to its stdout (a pipe to the supervisor); the supervisor copies
each pipe into the real target (its own stdout, or a file it appends to). Why not let N processes
write the target themselves: an audit batch is one ``write`` of many lines, and writes larger than
``PIPE_BUF`` (4 KiB) to a pipe, or split by a text wrapper's buffer, interleave with another
writer's mid-line. Here each copy writes only complete lines, under one lock, so every line stays
one JSON object; a worker's last partial line (it died mid-write) is completed with a newline.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import BinaryIO

CHUNK = 1 << 16


class AuditSink:
    """The node's audit target: ``-`` (stdout) or a file appended to; thread-safe."""

    def __init__(self, target: str):
        self.target = target
        self._lock = threading.Lock()
        self._fd = sys.stdout.fileno() if target == "-" else os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.lines = 0

    def write(self, data: bytes) -> None:
        """Write complete lines (``data`` ends with a newline)."""
        with self._lock:
            view = memoryview(data)
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
            self.lines += data.count(b"\n")

    def close(self) -> None:
        if self.target != "-":
            os.close(self._fd)


def relay(pipe: BinaryIO, sink: AuditSink) -> None:
    """Copy ``pipe`` into ``sink`` line-whole until EOF (run in a thread per worker)."""
    fd = pipe.fileno()
    tail = b""
    while True:
        try:
            chunk = os.read(fd, CHUNK)
        except OSError:
            chunk = b""
        if not chunk:
            break
        cut = chunk.rfind(b"\n")
        if cut < 0:
            tail += chunk
            continue
        sink.write(tail + chunk[: cut + 1])
        tail = chunk[cut + 1 :]
    if tail:
        sink.write(tail + b"\n")
    pipe.close()
