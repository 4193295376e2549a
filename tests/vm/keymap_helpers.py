"""Typing on the VM's keyboard: QEMU's human monitor on a unix socket, ``sendkey`` with the
physical key names (QEMU's qcodes, US key positions), as a person presses them.

The VM gets a VGA device and no display (``-vga std -display none``), so the Linux console has
a virtual terminal; the keys reach it through the emulated PS/2 keyboard, never the serial line.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

# Key presses, by the physical key (its US name in QEMU), for what a user of each layout types.
# German QWERTZ: Z is where US has Y, ü where US has [, - where US has /.
DE_PASSPHRASE = "Zürich-yz"
DE_KEYS = ["shift-y", "bracket_left", "r", "i", "c", "h", "slash", "z", "y"]
# the same key presses on the US layout give "Y[rich/zy"
# French AZERTY: à é ç and - on the digit row (0 2 9 6), a/q and z/w swapped.
FR_PASSPHRASE = "àéç-azqw"
FR_KEYS = ["0", "2", "9", "6", "q", "w", "a", "z"]
# ASCII, typed on the US layout (a keymap that failed to load leaves the kernel's US one)
US_PASSPHRASE = "us-typed-1"
US_KEYS = ["u", "s", "minus", "t", "y", "p", "e", "d", "minus", "1"]


def qemu_args(sock: Path) -> list[str]:
    """A VGA device without a display window, and the monitor on ``sock``."""
    return ["-vga", "std", "-display", "none", "-monitor", f"unix:{sock},server,nowait"]


CONSOLES = "console=tty0 console=ttyS0"  # the prompt on the VT and on serial at once


class Keyboard:
    """QEMU's monitor: ``press`` sends one ``sendkey`` per key."""

    def __init__(self, sock: Path, timeout: float = 30) -> None:
        end = time.monotonic() + timeout
        while True:
            try:
                self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.s.connect(str(sock))
                break
            except OSError:
                self.s.close()
                if time.monotonic() > end:
                    raise
                time.sleep(0.2)
        self.s.settimeout(10)
        self._read_until(b"(qemu) ")

    def _read_until(self, marker: bytes) -> bytes:
        data = b""
        while marker not in data:
            chunk = self.s.recv(4096)
            if not chunk:
                raise ConnectionError(f"QEMU monitor closed; it said {data!r}")
            data += chunk
        return data

    def press(self, keys: list[str], enter: bool = True) -> None:
        for key in [*keys, "ret"] if enter else keys:
            self.s.sendall(f"sendkey {key}\n".encode())
            said = self._read_until(b"(qemu) ")
            if b"rror" in said or b"nknown" in said:
                raise AssertionError(f"QEMU refused sendkey {key}: {said!r}")
            time.sleep(0.15)  # sendkey holds the key 100 ms; let it go up first

    def close(self) -> None:
        self.s.close()
