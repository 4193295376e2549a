"""The console's keyboard layout and font: ``/etc/vconsole.conf``, Debian's console-setup and
the kernel command line, merged into one :class:`~cryptboot.config.model.Vconsole`.

Precedence, highest first (what systemd and Debian do, the command line winning):

1. the command line: ``rd.vconsole.keymap=`` over ``vconsole.keymap=`` (same for
   ``keymap_toggle`` and ``font``); an empty value (``rd.vconsole.keymap=``) means none;
2. systemd's ``/etc/vconsole.conf``: ``KEYMAP=``, ``KEYMAP_TOGGLE=``, ``FONT=``;
3. Debian's console-setup: ``XKBLAYOUT``/``XKBVARIANT`` of ``/etc/default/keyboard``, through the
   keymap console-setup compiled from them, ``/etc/console-setup/cached_*.kmap.gz`` (what
   initramfs-tools puts in its images). A plain ``us`` layout is the kernel's own default, so
   nothing is loaded for it.

Only text parsing here; the caller reads the files (``read_vconsole``).
"""

from __future__ import annotations

import os

from cryptboot.config.model import Vconsole
from cryptboot.config.values import Where, has_control

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

VCONSOLE_CONF = "/etc/vconsole.conf"
KEYBOARD = "/etc/default/keyboard"
# command-line words read here (rd. ones win over the plain ones)
CMDLINE_KEYS = ("keymap", "keymap_toggle", "font")
# options systemd-vconsole-setup knows that cryptboot does not do: a warning names them
UNIMPLEMENTED = ("font_map", "font_unimap", "unicode")


def parse_assignments(text: str, path: str) -> dict[str, tuple[str, Where]]:
    """Shell-style ``KEY=VALUE`` lines (``"..."``/``'...'`` quotes, ``#`` comments, an optional
    ``export``), as in vconsole.conf and /etc/default/keyboard; the last assignment wins."""
    out: dict[str, tuple[str, Where]] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = Where(path, n)
        if line.startswith("export "):
            line = line[7:].lstrip()
        key, eq, value = line.partition("=")
        if not eq or not key or not (key.replace("_", "a").isalnum() and key.isascii()):
            raise where.error(f"expected KEY=VALUE, found {raw.strip()!r}")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        elif " #" in value:
            value = value.split(" #", 1)[0].rstrip()
        if has_control(value):
            raise where.error(f"{key}=: expected a name, found control characters")
        out[key] = (value, where)
    return out


def _name(value: str, where: Where | str, what: str) -> str:
    if any(c.isspace() for c in value) or has_control(value):
        if isinstance(where, Where):
            raise where.error(f"{what}: expected a keymap or font name, found {value!r}")
        from cryptboot.errors import ConfigError

        raise ConfigError(f"{where}: {what}: expected a name, found {value!r}")
    return value


def from_vconsole_conf(text: str, path: str = VCONSOLE_CONF) -> Vconsole:
    values = parse_assignments(text, path)
    fields: dict[str, Any] = {}
    for key, field in (("KEYMAP", "keymap"), ("KEYMAP_TOGGLE", "toggle"), ("FONT", "font")):
        if key in values and values[key][0]:
            value, where = values[key]
            fields[field] = _name(value, where, key)
            fields[field + "_from"] = str(where)
    return Vconsole()._replace(**fields)


def from_console_setup(text: str, path: str, kmaps: list[str]) -> Vconsole:
    """The layout of /etc/default/keyboard, compiled from ``kmaps[0]`` (console-setup's
    cached keymaps, best first: :func:`cached_kmaps`)."""
    values = parse_assignments(text, path)
    layout, where = values.get("XKBLAYOUT", ("", Where(path)))
    variant = values.get("XKBVARIANT", ("", where))[0]
    if not layout:
        return Vconsole()
    label = layout + (f"({variant})" if variant else "")
    if layout == "us" and not variant:
        return Vconsole(keymap_from=f"{where}: XKBLAYOUT=us is the kernel's default layout")
    if not kmaps:
        kdir = os.path.join(os.path.dirname(os.path.dirname(path)), "console-setup")
        return Vconsole(keymap_from=f"{where}: XKBLAYOUT={label}, but console-setup has not "
                        f"compiled it ({kdir}/cached_*.kmap.gz missing: run setupcon "
                        "--save-only); none")
    return Vconsole(keymap=_name(label, where, "XKBLAYOUT"),
                    keymap_from=f"{where} (XKBLAYOUT={label}) via {kmaps[0]}", kmap=kmaps[0])


def cached_kmaps(keyboard_path: str) -> list[str]:
    """console-setup's compiled keymaps beside ``/etc/default/keyboard`` (in
    ``/etc/console-setup``), UTF-8 ones first."""
    kdir = os.path.join(os.path.dirname(os.path.dirname(keyboard_path)), "console-setup")
    try:
        names = sorted(n for n in os.listdir(kdir)
                       if n.startswith("cached_") and n.endswith(".kmap.gz"))
    except OSError:
        return []
    names.sort(key=lambda n: not n.startswith("cached_UTF-8_"))
    return [os.path.join(kdir, n) for n in names]


def merge(files: Vconsole, words: dict[str, tuple[str, str]]) -> Vconsole:
    """Apply the command line's ``(rd.)vconsole.*`` words (``{word key: (value, word)}``) on
    top of what the files say."""
    out = files
    for key, field in (("keymap", "keymap"), ("keymap_toggle", "toggle"), ("font", "font")):
        hit = words.get(f"rd.vconsole.{key}") or words.get(f"vconsole.{key}")
        if hit is None:
            continue
        value, word = hit
        change: dict[str, Any] = {
            field: _name(value, "cmdline", word) if value else None,
            field + "_from": f"cmdline: {word}" if value else f"cmdline: {word} (none)"}
        if field == "keymap":
            change["kmap"] = None   # a named keymap, not console-setup's compiled one
        out = out._replace(**change)
    return out


def read_vconsole(vconsole_path: str | None = VCONSOLE_CONF,
                  keyboard_path: str | None = KEYBOARD) -> Vconsole:
    """What the files say (missing files: nothing): vconsole.conf, else console-setup for the
    keymap (the font only comes from vconsole.conf or the command line)."""
    found = Vconsole()
    if vconsole_path:
        text = _read(vconsole_path)
        if text is not None:
            found = from_vconsole_conf(text, vconsole_path)
    if found.keymap is None and keyboard_path:
        text = _read(keyboard_path)
        if text is not None:
            cs = from_console_setup(text, keyboard_path, cached_kmaps(keyboard_path))
            found = found._replace(keymap=cs.keymap, keymap_from=cs.keymap_from, kmap=cs.kmap)
    return found


def _read(path: str) -> str | None:
    from cryptboot.config.values import read_config

    return read_config(path)
