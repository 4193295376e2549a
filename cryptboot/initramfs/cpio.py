"""A reproducible ``newc`` cpio writer (the format the kernel unpacks into the initramfs).

Same entries, same bytes: entries are written sorted by path with parents first, owned by
root, with one fixed mtime (``SOURCE_DATE_EPOCH``), inode numbers counted from 1, nlink 1
(2 for directories), no device numbers except for device nodes.
"""

from __future__ import annotations

import stat
from collections.abc import Iterable
from dataclasses import dataclass
from typing import BinaryIO

MAGIC = b"070701"
TRAILER = "TRAILER!!!"


@dataclass(frozen=True)
class Entry:
    """One archive member. ``path`` is relative (no leading slash); ``mode`` includes the type."""

    path: str
    mode: int
    data: bytes = b""              # file contents, or the target of a symlink
    rdev: tuple[int, int] = (0, 0)  # (major, minor) of a device node

    @staticmethod
    def directory(path: str, perm: int = 0o755) -> Entry:
        return Entry(path, stat.S_IFDIR | perm)

    @staticmethod
    def file(path: str, data: bytes, perm: int = 0o644) -> Entry:
        return Entry(path, stat.S_IFREG | perm, data)

    @staticmethod
    def symlink(path: str, target: str) -> Entry:
        return Entry(path, stat.S_IFLNK | 0o777, target.encode())

    @staticmethod
    def chardev(path: str, major: int, minor: int, perm: int = 0o600) -> Entry:
        return Entry(path, stat.S_IFCHR | perm, b"", (major, minor))


def _pad(n: int) -> bytes:
    return b"\0" * (-n % 4)


def _header(ino: int, mode: int, nlink: int, mtime: int, size: int,
            rdev: tuple[int, int], namesize: int) -> bytes:
    fields = (ino, mode, 0, 0, nlink, mtime, size, 0, 0, rdev[0], rdev[1], namesize, 0)
    return MAGIC + b"".join(b"%08X" % v for v in fields)


def sort_key(path: str) -> tuple[str, ...]:
    """Parents before children, then by name: ``a``, ``a/b``, ``a/b/c``, ``a.txt``."""
    return tuple(path.split("/"))


def write(out: BinaryIO, entries: Iterable[Entry], mtime: int) -> int:
    """Write ``entries`` (sorted here) and the trailer; returns the number of bytes written."""
    total = 0
    ino = 0
    for e in sorted(entries, key=lambda e: sort_key(e.path)):
        ino += 1
        name = e.path.encode() + b"\0"
        nlink = 2 if stat.S_ISDIR(e.mode) else 1
        head = _header(ino, e.mode, nlink, mtime, len(e.data), e.rdev, len(name))
        chunk = head + name + _pad(len(head) + len(name)) + e.data + _pad(len(e.data))
        out.write(chunk)
        total += len(chunk)
    name = TRAILER.encode() + b"\0"
    head = _header(0, 0, 1, 0, 0, (0, 0), len(name))
    chunk = head + name + _pad(len(head) + len(name))
    out.write(chunk)
    total += len(chunk)
    return total


def read(data: bytes) -> list[Entry]:
    """Parse a ``newc`` archive (uncompressed): for tests and ``--list``."""
    entries: list[Entry] = []
    pos = 0
    while pos + 110 <= len(data):
        if data[pos:pos + 6] not in (b"070701", b"070702"):
            raise ValueError(f"bad cpio magic at offset {pos}")
        f = [int(data[pos + 6 + 8 * i:pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, rmaj, rmin, namesize = f[1], f[6], f[9], f[10], f[11]
        name = data[pos + 110:pos + 110 + namesize - 1].decode()
        pos += 110 + namesize
        pos += -pos % 4
        body = data[pos:pos + size]
        pos += size
        pos += -pos % 4
        if name == TRAILER:
            break
        entries.append(Entry(name, mode, body, (rmaj, rmin)))
    return entries
