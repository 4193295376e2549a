"""At boot, set up the shutdown initramfs (images built with ``mkinitramfs --shutdown``).

Copies the files named by the image's manifest (see :mod:`cryptboot.initramfs.shutdown`) into
``/run/initramfs`` (``/run`` is the tmpfs handed to the real system), the script as
``/run/initramfs/shutdown``, and writes the names of the mappings this boot opened to
``/run/initramfs/etc/cryptboot/mappings``: systemd-shutdown pivots there at the end and the
script closes them once the old root is unmounted. Standard library only, no ``shutil``.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence

MANIFEST = "/etc/cryptboot/shutdown"
SCRIPT = "/usr/lib/cryptboot/shutdown"
TARGET = "/run/initramfs"
MERGED = {"bin": "usr/bin", "sbin": "usr/sbin", "lib": "usr/lib", "lib64": "usr/lib64"}
HOOKS = "/etc/cryptboot/shutdown.d"  # storage layers' shutdown hooks (*.sh), copied along


def enabled(manifest: str = MANIFEST) -> bool:
    return os.path.isfile(manifest)


def prepare(opened: Sequence[str], *, manifest: str = MANIFEST, source: str = "/",
            target: str = TARGET) -> str:
    """Fill ``target``; returns what was done, in words. Raises OSError."""
    with open(manifest) as f:
        paths = [p.strip().lstrip("/") for p in f if p.strip()]
    if os.path.isdir(os.path.join(source, HOOKS.lstrip("/"))):
        hooks = os.path.join(source, HOOKS.lstrip("/"))
        paths += [f"{HOOKS.lstrip('/')}/{n}" for n in sorted(os.listdir(hooks))]
    os.makedirs(target, mode=0o755, exist_ok=True)
    for link, dest in MERGED.items():
        if not os.path.lexists(os.path.join(target, link)):
            os.symlink(dest, os.path.join(target, link))
    size = 0
    for rel in paths:
        size += _copy(os.path.join(source, rel), os.path.join(target, rel))
    _copy(os.path.join(source, SCRIPT.lstrip("/")), os.path.join(target, "shutdown"))
    conf = os.path.join(target, "etc/cryptboot")
    os.makedirs(conf, mode=0o755, exist_ok=True)
    with open(os.path.join(conf, "mappings"), "w") as f:
        f.write("".join(f"{name}\n" for name in opened))
    return (f"{len(paths)} files ({size / 2**20:.1f} MiB) in {target}; closes "
            f"{' '.join(opened) or 'nothing'} at shutdown")


def _copy(src: str, dst: str) -> int:
    """Copy a file or symlink (not following it); returns the bytes copied."""
    os.makedirs(os.path.dirname(dst), mode=0o755, exist_ok=True)
    st = os.lstat(src)
    if os.path.lexists(dst):
        os.unlink(dst)
    if stat.S_ISLNK(st.st_mode):
        os.symlink(os.readlink(src), dst)
        return 0
    with open(src, "rb") as fin:
        data = fin.read()
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                 stat.S_IMODE(st.st_mode))
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)
    return len(data)
