"""Time that does not run while a passphrase prompt is open.

Device waits count only time without a prompt on screen (:func:`prompt_open`), so a slow typist
never turns into "device not found". Process-wide: every thread's deadlines share one clock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager


class _PauseClock:
    """Total time spent with at least one passphrase prompt open (process-wide)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._depth = 0
        self._since = 0.0
        self._total = 0.0

    def enter(self) -> None:
        with self._lock:
            if self._depth == 0:
                self._since = time.monotonic()
            self._depth += 1

    def leave(self) -> None:
        with self._lock:
            self._depth -= 1
            if self._depth == 0:
                self._total += time.monotonic() - self._since

    def total(self) -> float:
        with self._lock:
            extra = time.monotonic() - self._since if self._depth else 0.0
            return self._total + extra

    def is_paused(self) -> bool:
        with self._lock:
            return self._depth > 0


_PAUSE = _PauseClock()


@contextmanager
def prompt_open() -> Iterator[None]:
    """Hold every device-wait deadline while a passphrase prompt is on screen."""
    _PAUSE.enter()
    try:
        yield
    finally:
        _PAUSE.leave()


class Deadline:
    """A timeout that only counts time without a prompt open; ``None`` or 0 s means forever."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds if seconds else None
        self._start = time.monotonic()
        self._paused_at_start = _PAUSE.total()

    def waited(self) -> float:
        """Seconds counted so far (wall time minus time with a prompt open)."""
        paused = _PAUSE.total() - self._paused_at_start
        return max(0.0, time.monotonic() - self._start - paused)

    def remaining(self) -> float | None:
        """Seconds left, ``None`` for forever; while a prompt is open, never below 0.1 s."""
        if self.seconds is None:
            return None
        left = self.seconds - self.waited()
        if _PAUSE.is_paused():
            return max(left, 0.1)
        return left

    def expired(self) -> bool:
        left = self.remaining()
        return left is not None and left <= 0
