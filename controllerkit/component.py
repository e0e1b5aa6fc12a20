"""The running part every controller's ``main`` shares: signals, the health server, a clean stop.

The initializer and podwatch each wrote the same block (a stop event set by SIGTERM/SIGINT, a
:class:`~controllerkit.serve.HealthServer` whose port may be taken, waiting, stopping in order);
they now use :class:`Lifecycle`, and :func:`fail` for every start-up error (a JSON log line *and*
one plain line on stderr, so ``kubectl logs`` and a shell user both see why, then the exit code).
"""

from __future__ import annotations

import signal
import sys
import threading
from typing import TYPE_CHECKING, Callable, Optional

if TYPE_CHECKING:
    from controllerkit.serve import HealthServer


def fail(log, prog: str, code: int, event: str, message: str, **fields) -> int:
    """Report a start-up error and return the exit code to ``sys.exit`` with."""
    log.error(event, message=message, **fields)
    print(f"{prog}: {message}", file=sys.stderr, flush=True)
    return code


class StartupError(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


class Lifecycle:
    """``life = Lifecycle(log)``; ``life.serve_health(...)``; ``life.on_stop(fn)``; ``life.wait()``.

    SIGTERM and SIGINT set ``life.stop`` (logged as ``signal_event`` with ``signal_fields``) and run the
    ``on_stop`` callbacks at once (podwatch stops its sync loop there, leaving the rules in place);
    :meth:`shutdown` runs the remaining ones and stops the health server.
    """

    def __init__(
        self, log, *, signal_event: str = "shutdown_signal", signal_fields: dict | None = None, install_signals: bool = True
    ):
        self.log = log
        self.stop = threading.Event()
        self.health: Optional["HealthServer"] = None
        self._on_signal: list[Callable[[], None]] = []
        self._signal_event = signal_event
        self._signal_fields = signal_fields or {}
        if install_signals:
            signal.signal(signal.SIGTERM, self._handle)
            signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum, _frame) -> None:
        self.log.info(self._signal_event, signal=signal.Signals(signum).name, **self._signal_fields)
        self.stop.set()
        for fn in self._on_signal:
            fn()

    def on_signal(self, fn: Callable[[], None]) -> None:
        """Also run ``fn`` from the signal handler (it must be quick and thread-safe)."""
        self._on_signal.append(fn)

    def serve_health(self, port: int, host: str, ready, *, exit_code: int):
        """Start ``/metrics``, ``/healthz`` and ``/readyz`` (port 0 in the flag = off, returns None).
        A port that cannot be bound raises :class:`StartupError` with ``exit_code``."""
        if not port:
            return None
        from controllerkit.serve import HealthServer

        try:
            health = HealthServer(port, host=host, ready=ready).start()
        except OSError as exc:
            raise StartupError(exit_code, f"cannot serve metrics on port {port}: {exc}") from None
        self.health = health
        self.log.info("serving_metrics", port=health.port)
        return health

    def wait(self, poll: float | None = None) -> None:
        """Block until a signal (or ``stop.set()``)."""
        if poll is None:
            self.stop.wait()
        else:
            while not self.stop.wait(poll):
                pass

    def shutdown(self, *stoppers: Callable[[], None]) -> None:
        for fn in stoppers:
            fn()
        if self.health is not None:
            self.health.stop()
            self.health = None
