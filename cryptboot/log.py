"""Logging to the console (stderr) and, when writable, the kernel log (/dev/kmsg).

Deliberately not the ``logging`` module: this runs on every boot and must import fast.
``step()`` logs a step's start, end and duration so ``dmesg`` tells the story of a boot.
"""

from __future__ import annotations

import os
import stat
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

TYPE_CHECKING = False
if TYPE_CHECKING:  # not imported at run time: typing is slow to import
    from typing import TextIO

DEBUG = 10
INFO = 20
WARNING = 30
ERROR = 40

_NAMES = {DEBUG: "debug", INFO: "info", WARNING: "warning", ERROR: "error"}
# syslog priorities for /dev/kmsg: <3> err, <4> warning, <6> info, <7> debug
_KMSG_PRIO = {DEBUG: 7, INFO: 6, WARNING: 4, ERROR: 3}


class _State:
    level = INFO
    kmsg_fd: int | None = None
    kmsg_tried = False
    use_kmsg = False
    stream: TextIO | None = None  # None: whatever sys.stderr is at the time of writing
    console_loglevel = 0  # kmsg messages of a lower priority reach the console through the kernel


_state = _State()


def configure(*, debug: bool = False, kmsg: bool = False) -> None:
    """Set the console level; ``kmsg=True`` also copies messages to /dev/kmsg when possible.

    When our stderr is the kernel console (``/dev/console``, as for PID 1 of an initramfs), the
    kernel itself prints a /dev/kmsg message on every console when its priority is below the
    console log level (``quiet``, ``loglevel=``); such a message is not written a second time.
    """
    _state.level = DEBUG if debug else INFO
    _state.use_kmsg = kmsg
    _state.console_loglevel = _read_console_loglevel() if kmsg and _stderr_is_console() else 0


def _stderr_is_console() -> bool:
    try:
        st = os.fstat(2)
    except OSError:
        return False
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(5, 1)


def _read_console_loglevel() -> int:
    """The kernel's current console log level (first field of /proc/sys/kernel/printk)."""
    try:
        with open("/proc/sys/kernel/printk") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def is_debug() -> bool:
    return _state.level <= DEBUG


def _kmsg(level: int, line: str) -> bool:
    """Write ``line`` to /dev/kmsg; true when the kernel will also print it on the console."""
    if not _state.use_kmsg:
        return False
    if not _state.kmsg_tried:
        try:
            _state.kmsg_fd = os.open("/dev/kmsg", os.O_WRONLY | os.O_CLOEXEC | os.O_NOCTTY)
            _state.kmsg_tried = True
        except FileNotFoundError:
            return False  # /dev not mounted yet: try again with the next message
        except OSError:
            _state.kmsg_tried = True
            _state.kmsg_fd = None
    if _state.kmsg_fd is None:
        return False
    prio = _KMSG_PRIO[level]
    try:
        os.write(_state.kmsg_fd, f"<{prio}>{line}\n".encode())
    except OSError:
        return False
    return prio < _state.console_loglevel


def log(level: int, text: str, *, console: bool = True) -> None:
    """Log ``text``; ``console=False``: only to /dev/kmsg (the console shows it another way,
    e.g. on an open prompt)."""
    line = ("cryptboot: " if level <= INFO else f"cryptboot: {_NAMES[level]}: ") + text
    if _kmsg(level, line) or level < _state.level or not console:
        return
    try:
        stream = _state.stream or sys.stderr
        stream.write(line + "\n")
        stream.flush()
    except (OSError, ValueError):
        pass


def debug(text: str) -> None:
    log(DEBUG, text)


def info(text: str) -> None:
    log(INFO, text)


def warning(text: str) -> None:
    log(WARNING, text)


def error(text: str) -> None:
    log(ERROR, text)


@contextmanager
def step(name: str) -> Iterator[None]:
    """Log ``name`` starting, then done (or failed) with its duration in seconds."""
    t0 = time.monotonic()
    log(INFO, f"{name} ...")
    try:
        yield
    except BaseException:
        log(INFO, f"{name}: failed after {time.monotonic() - t0:.3f}s")
        raise
    log(INFO, f"{name}: done in {time.monotonic() - t0:.3f}s")


def report(e: BaseException, debug_hint: str) -> None:
    """An error at the edge: its traceback with debug on, then its one line and hint
    (:func:`cryptboot.errors.render`)."""
    from cryptboot.errors import render

    if is_debug():
        import traceback

        traceback.print_exception(e)
    message, hint = render(e, debug_hint)
    error(message)
    if hint:
        info(f"hint: {hint}")
