"""Graceful stop on SIGINT/SIGTERM: the first asks for a safe stop, the second stops at once."""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType
from typing import Any

log = logging.getLogger("pebble_migrate")

HANDLED = (signal.SIGINT, signal.SIGTERM)


class HardStop(BaseException):
    """Raised from the handler on the second signal; no further write happens."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class SignalGuard:
    """Install graceful handlers for the duration of a run (main thread only)."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.first = 0
        self.second = 0
        self._previous: dict[int, Any] = {}
        self._saved: dict[int, Any] = {}

    def __enter__(self) -> SignalGuard:
        if self.enabled:
            for signum in HANDLED:
                self._previous[signum] = signal.signal(signum, self._handle)
            self._saved = dict(self._previous)
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()

    def restore(self) -> None:
        """Put back the handlers that were installed before the run."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def previous_handler(self, signum: int) -> Any:
        """Return the handler that was in place before the run for `signum`."""
        return self._saved.get(signum)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.first:
            self.second = signum
            raise HardStop(signum)
        self.first = signum
        log.warning(
            "%s received: finishing the current chunk, then stopping "
            "(send it again to stop at once).",
            signal.Signals(signum).name,
        )

    def interrupted(self) -> int:
        """Return the first signal received, or 0."""
        return self.first
