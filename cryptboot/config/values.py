"""Small value parsers shared by the command line and crypttab readers.

Each one accepts exactly the documented forms and raises :class:`ConfigError` naming where the
value came from, what was expected and what was found, so a typo never becomes a silent default.
"""

from __future__ import annotations

from cryptboot.errors import ConfigError

# Plain classes and string methods instead of dataclasses and regular expressions here and in
# the other parsing modules: this code is imported on every boot, and bench/bench_imports.py
# holds it to a budget.


class Where:
    """A place in the input: ``file`` and, when known, ``line``."""

    __slots__ = ("file", "line")

    def __init__(self, file: str, line: int | None = None) -> None:
        self.file = file
        self.line = line

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Where) and (self.file, self.line) == (other.file, other.line)

    def __hash__(self) -> int:
        return hash((self.file, self.line))

    def __repr__(self) -> str:
        return f"Where({self.file!r}, {self.line!r})"

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


def has_control(text: str) -> bool:
    """Control characters (C0 and DEL) never belong in names, paths or specs."""
    return any(c < " " or c == "\x7f" for c in text)


def is_uint(text: str) -> bool:
    """ASCII decimal digits only (``str.isdigit`` alone also takes other scripts' digits)."""
    return text.isascii() and text.isdigit()


def parse_uint(text: str, where: Where, what: str) -> int:
    """A non-negative decimal integer (ASCII digits only)."""
    if not is_uint(text):
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


def parse_seconds(text: str, where: Where, what: str) -> float:
    """A time span: plain seconds (dracut) or systemd units (``10s``, ``1min30s``, ``500ms``).

    ``infinity`` and ``0`` both mean "forever" and give ``0.0``.
    """
    s = text.strip().lower()
    if s in ("infinity", "0"):
        return 0.0
    total, pos, ok = 0.0, 0, bool(s)
    while ok and pos < len(s):
        start = pos
        while pos < len(s) and (s[pos].isascii() and s[pos].isdigit() or s[pos] == "."):
            pos += 1
        number = s[start:pos]
        while pos < len(s) and s[pos] == " ":
            pos += 1
        ustart = pos
        while pos < len(s) and (s[pos].isascii() and s[pos].isalpha() or s[pos] == "µ"):
            pos += 1
        unit = s[ustart:pos]
        while pos < len(s) and s[pos] == " ":
            pos += 1
        ok = (number.count(".") <= 1 and number.strip(".") == number and number != ""
              and unit in _UNITS)
        if ok:
            total += float(number) * _UNITS[unit]
    if not ok:
        raise where.error(f"{what}: expected a time span in seconds (e.g. 30, 10s, 1min30s, "
                          f"500ms or infinity), found {text!r}")
    return total


_HEXDIGITS = frozenset("0123456789abcdefABCDEF")


def udev_unescape(text: str) -> str:
    r"""Undo udev's ``\xNN`` encoding (``ID_FS_LABEL_ENC``, by-label link names).

    By hand, not with a regular expression: compiling one at import costs every boot."""
    if "\\x" not in text:
        return text
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        if text.startswith("\\x", i) and i + 4 <= n and set(text[i + 2:i + 4]) <= _HEXDIGITS:
            out.append(chr(int(text[i + 2:i + 4], 16)))
            i += 4
        else:
            out.append(text[i])
            i += 1
    raw = "".join(out)
    try:
        return raw.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return raw


def read_config(path: str) -> str | None:
    """A configuration file's text (undecodable bytes kept as surrogates), None when it does
    not exist; any other error is a :class:`ConfigError` naming the file."""
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "surrogateescape")
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ConfigError(f"cannot read: {e.strerror or e}", file=path) from None


def read_input(path: str, what: str, *, missing_ok: bool = False) -> str | None:
    """An input file a command was given or defaults to (the command line, a crypttab): its
    text, None when it does not exist and *missing_ok*; otherwise a :class:`ConfigError`
    naming the file and *what* it was read for."""
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "surrogateescape")
    except FileNotFoundError:
        if missing_ok:
            return None
        raise ConfigError(f"cannot read the {what}: No such file or directory",
                          file=path) from None
    except OSError as e:
        raise ConfigError(f"cannot read the {what}: {e.strerror or e}", file=path) from None
