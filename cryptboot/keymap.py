"""Boot step "load the keymap": the user's keyboard layout (and font) on the local screen.

``cryptboot mkinitramfs`` compiled the keymap with the real ``loadkeys -b -u`` into a binary
keymap (``/etc/cryptboot/keymaps/NAME.bmap``: the magic ``bkeymap``, 256 flags saying which of
the kernel's keymaps (modifier combinations) follow, then 128 key values of 16 bits for each).
Here it goes into the kernel with one ``KDSKBENT`` ioctl per key, from Python: no program to
start, which under QEMU TCG costs more than the ioctls (bench/bench_keymap.py). The VT is put in
Unicode mode first (``KDSKBMODE K_UNICODE``, as ``loadkeys -u`` does), so a key such as ``ü``
reaches the prompt as UTF-8, the bytes the passphrase was set with in the installed system.
Keymaps the file does not define are released (``K_NOSUCHMAP``) and undefined keys are left as
the kernel has them, as loadkeys does; maps no key press can select are skipped.

The font (``/etc/cryptboot/fonts/NAME``) is loaded with the real ``setfont``, after the keymap
(it only changes how the prompt looks).

Never fatal: a keymap that is missing or fails to load gives one warning naming it, and the
prompt appears with the kernel's default layout. Imported only when the plan has a keymap or
a font.
"""

from __future__ import annotations

import fcntl
import os
import struct
import time

from cryptboot import log

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from threading import Event

    from cryptboot.config.model import Vconsole

KEYMAPS = "/etc/cryptboot/keymaps"
FONTS = "/etc/cryptboot/fonts"
VT = "/dev/tty0"          # the foreground virtual terminal
MAGIC = b"bkeymap"
MAX_NR_KEYMAPS = 256
NR_KEYS = 128
# <linux/kd.h>, <linux/keyboard.h>
KDSKBMODE = 0x4B45
KDSKBENT = 0x4B47
K_UNICODE = 0x03
K_HOLE = 0x0200           # K(KT_SPEC, 0): a key the keymap does not define
K_NOSUCHMAP = 0x027F      # K(KT_SPEC, 127): as kb_value of key 0, releases that keymap
KT_SHIFT, KT_LOCK, KT_SLOCK = 7, 10, 12   # key types that set modifier bits
# KG_SHIFT, KG_ALTGR: the maps that type characters with no lock on; the prompt waits only for
# these (the Control and Alt maps, and console-setup's Caps Lock maps on its CtrlL_Lock bit, go
# in right after)
TYPING = 1 << 0 | 1 << 1


def file_name(name: str) -> str:
    """The compiled keymap's file name for keymap ``name`` (a name may be a path)."""
    return name.replace("/", "_") + ".bmap"


def parse(data: bytes) -> list[tuple[int, tuple[int, ...]]]:
    """``[(keymap index, 128 key values)]`` of a ``loadkeys -b`` file; ValueError if it is not
    one."""
    head = len(MAGIC) + MAX_NR_KEYMAPS
    if not data.startswith(MAGIC) or len(data) < head:
        raise ValueError("not a binary keymap (no 'bkeymap' header)")
    tables = [i for i in range(MAX_NR_KEYMAPS) if data[len(MAGIC) + i]]
    if len(data) != head + len(tables) * NR_KEYS * 2:
        raise ValueError(f"truncated or padded: {len(data)} bytes for {len(tables)} keymaps")
    out = []
    for n, i in enumerate(tables):
        off = head + n * NR_KEYS * 2
        out.append((i, struct.unpack_from(f"={NR_KEYS}H", data, off)))
    return out


def reachable(tables: list[tuple[int, tuple[int, ...]]]) -> set[int]:
    """The keymaps (modifier combinations) some key press can select: the modifier bits that
    a Shift, lock or sticky key of the map sets, and every combination of them. console-setup
    defines all 128 maps, most for the ShiftL/CtrlR... bits that no key sets."""
    values: set[int] = set()
    for _i, table in tables:
        values.update(table)  # in C: console-setup's 128 maps hold only a few hundred values
    bits = 0
    for v in values:
        if v >> 8 in (KT_SHIFT, KT_LOCK, KT_SLOCK) and v & 0xFF < 8:
            bits |= 1 << (v & 0xFF)
    return {i for i in range(MAX_NR_KEYMAPS) if i & ~bits == 0}


def batches(tables: list[tuple[int, tuple[int, ...]]], present: set[int]
            ) -> tuple[list[bytes], Iterator[bytes]]:
    """The ``KDSKBENT`` entries of the keymaps in ``present``: first those of the typing maps
    (plain, Shift, AltGr, Shift+AltGr), then, made only as they are taken, all the others."""
    pack = struct.Struct("=BBH").pack

    def entries(typing: bool) -> Iterator[bytes]:
        for i, values in tables:
            if i in present and (i & ~TYPING == 0) is typing:
                for key, value in enumerate(values):
                    if value != K_HOLE:
                        yield pack(i, key, value)

    return list(entries(True)), entries(False)


def load_keymap(fd: int, data: bytes, ready: Event | None = None) -> tuple[int, int, float]:
    """Put the binary keymap ``data`` into the kernel through the VT ``fd``; returns the number
    of keymaps loaded, of ioctls made, and the seconds until the typing maps were in.

    As loadkeys does: keys the keymap leaves undefined (``K_HOLE``) keep the kernel's value, and
    the kernel's keymaps the new one lacks are released. Maps no key press can select are
    skipped: each ioctl costs ~75 us under QEMU TCG, the emulated system call. The maps that
    type characters (plain, Shift, AltGr and both) go first, then ``ready`` is set: the prompt
    needs only those; the Control and Alt maps and the lock maps (console-setup's Caps Lock)
    follow while it shows.
    """
    t0 = time.monotonic()
    tables = parse(data)
    fcntl.ioctl(fd, KDSKBMODE, K_UNICODE)
    calls = 1
    ioctl = fcntl.ioctl
    can = reachable(tables)
    present = {i for i, _ in tables if i in can}
    first, rest = batches(tables, present)
    for entry in first:
        ioctl(fd, KDSKBENT, entry)
    typed = time.monotonic() - t0
    if ready is not None:
        ready.set()
    calls += len(first)
    for entry in rest:
        ioctl(fd, KDSKBENT, entry)
        calls += 1
    pack = struct.Struct("=BBH").pack
    for i in sorted(can - present - {0}):
        calls += 1
        try:
            ioctl(fd, KDSKBENT, pack(i, 0, K_NOSUCHMAP))
        except OSError:  # the kernel refuses to release a keymap a key is still using
            pass
    return len(present), calls, typed


def load(v: Vconsole, keymaps: str = KEYMAPS, fonts: str = FONTS, vt: str = VT,
         ready: Event | None = None) -> str:
    """The boot step: load ``v``'s keymap and font; returns what happened, in words. Problems
    are warnings, never errors. ``ready`` is set once the prompt can be shown: the keymap's
    typing maps are in, or loading failed."""
    try:
        return _load(v, keymaps, fonts, vt, ready)
    finally:
        if ready is not None:
            ready.set()


def _load(v: Vconsole, keymaps: str, fonts: str, vt: str, ready: Event | None) -> str:
    try:
        fd = os.open(vt, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as e:
        what = " and ".join(x for x in (v.keymap and f"keymap {v.keymap}",
                                        v.font and f"font {v.font}") if x)
        return f"no virtual terminal ({vt}: {e.strerror}): {what} not loaded"
    try:
        done = []
        if v.keymap:
            done.append(_keymap(fd, v.keymap, keymaps, ready))
        if ready is not None:
            ready.set()  # the font only changes how the prompt looks: loaded while it waits
        if v.font:
            done.append(_font(v.font, fonts, vt))
        return "; ".join(d for d in done if d)
    finally:
        os.close(fd)


def _keymap(fd: int, name: str, keymaps: str, ready: Event | None) -> str:
    path = os.path.join(keymaps, file_name(name))
    default = "the prompt uses the kernel's default US layout"
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        try:
            have = sorted(n[:-5] for n in os.listdir(keymaps) if n.endswith(".bmap"))
        except OSError:
            have = []
        log.warning(f"keymap {name}: not in this image (it has: {', '.join(have) or 'none'}); "
                    f"{default}")
        return ""
    except OSError as e:
        log.warning(f"keymap {name}: cannot read {path}: {e.strerror}; {default}")
        return ""
    try:
        n, calls, typed = load_keymap(fd, data, ready)
    except (OSError, ValueError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        log.warning(f"keymap {name}: cannot load it ({why}); {default}")
        return ""
    return (f"keymap {name} ({n} keymaps, {calls} ioctls, Unicode; the typing maps in after "
            f"{typed:.3f}s)")


def _font(name: str, fonts: str, vt: str) -> str:
    from cryptboot.errors import CryptbootError
    from cryptboot.run import run

    path = os.path.join(fonts, name.replace("/", "_"))
    if not os.path.exists(path):
        log.warning(f"font {name}: not in this image; the console keeps the kernel's font")
        return ""
    try:
        run(["setfont", "-C", vt, path])
    except CryptbootError as e:
        log.warning(f"font {name}: {e.message}; the console keeps the kernel's font")
        return ""
    return f"font {name}"
