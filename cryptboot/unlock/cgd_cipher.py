"""cgd(4)'s per-sector encryption in Python, for checking a key before mapping a volume.

cgd has no header: ciphertext starts at byte 0 of the partition, and sector ``blkno`` (in units of
the underlying disk's sector size) is encrypted on its own (NetBSD ``sys/dev/cgd.c``,
``cgd_crypto.c``):

- ``aes-xts``: the XTS tweak is the sector number, 8 bytes little-endian padded with zeros to 16:
  IEEE 1619's data-unit number, the same as dm-crypt's ``plain64``. The iv-method is ignored.
- ``aes-cbc``, ``3des-cbc``, ``blowfish-cbc``: CBC over the sector with IV = E_K(blkno as 8 bytes
  little-endian, zero-padded to the cipher block), applied once (``encblkno1``) or, for the
  legacy ``encblkno``/``encblkno8``, eight times.
- ``adiantum``: a wide-block mode with a 16-byte tweak; not implemented here.

This is slow next to the kernel and is only used for a few sectors (key checks, tests, and writing
test images). ``cryptography`` is imported inside the functions.
"""

from __future__ import annotations

from cryptboot.errors import CryptbootError

TYPE_CHECKING = False
if TYPE_CHECKING:  # not imported at run time: typing is slow to import
    from typing import Any

CIPHERS = ("aes-xts", "aes-cbc", "3des-cbc", "blowfish-cbc", "adiantum")


def _block_cipher(algorithm: str, key: bytes) -> Any:
    from cryptography.hazmat.primitives.ciphers import algorithms

    if algorithm in ("aes-cbc", "aes-xts"):
        return algorithms.AES(key)
    try:
        from cryptography.hazmat.decrepit.ciphers import algorithms as decrepit
    except ImportError:  # cryptography < 43
        decrepit = algorithms  # type: ignore[misc]
    if algorithm == "3des-cbc":
        return decrepit.TripleDES(key)
    if algorithm == "blowfish-cbc":
        return decrepit.Blowfish(key)
    raise CryptbootError(f"cgd algorithm {algorithm!r} cannot be computed here "
                         f"(known: aes-xts, aes-cbc, 3des-cbc, blowfish-cbc)")


def _check(algorithm: str, key: bytes, data: bytes, secsize: int) -> None:
    if algorithm not in CIPHERS:
        raise CryptbootError(f"unknown cgd algorithm {algorithm!r}; known: " + ", ".join(CIPHERS))
    if algorithm == "adiantum":
        raise CryptbootError("cgd adiantum sectors cannot be computed here: no Adiantum "
                             "implementation is available to Python")
    if algorithm == "aes-xts" and len(key) not in (32, 64):
        raise CryptbootError(f"aes-xts needs a 256- or 512-bit key, not {8 * len(key)} bits")
    if algorithm == "aes-xts" and key[:len(key) // 2] == key[len(key) // 2:]:
        # the cryptography library refuses XTS keys with equal halves (a weak key)
        raise CryptbootError("aes-xts key has two equal halves; the cryptography library "
                             "refuses such keys")
    if secsize <= 0 or len(data) % secsize:
        raise CryptbootError(f"data of {len(data)} bytes is not whole {secsize}-byte sectors")


def _cbc_iv(algorithm: str, key: bytes, iv_method: str, blkno: int) -> bytes:
    from cryptography.hazmat.primitives.ciphers import Cipher, modes

    cipher = _block_cipher(algorithm, key)
    bs = cipher.block_size // 8
    iv = blkno.to_bytes(8, "little") + bytes(bs - 8)
    rounds = 8 if iv_method in ("encblkno", "encblkno8") else 1
    enc = Cipher(cipher, modes.ECB()).encryptor()
    for _ in range(rounds):
        iv = enc.update(iv)
    return iv


def _sector(algorithm: str, iv_method: str, key: bytes, blkno: int, sector: bytes,
            encrypt: bool) -> bytes:
    from cryptography.hazmat.primitives.ciphers import Cipher, modes

    if algorithm == "aes-xts":
        mode: Any = modes.XTS(blkno.to_bytes(8, "little") + bytes(8))
    else:
        mode = modes.CBC(_cbc_iv(algorithm, key, iv_method, blkno))
    c = Cipher(_block_cipher(algorithm, key), mode)
    ctx = c.encryptor() if encrypt else c.decryptor()
    return bytes(ctx.update(sector)) + bytes(ctx.finalize())


def _crypt(algorithm: str, iv_method: str, key: bytes, first_blkno: int, data: bytes,
           secsize: int, encrypt: bool) -> bytes:
    _check(algorithm, key, data, secsize)
    return b"".join(
        _sector(algorithm, iv_method, key, first_blkno + i // secsize, data[i:i + secsize],
                encrypt)
        for i in range(0, len(data), secsize)
    )


def decrypt(algorithm: str, iv_method: str, key: bytes, first_blkno: int, data: bytes,
            secsize: int = 512) -> bytes:
    """Decrypt whole sectors starting at sector ``first_blkno``, as cgd would read them."""
    return _crypt(algorithm, iv_method, key, first_blkno, data, secsize, encrypt=False)


def encrypt(algorithm: str, iv_method: str, key: bytes, first_blkno: int, data: bytes,
            secsize: int = 512) -> bytes:
    """Encrypt whole sectors starting at sector ``first_blkno``, as cgd would write them."""
    return _crypt(algorithm, iv_method, key, first_blkno, data, secsize, encrypt=True)
