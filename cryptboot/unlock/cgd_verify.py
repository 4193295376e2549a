"""cgd's ``verify_method`` checks, on sectors decrypted with the candidate key.

cgdconfig(8) configures the cgd and then looks for a known structure in the decrypted start of
the volume; if it is not there the passphrase was wrong. The same checks here run on plaintext
that the caller decrypts in Python (``read(offset, length)``), so a wrong passphrase is reported
before anything is mapped or mounted. The structures (NetBSD ``sbin/cgdconfig/cgdconfig.c``):

- ``disklabel``: a NetBSD disklabel (magic 0x82564557 twice, a valid checksum) at any 4-byte
  offset of the first 8 KiB.
- ``mbr``: the 0x55 0xAA boot signature at byte 510.
- ``gpt``: an ``EFI PART`` header in block 1 for block sizes 512 ... 4096. cgdconfig only checks
  signature, revision and size (its CRC test is a no-op); this one also checks the header CRC,
  which every valid GPT has.
- ``ffs``: an FFS/UFS superblock magic at one of the superblock offsets (64 KiB, 8 KiB, 0,
  256 KiB).

``none`` and ``re-enter`` read nothing (re-enter only compares two typed passphrases), and ``zfs``
is not checked here: for those the result is ``None``, "cannot tell".
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable

Reader = Callable[[int, int], bytes]  # (offset, length) -> plaintext bytes (may be shorter)

SCANSIZE = 8192
DISKMAGIC = 0x82564557
MAXPARTITIONS = 22          # the largest MAXPARTITIONS of any NetBSD port
LABEL_HEAD = 148            # struct disklabel up to d_partitions
PARTITION_SIZE = 16
SBLOCKSEARCH = (65536, 8192, 0, 262144)
SBLOCKSIZE = 8192
FS_MAGIC_OFFSET = 1372      # offsetof(struct fs, fs_magic)
FS_MAGICS = {0x011954, 0x19540119, 0x19012038}  # UFS1, UFS2, UFS2 with extended attributes
GPT_SIG = b"EFI PART"
GPT_REVISION = 0x00010000
GPT_HDR_SIZE = 92

CHECKABLE = ("disklabel", "mbr", "gpt", "ffs")


def _disklabel(buf: bytes) -> bool:
    for order in ("<", ">"):
        magic = struct.pack(order + "I", DISKMAGIC)
        i = buf.find(magic)
        while 0 <= i <= len(buf) - LABEL_HEAD:
            if i % 4 == 0 and buf[i + 132:i + 136] == magic:
                (npart,) = struct.unpack_from(order + "H", buf, i + 138)
                end = i + LABEL_HEAD + PARTITION_SIZE * npart
                if npart <= MAXPARTITIONS and end <= len(buf):
                    words = struct.unpack_from(f"{order}{(end - i) // 2}H", buf, i)
                    xor = 0
                    for w in words:
                        xor ^= w
                    if xor == 0:
                        return True
            i = buf.find(magic, i + 1)
    return False


def _mbr(buf: bytes) -> bool:
    return len(buf) >= 512 and buf[510:512] == b"\x55\xaa"


def _gpt(buf: bytes) -> bool:
    blksize = 512
    while blksize + GPT_HDR_SIZE <= min(len(buf), SCANSIZE):
        hdr = buf[blksize:blksize + GPT_HDR_SIZE]
        sig, rev, size, crc = struct.unpack_from("<8sIII", hdr)
        if sig == GPT_SIG and rev == GPT_REVISION and size == GPT_HDR_SIZE:
            if zlib.crc32(hdr[:16] + b"\0\0\0\0" + hdr[20:]) == crc:
                return True
        blksize <<= 1
    return False


def _ffs(read: Reader) -> bool:
    for off in SBLOCKSEARCH:
        block = read(off, SBLOCKSIZE)
        if len(block) < FS_MAGIC_OFFSET + 4:
            continue
        le, be = struct.unpack_from("<I", block, FS_MAGIC_OFFSET)[0], \
            struct.unpack_from(">I", block, FS_MAGIC_OFFSET)[0]
        if le in FS_MAGICS or be in FS_MAGICS:
            return True
    return False


def verify(method: str, read: Reader) -> bool | None:
    """True: the structure is there (the key is right). False: it is not. None: cannot tell."""
    if method == "ffs":
        return _ffs(read)
    if method not in ("disklabel", "mbr", "gpt"):
        return None
    buf = read(0, SCANSIZE)
    if method == "disklabel":
        return _disklabel(buf)
    if method == "mbr":
        return _mbr(buf)
    return _gpt(buf)


def describe(method: str) -> str:
    """What the check looks for, for messages."""
    return {
        "disklabel": "NetBSD disklabel",
        "mbr": "MBR boot signature",
        "gpt": "GPT header",
        "ffs": "FFS superblock",
    }.get(method, method)
