"""Console + /dev/kmsg logging: one copy per message on the console, steps timed."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator

import pytest

from cryptboot import log


@pytest.fixture
def kmsg(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[io.StringIO, int]]:
    """Console output in a buffer, /dev/kmsg replaced by a pipe; yields (console, read fd)."""
    r, w = os.pipe()
    console = io.StringIO()
    monkeypatch.setattr(log._state, "stream", console)
    monkeypatch.setattr(log._state, "use_kmsg", True)
    monkeypatch.setattr(log._state, "kmsg_tried", True)
    monkeypatch.setattr(log._state, "kmsg_fd", w)
    monkeypatch.setattr(log._state, "level", log.INFO)
    yield console, r
    os.close(r)
    os.close(w)


def _kmsg_lines(fd: int) -> list[str]:
    os.set_blocking(fd, False)
    try:
        return os.read(fd, 65536).decode().splitlines()
    except BlockingIOError:
        return []


def test_every_message_reaches_kmsg_with_its_priority(kmsg: tuple[io.StringIO, int]) -> None:
    console, fd = kmsg
    log.debug("d")
    log.info("i")
    log.warning("w")
    log.error("e")
    assert _kmsg_lines(fd) == ["<7>cryptboot: d", "<6>cryptboot: i", "<4>cryptboot: warning: w",
                               "<3>cryptboot: error: e"]
    # not on a kernel console: the console gets everything at or above the level
    assert console.getvalue().splitlines() == ["cryptboot: i", "cryptboot: warning: w",
                                               "cryptboot: error: e"]


def test_what_the_kernel_echoes_is_not_written_twice(kmsg: tuple[io.StringIO, int],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``quiet`` (console log level 4) the kernel prints priorities 0-3 on the console."""
    console, fd = kmsg
    monkeypatch.setattr(log._state, "console_loglevel", 4)
    log.info("i")
    log.error("e")
    assert console.getvalue().splitlines() == ["cryptboot: i"]
    assert _kmsg_lines(fd) == ["<6>cryptboot: i", "<3>cryptboot: error: e"]
    monkeypatch.setattr(log._state, "console_loglevel", 7)   # no quiet: the kernel echoes info
    log.info("j")
    assert console.getvalue().splitlines() == ["cryptboot: i"]


def test_a_failed_kmsg_write_falls_back_to_the_console(kmsg: tuple[io.StringIO, int],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    console, _ = kmsg
    monkeypatch.setattr(log._state, "console_loglevel", 7)
    monkeypatch.setattr(log._state, "kmsg_fd", None)
    log.info("i")
    assert console.getvalue() == "cryptboot: i\n"


def test_configure_echo_detection_off_when_stderr_is_not_the_console() -> None:
    old = (log._state.level, log._state.use_kmsg, log._state.console_loglevel)
    try:
        log.configure(kmsg=True)        # pytest's stderr is no /dev/console
        assert log._state.console_loglevel == 0
    finally:
        log._state.level, log._state.use_kmsg, log._state.console_loglevel = old


def test_step_logs_start_end_and_duration(kmsg: tuple[io.StringIO, int]) -> None:
    console, _ = kmsg
    with log.step("unlock root"):
        pass
    with pytest.raises(RuntimeError), log.step("mount"):
        raise RuntimeError
    lines = console.getvalue().splitlines()
    assert lines[0] == "cryptboot: unlock root ..."
    assert lines[1].startswith("cryptboot: unlock root: done in ") and lines[1].endswith("s")
    assert lines[3].startswith("cryptboot: mount: failed after ")
