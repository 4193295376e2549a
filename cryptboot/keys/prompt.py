"""Ask for a passphrase on every active console at once.

A machine with ``console=tty0 console=ttyS0`` has a screen and a serial line; the user may be at
either, so the prompt goes to all of them (``/sys/class/tty/console/active``). Echo is off; each
console keeps its own line (Backspace, Ctrl-U); the first console where Enter is pressed wins and
the others are told. EOF (Ctrl-D on an empty line, or a console going away) and Ctrl-C count as a
failed try; so does the per-prompt timeout.

The passphrase is returned as bytes, without the newline, and never logged.
"""

from __future__ import annotations

import os
import select
import termios
import time
from collections.abc import Sequence

from cryptboot import log
from cryptboot.config.model import KeyKind
from cryptboot.keys.providers import Provider

TYPE_CHECKING = False
if TYPE_CHECKING:  # not imported at run time: typing is slow to import
    from typing import Any

    from cryptboot.keys import Key, KeyRequest
    from cryptboot.keys.remote import RemoteConsoles

ACTIVE = "/sys/class/tty/console/active"
CMDLINE = "/proc/cmdline"

ENTER = (0x0D, 0x0A)
BACKSPACE = (0x7F, 0x08)
CTRL_C, CTRL_D, CTRL_U, ESC = 0x03, 0x04, 0x15, 0x1B

# Remote consoles (issue 14): SSH sessions connected to cryptboot.keys.remote's socket, asked
# like every other console; set by cryptboot.ssh. ``_last`` names the console of the last answer.
remote: RemoteConsoles | None = None
remote_pending = False  # cryptboot.ssh is opening the socket in a thread: a prompt looks for it
_last = ""
REMOTE_LOOK_MS = 200


def prompt_text(name: str, device: str) -> str:
    """The prompt line: volume name and device, so the user knows which disk is asked for."""
    return f"Please enter passphrase for disk {name} ({device}): "


def active_consoles(active_file: str = ACTIVE, cmdline_file: str = CMDLINE) -> list[str]:
    """Device paths of the consoles to ask on: the kernel's active consoles, plus every
    ``console=`` of the command line.

    The kernel enables one console per driver: with ``console=ttyS0 console=ttyS1`` only one of
    the two serial ports becomes a kernel console, yet the user may sit at either. ``tty0``
    resolves to the foreground VT.
    """
    names: list[str] = []
    try:
        with open(active_file) as f:
            names += f.read().split()
    except OSError:
        pass
    try:
        with open(cmdline_file) as f:
            words = f.read().split()
    except OSError:
        words = []
    for word in words:
        if word == "--":
            break
        if word.startswith("console="):
            name = word[len("console="):].split(",", 1)[0]
            if name and "/" not in name and os.path.exists("/dev/" + name):
                names.append(name)
    paths: list[str] = []
    for name in names:
        if name == "tty0":
            try:
                with open("/sys/class/tty/tty0/active") as f:
                    name = f.read().strip() or "tty1"
            except OSError:
                name = "tty1"
        path = "/dev/" + name
        if path not in paths:
            paths.append(path)
    return paths or ["/dev/console"]


class Answer:
    """What one prompt produced: the passphrase, or ``None`` with the reason (eof,
    interrupt, timeout, no-console)."""

    __slots__ = ("passphrase", "console", "reason")

    def __init__(self, passphrase: bytes | None, console: str | None = None,
                 reason: str = "ok") -> None:
        self.passphrase = passphrase
        self.console = console
        self.reason = reason


class _Console:
    def __init__(self, path: str, fd: int) -> None:
        self.path = path
        self.fd = fd
        self.buf = bytearray()
        self.in_escape = False
        self.saved: list[Any] | None = None
        self.is_tty = os.isatty(fd)
        self.remote = False  # a session of cryptboot.keys.remote: stays open between prompts

    @property
    def label(self) -> str:
        return os.path.basename(self.path)

    def raw_mode(self) -> None:
        if not self.is_tty:
            return
        self.saved = termios.tcgetattr(self.fd)
        attrs = termios.tcgetattr(self.fd)
        # lflag: no echo, byte at a time, Ctrl-C/Ctrl-D as plain bytes that we interpret
        attrs[3] &= ~(termios.ECHO | termios.ECHONL | termios.ICANON | termios.ISIG
                      | termios.IEXTEN)
        attrs[2] |= termios.CLOCAL  # cflag: ignore the modem lines (no carrier = no hang-up)
        cc = attrs[6]
        cc[termios.VMIN] = 1
        cc[termios.VTIME] = 0
        termios.tcsetattr(self.fd, termios.TCSANOW, attrs)
        # Stale input (a newline left over from a previous answer) must not become an answer.
        termios.tcflush(self.fd, termios.TCIFLUSH)

    def restore(self) -> None:
        if self.saved is not None:
            try:
                termios.tcsetattr(self.fd, termios.TCSADRAIN, self.saved)
            except termios.error:
                pass

    def write(self, text: str) -> None:
        try:
            os.write(self.fd, text.encode())
        except OSError:
            pass

    def feed(self, data: bytes) -> str | None:
        """Process typed bytes; returns ``enter``, ``eof`` or ``interrupt`` when decided."""
        for b in data:
            if self.in_escape:
                # skip an escape sequence (arrow keys): ESC [ params final-byte
                if b != ord("[") and 0x40 <= b <= 0x7E:
                    self.in_escape = False
                continue
            if b in ENTER:
                return "enter"
            if b in BACKSPACE:
                while self.buf:
                    last = self.buf.pop()
                    if last & 0xC0 != 0x80:  # stop after removing a UTF-8 start byte
                        break
            elif b == CTRL_U:
                self.buf.clear()
            elif b == CTRL_C:
                return "interrupt"
            elif b == CTRL_D:
                if not self.buf:
                    return "eof"
            elif b == ESC:
                self.in_escape = True
            elif b < 0x20:
                continue
            else:
                self.buf.append(b)
        return None

    def wipe(self) -> None:
        for i in range(len(self.buf)):
            self.buf[i] = 0
        self.buf.clear()


def _open(path: str) -> _Console | None:
    try:
        # O_NONBLOCK: a serial port without carrier would block open() (and writes, under
        # flow control) forever, and with it the prompt on every other console
        fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as e:
        log.debug(f"prompt: cannot open {path}: {e.strerror}")
        return None
    return _Console(path, fd)


class Control:
    """How another thread talks to an open prompt: :meth:`notice` shows a line on every
    console and asks again (a racing key source failed), :meth:`withdraw` closes the prompt
    with a line (another source opened the volume). A pipe wakes the prompt's poll."""

    def __init__(self) -> None:
        import threading

        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        self._lock = threading.Lock()
        self._messages: list[tuple[str, str]] = []

    def fileno(self) -> int:
        return self._r

    def _post(self, kind: str, text: str) -> None:
        with self._lock:
            self._messages.append((kind, text))
            if self._w >= 0:
                os.write(self._w, b".")

    def notice(self, text: str) -> None:
        self._post("notice", text)

    def withdraw(self, text: str) -> None:
        self._post("withdraw", text)

    def take(self) -> list[tuple[str, str]]:
        with self._lock:
            try:
                while os.read(self._r, 512):
                    pass
            except OSError:
                pass
            taken, self._messages = self._messages, []
        return taken

    def withdrawn(self) -> str | None:
        """The withdrawal's line if one was posted (it stays posted)."""
        with self._lock:
            return next((t for k, t in self._messages if k == "withdraw"), None)

    def close(self) -> None:
        with self._lock:
            for fd in (self._r, self._w):
                if fd >= 0:
                    os.close(fd)
            self._r = self._w = -1


def ask(text: str, consoles: Sequence[str], timeout: float | None = None,
        control: Control | None = None) -> Answer:
    """Show ``text`` on every console in ``consoles`` and return the first answer.

    ``timeout`` in seconds (``None`` or 0: wait forever); ``control``: other threads may show
    notices on the prompt or withdraw it (the answer's reason is then ``withdrawn``).
    """
    opened = [c for c in (_open(p) for p in consoles) if c is not None]
    rem = remote
    if not opened and rem is None:
        log.error(f"no console to ask for a passphrase on (tried {', '.join(consoles)})")
        return Answer(None, None, "no-console")
    try:
        for c in opened:
            try:
                c.raw_mode()
            except termios.error as e:
                log.debug(f"prompt: {c.path}: cannot set terminal mode: {e}")
            c.write(text)
        if rem is not None:
            rem.accept()
            for c in rem.clients:
                c.write("\r\n" + text)
        return _loop(opened + (list(rem.clients) if rem else []), timeout, text, control, rem)
    finally:
        for c in opened:
            c.wipe()
            c.restore()
            os.close(c.fd)
        for c in remote.clients if remote else ():
            c.wipe()


def unlocked(name: str) -> None:
    """The last answer opened ``name``: tell the remote sessions (the others were only told
    where it was typed, not whether it was right)."""
    if remote is None:
        return
    for c in list(remote.clients):
        if c.path == _last:
            c.write(f"\r\n{name}: unlocked\r\n")
        else:
            c.write(f"\r\n{name} was unlocked elsewhere (passphrase entered on "
                    f"{os.path.basename(_last)})\r\n")


def tell(line: str) -> None:
    """A line for the remote sessions only (the consoles have the log)."""
    if remote is not None:
        remote.say(line)


def _loop(consoles: list[_Console], timeout: float | None, text: str = "",
          control: Control | None = None, rem: RemoteConsoles | None = None) -> Answer:
    global _last
    poller = select.poll()
    by_fd = {c.fd: c for c in consoles}
    for fd in by_fd:
        poller.register(fd, select.POLLIN)
    if control is not None:
        poller.register(control.fileno(), select.POLLIN)
    if rem is not None:
        poller.register(rem.fd, select.POLLIN)
    end = time.monotonic() + timeout if timeout else None
    while by_fd or rem is not None:
        wait_ms: int | None = None
        if end is not None:
            left = end - time.monotonic()
            if left <= 0:
                for c in by_fd.values():
                    c.write(f"\r\n(no passphrase entered within {timeout:g} s)\r\n")
                return Answer(None, None, "timeout")
            wait_ms = max(1, int(left * 1000))
        looking = rem is None and remote_pending
        if looking:  # the SSH socket is being opened: look for it a few times a second
            wait_ms = REMOTE_LOOK_MS if wait_ms is None else min(wait_ms, REMOTE_LOOK_MS)
        events = poller.poll(wait_ms)
        if looking and remote is not None:  # it is open: its sessions become consoles
            rem = remote
            poller.register(rem.fd, select.POLLIN)
            for c in rem.accept():
                by_fd[c.fd] = c
                poller.register(c.fd, select.POLLIN)
                c.write(text)
        for fd, ev in events:
            if control is not None and fd == control.fileno():
                for kind, line in control.take():
                    if kind == "withdraw":
                        for c in by_fd.values():
                            c.write(f"\r\n({line})\r\n")
                        return Answer(None, None, "withdrawn")
                    for c in by_fd.values():  # say it, then ask again; typing goes on
                        c.write(f"\r\n{line}\r\n{text}")
                continue
            if rem is not None and fd == rem.fd:  # a new SSH session: one more console
                for c in rem.accept():
                    by_fd[c.fd] = c
                    poller.register(c.fd, select.POLLIN)
                    c.write(text)
                continue
            if fd not in by_fd:
                continue
            c = by_fd[fd]
            data = b""
            if ev & select.POLLIN:
                try:
                    data = os.read(fd, 1024)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
            outcome = c.feed(data) if data else "eof"
            if c.remote and outcome in ("eof", "interrupt"):  # a session left: no try lost
                poller.unregister(fd)
                del by_fd[fd]
                c.write("\r\n(left the prompt)\r\n")
                assert rem is not None
                rem.drop(c)
                continue
            if not data:  # hung up or EOF: this console is gone
                poller.unregister(fd)
                del by_fd[fd]
                if not by_fd and rem is None:
                    return Answer(None, c.path, "eof")
                continue
            if outcome is None:
                continue
            c.write("\r\n")
            _last = c.path
            if outcome == "enter":
                for other in by_fd.values():
                    if other is not c:
                        other.write(f"\r\n(passphrase entered on {c.label})\r\n")
                return Answer(bytes(c.buf), c.path)
            for other in by_fd.values():
                if other is not c:
                    other.write(f"\r\n(prompt cancelled on {c.label})\r\n")
            return Answer(None, c.path, outcome)
    return Answer(None, None, "eof")


# ---------------------------------------------------------------------------------------------
# The prompt as a key provider


_REASONS = {"eof": "no passphrase given (end of input)", "interrupt": "prompt interrupted",
            "no-console": "no console to ask on"}


def _describe_try(n: int, tries: int) -> str:
    return f"try {n} of {tries}" if tries > 0 else f"try {n}"


class _Prompt(Provider):
    """Ask on every console, up to the volume's ``tries`` (0: forever)."""

    name = "prompt"
    interactive = True

    def _ask(self, req: KeyRequest, notice: str) -> tuple[bytes | None, str]:
        from cryptboot.clock import prompt_open

        env, volume = req.env, req.volume
        consoles = list(env.consoles) if env.consoles else active_consoles()
        text = (notice + "\r\n" if notice else "") + prompt_text(volume.name, req.device)
        timeout = volume.options.timeout or None
        control = req.control
        with prompt_open():
            if env.ask is not None:
                answer = env.ask(text, consoles, timeout) if control is None else \
                    env.ask(text, consoles, timeout, control)
            else:
                answer = ask(text, consoles, timeout, control)
        assert isinstance(answer, Answer)
        if answer.reason == "timeout":
            return None, f"no passphrase entered within {timeout:g} s" if timeout else ""
        return answer.passphrase, _REASONS.get(answer.reason, answer.reason)

    def attempt(self, req: KeyRequest) -> str | None:
        from cryptboot.errors import WrongKey
        from cryptboot.keys import Key

        name = req.volume.name
        tries = req.volume.options.tries
        n = getattr(req.race, "tries_used", 0)  # issue 13: TPM2 PINs typed count as tries
        notice = ""
        while tries <= 0 or n < tries:
            if req.cancelled.is_set():
                return None
            n += 1
            passphrase, reason = self._ask(req, notice)
            if reason == "withdrawn":
                return None
            if passphrase is None:
                notice = f"{reason} for {name} ({_describe_try(n, tries)})"
                log.warning(notice)
                if reason == _REASONS["no-console"]:
                    break
                continue
            key: Key = Key(passphrase, KeyKind.PROMPT, "the passphrase typed")
            try:
                req.open(key)
            except WrongKey:
                # said on the log and, at the next prompt, on every console the user may be at
                notice = f"wrong passphrase for {name} ({_describe_try(n, tries)})"
                log.warning(notice)
                continue
            req.env.cache.add(passphrase)
            unlocked(name)  # issue 14: the SSH sessions hear where it was unlocked
            return ""
        req.tried.append(f"{n} passphrase tr{'y' if n == 1 else 'ies'}")
        if tries > 0 and n >= tries:
            log.error(f"{name}: maximum number of tries ({tries}) exceeded")
            tell(f"{name}: maximum number of tries ({tries}) exceeded")
        return None


def provider() -> Provider:
    return _Prompt()
