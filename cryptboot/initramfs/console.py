"""The console's keymap and font in the image (issue 15).

What the machine uses (``/etc/vconsole.conf``, else Debian's console-setup, the image's
``--cmdline`` words winning: :mod:`cryptboot.config.vconsole`) is compiled with the real
``loadkeys -b -u`` into ``/etc/cryptboot/keymaps/NAME.bmap`` (2.8 KiB for ``de``; console-setup's
keymaps define all 128 modifier maps: 32 KiB), with ``KEYMAP_TOGGLE`` compiled on top of it.
Keymaps named with ``--keymap`` are compiled beside it, for ``rd.vconsole.keymap=`` at boot.
The font goes in as a plain PSF (5.5 KiB for Lat15-Fixed16; the compressed file is
decompressed at build, since ``setfont`` would need its name's ``.gz`` and a ``gzip``) with
``setfont`` and its libraries. The image's ``/etc/vconsole.conf`` names the default keymap
and font; nothing at all is added when no keymap or font is configured.

A keymap ``loadkeys`` cannot compile is a warning, not a failed build: the boot then warns too
and asks with the default layout.
"""

from __future__ import annotations

import os
import tempfile

from cryptboot import log
from cryptboot.config.model import Vconsole
from cryptboot.errors import CommandError, CryptbootError
from cryptboot.initramfs.cpio import Entry
from cryptboot.keymap import FONTS, KEYMAPS, file_name
from cryptboot.run import run

TYPE_CHECKING = False
if TYPE_CHECKING:
    from cryptboot.initramfs.build import Image, Options

FONT_DIRS = ("/usr/share/consolefonts", "/usr/share/kbd/consolefonts")
FONT_SUFFIXES = ("", ".psfu.gz", ".psf.gz", ".psfu", ".psf", ".gz")


def configured(opts: Options) -> Vconsole:
    """The keymap and font the image's boot will use by default."""
    from cryptboot.config.cmdline import parse_cmdline
    from cryptboot.config.vconsole import merge, read_vconsole

    files = read_vconsole(opts.vconsole, opts.keyboard)
    words = parse_cmdline(opts.cmdline, "--cmdline").vconsole if opts.cmdline else {}
    return merge(files, words)


def compile_keymap(sources: list[str]) -> bytes:
    """``loadkeys -b -u`` of keymap names or files (the first, then the others on top).

    Run in an empty directory: loadkeys looks for a keymap in the current directory first.
    """
    with tempfile.TemporaryDirectory(prefix="cryptboot-keymap-") as empty:
        proc = run(["loadkeys", "-b", "-u", "-q", *sources], cwd=empty)
    return proc.stdout


def find_font(name: str) -> str | None:
    if "/" in name:
        return name if os.path.isfile(name) else None
    for d in FONT_DIRS:
        for suffix in FONT_SUFFIXES:
            path = os.path.join(d, name + suffix)
            if os.path.isfile(path):
                return path
    return None


def font_data(path: str) -> bytes:
    """The font file's PSF bytes, uncompressed: ``setfont`` decompresses by the file name's
    suffix (and with a ``gzip`` the image lacks), and the image is compressed as a whole."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] == b"\x1f\x8b":
        import gzip

        data = gzip.decompress(data)
    return data


def add_console(img: Image, opts: Options) -> Vconsole:
    """Add the keymap(s), font and ``/etc/vconsole.conf``; returns what was configured."""
    from cryptboot.initramfs.build import add_tool

    v = configured(opts)
    wanted: list[tuple[str, list[str]]] = []   # (name, loadkeys sources)
    if v.keymap:
        wanted.append((v.keymap, [v.kmap or v.keymap] + ([v.toggle] if v.toggle else [])))
    for name in opts.keymaps:
        if name not in [w[0] for w in wanted]:
            wanted.append((name, [name]))
    if wanted:
        check_tools()
    added = []
    for name, sources in wanted:
        try:
            data = compile_keymap(sources)
        except CommandError as e:
            last = (e.stderr.strip().splitlines() or [e.message])[-1]
            log.warning(f"keymap {name}: loadkeys -b cannot compile it ({last}); not in the "
                        "image: the boot will warn and ask with the default US layout")
            continue
        img.add(Entry.file(f"{KEYMAPS.lstrip('/')}/{file_name(name)}", data, 0o644))
        added.append(name)
    font_file = None
    if v.font:
        font_file = find_font(v.font)
        if font_file is None:
            log.warning(f"font {v.font}: not found in {', '.join(FONT_DIRS)}; not in the image")
        else:
            img.add(Entry.file(f"{FONTS.lstrip('/')}/{v.font.replace('/', '_')}",
                               font_data(font_file), 0o644))
            add_tool(img, "setfont")
    conf = [f"# written by cryptboot mkinitramfs ({'; '.join(_origins(v)) or 'nothing'})"]
    if v.keymap:
        conf.append(f"KEYMAP={v.keymap}")
    if v.toggle:
        conf.append(f"KEYMAP_TOGGLE={v.toggle}")
    if v.font and font_file:
        conf.append(f"FONT={v.font}")
    if v.keymap or font_file:
        img.add(Entry.file("etc/vconsole.conf", ("\n".join(conf) + "\n").encode(), 0o644))
    if added or font_file:
        log.info(f"console: keymaps {', '.join(added) or 'none'}"
                 + (f", font {v.font}" if font_file else ""))
    return v


def _origins(v: Vconsole) -> list[str]:
    out = []
    if v.keymap:
        out.append(f"keymap from {v.keymap_from}")
    if v.font:
        out.append(f"font from {v.font_from}")
    return out


def check_tools() -> None:
    """loadkeys must be there when a keymap is wanted (Debian package kbd)."""
    from cryptboot.run import which

    if which("loadkeys") is None:
        raise CryptbootError("loadkeys: needed to compile the keymap but not found",
                             hint="apt-get install kbd")
