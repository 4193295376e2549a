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

    def command(self, line: str) -> str:
        """One monitor command; what the monitor answered."""
        self.s.sendall(line.encode() + b"\n")
        return self._read_until(b"(qemu) ").decode(errors="replace")

    def screendump(self, out: Path) -> tuple[int, int, bytes]:
        """The VGA screen as QEMU renders it (``screendump``, a PPM): width, height, RGB."""
        out.unlink(missing_ok=True)
        said = self.command(f"screendump {out}")
        if b"rror" in said.encode():
            raise AssertionError(f"QEMU screendump failed: {said!r}")
        return read_ppm(out.read_bytes())

    def close(self) -> None:
        self.s.close()


def read_ppm(data: bytes) -> tuple[int, int, bytes]:
    """A binary PPM (P6, maxval 255): width, height, RGB bytes."""
    fields: list[bytes] = []
    pos = 0
    while len(fields) < 4:
        while data[pos:pos + 1].isspace():
            pos += 1
        end = pos
        while not data[end:end + 1].isspace():
            end += 1
        fields.append(data[pos:end])
        pos = end
    if fields[0] != b"P6" or fields[3] != b"255":
        raise AssertionError(f"not a P6 PPM with maxval 255: {data[:20]!r}")
    w, h = int(fields[1]), int(fields[2])
    return w, h, data[pos + 1:pos + 1 + 3 * w * h]


def psf_glyphs(data: bytes) -> dict[str, list[int]]:
    """A PSF1 or PSF2 font's glyphs by character (from its Unicode table): each a list of
    rows, one int a row, the leftmost pixel the highest of ``width`` bits."""
    import struct

    if data[:2] == b"\x36\x04":
        mode, height = data[2], data[3]
        count, width, size, off = (512 if mode & 1 else 256), 8, height, 4
        table: list[list[str]] = []
        pos = off + count * size
        for _ in range(count):
            chars = []
            while True:
                (u,) = struct.unpack_from("<H", data, pos)
                pos += 2
                if u == 0xFFFF:
                    break
                if u != 0xFFFE:
                    chars.append(chr(u))
            table.append(chars)
    elif data[:4] == b"\x72\xb5\x4a\x86":
        _v, off, flags, count, size, height, width = struct.unpack_from("<7I", data, 4)
        table = []
        pos = off + count * size
        for _ in range(count):
            end = data.index(b"\xff", pos)
            seq = data[pos:end].split(b"\xfe")[0]
            table.append(list(seq.decode("utf-8", "replace")))
            pos = end + 1
    else:
        raise AssertionError(f"not a PSF font: {data[:4]!r}")
    stride = (width + 7) // 8
    out: dict[str, list[int]] = {}
    for i, chars in enumerate(table):
        g = data[off + i * size:off + (i + 1) * size]
        rows = [int.from_bytes(g[r * stride:(r + 1) * stride], "big") >> (stride * 8 - width)
                for r in range(height)]
        for c in chars:
            out.setdefault(c, rows)
    return out


def screen_cells(screen: tuple[int, int, bytes], row: int, n: int, height: int = 16,
                 width: int = 8) -> list[list[int]]:
    """The first ``n`` character cells of text row ``row`` as pixel rows (lit = 1), ``width``
    pixels of each: VGA text mode draws 80 columns 9 pixels wide (720 pixels), a frame buffer
    console 8."""
    w, h, rgb = screen
    cell_w = 9 if w == 720 else 8
    cells = []
    for col in range(n):
        rows = []
        for y in range(row * height, (row + 1) * height):
            bits = 0
            for x in range(col * cell_w, col * cell_w + width):
                p = 3 * (y * w + x)
                bits = bits << 1 | (sum(rgb[p:p + 3]) > 3 * 96)
            rows.append(bits)
        cells.append(rows)
    return cells
