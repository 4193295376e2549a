"""Key material from files: a keyfile in the image, a keyfile on another device, raw bytes.

``keyfile-offset`` / ``keyfile-size`` are applied here, so what reaches cryptsetup's stdin is
exactly the key, every byte counting. A keyfile on another device is read from a read-only mount
that is undone at once; nothing is copied anywhere.
"""

from __future__ import annotations

import os

from cryptboot.errors import CommandError, CryptbootError
from cryptboot.run import run

KEYDEV_MOUNT = "/run/cryptboot/keydev"
MAX_KEYFILE = 8 * 1024 * 1024  # cryptsetup's own default limit for key files


class KeyUnavailable(CryptbootError):
    """This key source gave no key (missing file or device, unreadable); try the next one."""


def _read_at(path: str, offset: int, size: int | None, what: str) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise KeyUnavailable(f"{what} {path}: {e.strerror}") from None
    try:
        want = size if size is not None else MAX_KEYFILE + 1
        chunks: list[bytes] = []
        got = 0
        pos = offset
        while got < want:
            chunk = os.pread(fd, min(65536, want - got), pos)
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
            pos += len(chunk)
    except OSError as e:
        raise KeyUnavailable(f"{what} {path}: {e.strerror}") from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if size is None and len(data) > MAX_KEYFILE:
        raise KeyUnavailable(f"{what} {path} is larger than {MAX_KEYFILE} bytes; "
                             "set keyfile-size=")
    if size is not None and len(data) < size:
        raise KeyUnavailable(f"{what} {path}: only {len(data)} bytes after offset {offset}, "
                             f"keyfile-size={size} asks for {size}")
    if not data:
        raise KeyUnavailable(f"{what} {path} is empty" +
                             (f" after offset {offset}" if offset else ""))
    return data


def read_keyfile(path: str, offset: int = 0, size: int | None = None) -> bytes:
    """The key in ``path`` (inside the image or a mounted device), offset and size applied."""
    return _read_at(path, offset, size, "keyfile")


def read_raw(node: str, offset: int, size: int | None) -> bytes:
    """``size`` bytes at ``offset`` of a block device (mkinitcpio's ``DEV:OFFSET:SIZE``)."""
    if size is None:
        raise KeyUnavailable(f"raw key on {node}: a size is needed (DEV:OFFSET:SIZE)")
    return _read_at(node, offset, size, "raw key on")


def read_from_device(node: str, path: str, fstype: str | None, offset: int = 0,
                     size: int | None = None, mountpoint: str = KEYDEV_MOUNT) -> bytes:
    """Mount ``node`` read-only, read the keyfile ``path`` on it, unmount."""
    os.makedirs(mountpoint, mode=0o700, exist_ok=True)
    argv = ["mount", "-o", "ro"]
    if fstype:
        argv += ["-t", fstype]
    try:
        run([*argv, node, mountpoint])
    except CommandError as e:
        raise KeyUnavailable(f"cannot mount key device {node}: {e.message}") from None
    try:
        return read_keyfile(os.path.join(mountpoint, path.lstrip("/")), offset, size)
    finally:
        run(["umount", mountpoint], check=False)
