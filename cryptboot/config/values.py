"""Small value parsers shared by the command line and crypttab readers.

Each one accepts exactly the documented forms and raises :class:`ConfigError` naming where the
value came from, what was expected and what was found, so a typo never becomes a silent default.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cryptboot.errors import ConfigError


@dataclass(frozen=True)
class Where:
    """A place in the input: ``file`` and, when known, ``line``; ``param`` names a cmdline word."""

    file: str
    line: int | None = None

    def __str__(self) -> str:
        return f"{self.file}:{self.line}" if self.line is not None else self.file

    def error(self, message: str, hint: str | None = None) -> ConfigError:
        return ConfigError(message, file=self.file, line=self.line, hint=hint)


_TRUE = frozenset({"1", "yes", "y", "true", "t", "on"})
_FALSE = frozenset({"0", "no", "n", "false", "f", "off"})


def parse_bool(text: str, where: Where, what: str) -> bool:
    """systemd/dracut booleans: 1/yes/true/on and 0/no/false/off (any case)."""
    low = text.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise where.error(f"{what}: expected a boolean (1/yes/true/on or 0/no/false/off), "
                      f"found {text!r}")


_UINT = re.compile(r"[0-9]+", re.ASCII)


def parse_uint(text: str, where: Where, what: str) -> int:
    """A non-negative decimal integer (ASCII digits only)."""
    if not _UINT.fullmatch(text):
        raise where.error(f"{what}: expected a non-negative whole number, found {text!r}")
    return int(text)


# systemd.time(7) units, in seconds
_UNITS: dict[str, float] = {
    "": 1.0, "s": 1.0, "sec": 1.0, "second": 1.0, "seconds": 1.0,
    "us": 1e-6, "usec": 1e-6, "µs": 1e-6,
    "ms": 1e-3, "msec": 1e-3,
    "m": 60.0, "min": 60.0, "minute": 60.0, "minutes": 60.0,
    "h": 3600.0, "hr": 3600.0, "hour": 3600.0, "hours": 3600.0,
    "d": 86400.0, "day": 86400.0, "days": 86400.0,
    "w": 604800.0, "week": 604800.0, "weeks": 604800.0,
}
_SPAN_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([a-zµ]*)\s*", re.ASCII | re.IGNORECASE)


def parse_seconds(text: str, where: Where, what: str) -> float:
    """A time span: plain seconds (dracut) or systemd units (``10s``, ``1min30s``, ``500ms``).

    ``infinity`` and ``0`` both mean "forever" and give ``0.0``.
    """
    s = text.strip()
    if s.lower() == "infinity":
        return 0.0
    total = 0.0
    pos = 0
    while pos < len(s):
        m = _SPAN_PART.match(s, pos)
        if m is None or m.end() == pos or m.group(2).lower() not in _UNITS:
            total = -1.0
            break
        total += float(m.group(1)) * _UNITS[m.group(2).lower()]
        pos = m.end()
    if not s or total < 0:
        raise where.error(f"{what}: expected a time span in seconds (e.g. 30, 10s, 1min30s, "
                          f"500ms or infinity), found {text!r}")
    return total
