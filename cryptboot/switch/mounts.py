"""Reading /proc/self/mountinfo: which mounts exist, their parents and propagation.

Used to explain a kernel refusal (which mount is shared, which path is not a mount point) and
to list the mounts left below the old root so they can be detached after a switch.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NamedTuple
else:  # typing costs ~35 ms per boot under emulation: see cryptboot.record
    from cryptboot.record import Record as NamedTuple

MOUNTINFO = "/proc/self/mountinfo"


class Mount(NamedTuple):
    """One line of mountinfo (see proc(5)). A NamedTuple (immutable) rather than a frozen
    dataclass: ``dataclasses`` costs milliseconds of import time on every boot."""

    mount_id: int
    parent_id: int
    major_minor: str
    root: str
    mount_point: str
    optional: tuple[str, ...]
    fstype: str
    source: str

    @property
    def shared(self) -> bool:
        return any(f.startswith("shared:") for f in self.optional)


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as \\ooo (octal)."""
    if "\\" not in field:
        return field
    out = []
    i = 0
    while i < len(field):
        if field[i] == "\\" and i + 4 <= len(field) and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse(text: str) -> list[Mount]:
    """Parse mountinfo text; malformed lines are skipped (the kernel writes this file)."""
    mounts = []
    for line in text.splitlines():
        fields = line.split()
        try:
            sep = fields.index("-", 6)
            mounts.append(Mount(
                mount_id=int(fields[0]), parent_id=int(fields[1]), major_minor=fields[2],
                root=_unescape(fields[3]), mount_point=_unescape(fields[4]),
                optional=tuple(fields[6:sep]), fstype=fields[sep + 1],
                source=_unescape(fields[sep + 2]) if len(fields) > sep + 2 else "",
            ))
        except (ValueError, IndexError):
            continue
    return mounts


def read(path: str = MOUNTINFO) -> list[Mount] | None:
    """The mount table, or None when /proc is not mounted."""
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            return parse(f.read())
    except OSError:
        return None


def is_under(path: str, top: str) -> bool:
    """Whether ``path`` is ``top`` or below it (both normalised absolute paths)."""
    if top == "/":
        return True
    return path == top or path.startswith(top.rstrip("/") + "/")


def mount_of(mounts: list[Mount], path: str) -> Mount | None:
    """The topmost mount whose mount point is the longest prefix of ``path``."""
    best: Mount | None = None
    for m in mounts:
        if is_under(path, m.mount_point) and (
            best is None or len(m.mount_point) >= len(best.mount_point)
        ):
            best = m
    return best


def by_id(mounts: list[Mount], mount_id: int) -> Mount | None:
    for m in mounts:
        if m.mount_id == mount_id:
            return m
    return None


def submounts_outside(mounts: list[Mount], keep: tuple[str, ...]) -> list[str]:
    """Mount points other than ``/`` that are not at or below any path in ``keep``,
    deepest first (the order in which they can be detached)."""
    points = {
        m.mount_point for m in mounts
        if m.mount_point != "/" and not any(is_under(m.mount_point, k) for k in keep)
    }
    return sorted(points, key=lambda p: (-p.count("/"), p))


def realpath_abs(path: str) -> str:
    return os.path.realpath(os.path.abspath(path))
