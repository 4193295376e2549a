"""Read an initramfs image: concatenated ``newc`` cpio archives, each plain or compressed.

The kernel unpacks an initramfs as a sequence of parts (``init/initramfs.c``): a plain cpio
archive (dracut's and initramfs-tools' early microcode part), zero padding, then a compressed
stream that itself holds one or more cpio archives. gzip, xz, lzma and bzip2 are read with the
standard library; zstd and lz4 (the kernel's legacy lz4 frame) with the real ``zstd`` and ``lz4``
programs, data on stdin.

Anything else is :class:`ImageError` (exit status 2 at the CLI): not an initramfs, a truncated
archive, an unknown compression, each one line naming the file and the offset.
"""

from __future__ import annotations

import posixpath
import stat
from dataclasses import dataclass, field

from cryptboot.errors import CryptbootError

CPIO_MAGICS = (b"070701", b"070702")
TRAILER = "TRAILER!!!"
HEADER = 110
# file contents kept in memory (crypttab, keyfiles, modules.* indexes, configuration); larger
# files (binaries, modules) are listed by path and size only
KEEP_BYTES = 1 << 20

# magic -> compression name (the kernel's decompressors, lib/decompress.c)
COMPRESSIONS: tuple[tuple[bytes, str], ...] = (
    (b"\x1f\x8b", "gzip"),
    (b"\x1f\x9e", "gzip"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x02\x21\x4c\x18", "lz4"),
    (b"\x04\x22\x4d\x18", "lz4"),
    (b"\x5d\x00\x00", "lzma"),
    (b"BZh", "bzip2"),
    (b"\x89LZO", "lzo"),
)


class ImageError(CryptbootError):
    """The file is not a readable initramfs."""

    exit_code = 2


@dataclass(frozen=True)
class Member:
    path: str          # no leading slash, normalised
    mode: int
    size: int
    data: bytes | None  # contents (or symlink target) when small, else None


@dataclass
class Image:
    """What an image holds: ``members`` by path, and the parts it was made of."""

    path: str
    members: dict[str, Member] = field(default_factory=dict)
    parts: list[str] = field(default_factory=list)  # "cpio", "zstd", ...

    def lookup(self, path: str, *, follow: bool = True) -> Member | None:
        """The member at ``path`` (absolute or relative), following symlinks in the image
        (``sbin -> usr/sbin``, ``lib -> usr/lib``), else None."""
        parts = [p for p in path.strip("/").split("/") if p and p != "."]
        done: list[str] = []
        for _hops in range(40):
            if not parts:
                break
            name = parts.pop(0)
            if name == "..":
                if done:
                    done.pop()
                continue
            cur = "/".join([*done, name])
            m = self.members.get(cur)
            if m is None:
                if not parts:
                    return None
                done.append(name)   # a parent directory the archive does not list
                continue
            if stat.S_ISLNK(m.mode) and (follow or parts) and m.data is not None:
                target = m.data.decode(errors="surrogateescape")
                base = [] if target.startswith("/") else done
                parts = [p for p in target.split("/") if p and p != "."] + parts
                done = list(base)
                continue
            done.append(name)
        else:
            return None
        return self.members.get("/".join(done)) if done else None

    def read(self, path: str) -> bytes | None:
        m = self.lookup(path)
        if m is None or not stat.S_ISREG(m.mode):
            return None
        return m.data

    def has_file(self, path: str) -> bool:
        m = self.lookup(path)
        return m is not None and stat.S_ISREG(m.mode)

    def has_file_exec(self, name: str) -> bool:
        for d in ("usr/sbin", "usr/bin", "sbin", "bin"):
            m = self.lookup(f"{d}/{name}")
            if m is not None and stat.S_ISREG(m.mode) and m.mode & 0o111:
                return True
        return False

    def kernel_versions(self) -> list[str]:
        """The ``lib/modules/VER`` directories the image holds."""
        out = set()
        for p in self.members:
            for base in ("lib/modules/", "usr/lib/modules/"):
                if p.startswith(base):
                    ver = p[len(base):].split("/", 1)[0]
                    if ver:
                        out.add(ver)
        return sorted(out)

    def modules(self, kver: str) -> set[str]:
        """Names (underscores) of the kernel modules for ``kver`` the image holds."""
        out = set()
        for base in (f"lib/modules/{kver}/", f"usr/lib/modules/{kver}/"):
            for p, m in self.members.items():
                if p.startswith(base) and stat.S_ISREG(m.mode):
                    name = posixpath.basename(p)
                    if ".ko" in name:
                        out.add(name.split(".ko")[0].replace("-", "_"))
        return out


def _cpio(img: Image, data: bytes, pos: int, where: str) -> int:
    """Parse one cpio archive starting at ``pos``; returns the offset after its trailer."""
    start = pos
    while True:
        if pos + HEADER > len(data):
            raise ImageError(f"{img.path}: truncated cpio archive {where} (it ends at offset "
                             f"{len(data)} inside the archive begun at {start}, before its "
                             f"{TRAILER} entry)")
        if data[pos:pos + 6] not in CPIO_MAGICS:
            raise ImageError(f"{img.path}: corrupt cpio archive {where}: expected the magic "
                             f"070701 at offset {pos}, found {data[pos:pos + 6]!r}")
        try:
            f = [int(data[pos + 6 + 8 * i:pos + 14 + 8 * i], 16) for i in range(13)]
        except ValueError:
            raise ImageError(f"{img.path}: corrupt cpio header {where} at offset {pos}") from None
        mode, size, namesize = f[1], f[6], f[11]
        name_end = pos + HEADER + namesize
        body = name_end + (-name_end % 4)
        if body + size > len(data):
            raise ImageError(f"{img.path}: truncated cpio archive {where}: the entry at offset "
                             f"{pos} needs {body + size - len(data)} more bytes than the data "
                             f"holds ({len(data)})")
        name = data[pos + HEADER:name_end - 1].decode("utf-8", "surrogateescape")
        pos = body + size
        pos += -pos % 4
        if name == TRAILER:
            return pos
        path = posixpath.normpath("/" + name).lstrip("/")
        if not path:
            continue
        keep = size <= KEEP_BYTES and (stat.S_ISREG(mode) or stat.S_ISLNK(mode))
        img.members[path] = Member(path, mode, size, data[body:body + size] if keep else None)


def _stdlib(how: str, data: bytes) -> bytes:
    """Decompress with the standard library; EOFError when the stream ends early."""
    if how == "gzip":
        import zlib

        out = bytearray()
        rest = data
        while rest[:2] in (b"\x1f\x8b", b"\x1f\x9e"):   # concatenated gzip members
            d = zlib.decompressobj(wbits=31)
            out += d.decompress(rest)
            if not d.eof:
                raise EOFError
            rest = d.unused_data
        return bytes(out)
    if how in ("xz", "lzma"):
        import lzma

        dx = lzma.LZMADecompressor(lzma.FORMAT_XZ if how == "xz" else lzma.FORMAT_ALONE)
        outx = dx.decompress(data)
        if not dx.eof:
            raise EOFError
        return outx
    import bz2

    db = bz2.BZ2Decompressor()
    outb = db.decompress(data)
    if not db.eof:
        raise EOFError
    return outb


def _decompress(img: Image, how: str, data: bytes, where: str) -> bytes:
    if how in ("zstd", "lz4"):
        return _external(img, how, data, where)
    if how not in ("gzip", "xz", "lzma", "bzip2"):
        raise ImageError(f"{img.path}: {how}-compressed part {where}: cryptboot check cannot "
                         "read this compression (it reads gzip, zstd, xz, lzma, bzip2 and lz4)")
    try:
        return _stdlib(how, data)
    except EOFError:
        raise ImageError(f"{img.path}: truncated {how} stream {where} (the file ends before "
                         "the compressed data does)") from None
    except Exception as e:  # zlib.error, lzma.LZMAError, OSError: corrupt data
        raise ImageError(f"{img.path}: corrupt {how} stream {where}: {e}") from None


def _external(img: Image, how: str, data: bytes, where: str) -> bytes:
    from cryptboot.run import run, which

    prog = which(how)
    if prog is None:
        raise ImageError(f"{img.path}: the part {where} is {how}-compressed and the {how} "
                         "program is not installed", hint=f"apt-get install {how}")
    proc = run([prog, "-d", "-c", "-q"], input=data, check=False)
    if proc.returncode != 0:
        last = proc.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no message"]
        raise ImageError(f"{img.path}: truncated or corrupt {how} stream {where}: {how} -d "
                         f"said: {last[0]}")
    return proc.stdout


def _compression(data: bytes, pos: int) -> str | None:
    for magic, how in COMPRESSIONS:
        if data.startswith(magic, pos):
            return how
    return None


def _parts(img: Image, data: bytes, where_base: str, depth: int = 0) -> None:
    pos = 0
    while pos < len(data):
        if data[pos] == 0:          # padding between parts (the kernel skips zero bytes)
            pos += 1
            continue
        where = f"at offset {pos}" + where_base
        if data[pos:pos + 6] in CPIO_MAGICS:
            img.parts.append("cpio")
            pos = _cpio(img, data, pos, where)
            continue
        how = _compression(data, pos)
        if how is None:
            if pos == 0 and depth == 0:
                raise ImageError(f"{img.path}: not an initramfs: it starts with "
                                 f"{data[:6].hex()}, neither a cpio archive (070701) nor a "
                                 "compressed one")
            raise ImageError(f"{img.path}: unknown compression at offset {pos}{where_base}: "
                             f"magic {data[pos:pos + 6].hex()} is none of gzip, zstd, xz, "
                             "lzma, bzip2, lz4, lzo")
        img.parts.append(how)
        if depth >= 2:
            raise ImageError(f"{img.path}: compressed data nested too deep {where}")
        inner = _decompress(img, how, data[pos:], where)
        _parts(img, inner, f" in the {how} part at offset {pos}{where_base}", depth + 1)
        return   # the compressed stream runs to the end of the file


def read_image(path: str) -> Image:
    """Read the image at ``path``. Raises ImageError on bad input."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ImageError(f"{path}: cannot read the image: {e.strerror or e}") from None
    img = Image(path)
    if not data:
        raise ImageError(f"{path}: not an initramfs: the file is empty")
    _parts(img, data, "")
    if not img.members:
        raise ImageError(f"{path}: not an initramfs: its archives hold no files")
    return img
