"""Key material from files: a keyfile in the image (the ``file`` provider), raw bytes.

``keyfile-offset`` / ``keyfile-size`` are applied here, so what reaches cryptsetup's stdin is
exactly the key, every byte counting. Keys on other devices: :mod:`cryptboot.keys.keydev`.
"""

from __future__ import annotations

import os

from cryptboot.config.model import KeyKind
from cryptboot.errors import CryptbootError
from cryptboot.keys.providers import Provider

TYPE_CHECKING = False
if TYPE_CHECKING:
    from cryptboot.keys import KeyRequest

MAX_KEYFILE = 8 * 1024 * 1024  # cryptsetup's own default limit for key files


class KeyUnavailable(CryptbootError):
    """This key source gave no key (missing file or device, unreadable); try the next one.

    ``later``: it may still come (a key device not plugged in yet): it keeps waiting beside
    the prompt."""

    def __init__(self, message: str, hint: str | None = None, *, later: bool = False) -> None:
        super().__init__(message, hint)
        self.later = later


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


class _File(Provider):
    """A keyfile inside the image."""

    name = "keyfile"

    def attempt(self, req: KeyRequest) -> str | None:
        from cryptboot.keys import Key

        src = req.source
        assert src.path is not None
        return req.open_with(Key(read_keyfile(src.path, src.offset, src.size), KeyKind.FILE,
                                 f"keyfile {src.path}", binary=True))


def provider() -> Provider:
    return _File()
