"""Make a cgd volume's key from its params file, as NetBSD's cgdconfig(8) does.

Every ``keygen`` in the file produces a key and the results are XORed together, the shorter one
padded with zero bits (cgdconfig ``getkey``/``bits_xor``). A keygen with a ``shared`` clause first
makes a 256-bit shared key and then the disk's own key as HKDF-Expand-SHA256(shared key, subkey,
keylength) (RFC 5869 §2.3; NetBSD ``hkdf_hmac_sha256.c``), so one passphrase can serve several
disks with distinct keys.

The passphrase is used as cgdconfig uses it: the bytes up to the first NUL (``strlen``), no
trailing newline. The legacy ``pkcs5_pbkdf2`` method numbers its PBKDF2 blocks from 0 instead of 1
(NetBSD ``pkcs5_pbkdf2.c``, the ``compat`` flag), which no library reproduces; see
:func:`pbkdf2_sha1_legacy`.

PBKDF2 and HKDF come from the stdlib (``hashlib``, ``hmac``), so a volume whose keys are made
from a passphrase with PBKDF2, stored, or made by a command opens without the ``cryptography``
package in the initramfs; only ``argon2id`` imports it, inside the function.
"""

from __future__ import annotations

import hashlib
import hmac

from cryptboot import log
from cryptboot.errors import CommandError, ConfigError, CryptbootError
from cryptboot.unlock.cgd_params import SHARED_ALGORITHMS, Keygen, Params

ARGON2_VERSION = 0x13  # the only Argon2 version the cryptography library computes
SHA1_LEN = 20


def fingerprint(key: bytes) -> str:
    """A printable check value for a key that does not reveal it: ``sha256:<hex>``.

    On NetBSD the same value is ``cgdconfig -t PARAMSFILE | base64 -d | sha256`` (cksum(1)).
    """
    return "sha256:" + hashlib.sha256(key).hexdigest()


def _xor(a: bytes, b: bytes) -> bytes:
    if len(a) < len(b):
        a, b = b, a
    return bytes(x ^ y for x, y in zip(a, b + bytes(len(a) - len(b)), strict=True))


def _password(passphrase: bytes) -> bytes:
    nul = passphrase.find(b"\0")
    return passphrase if nul < 0 else passphrase[:nul]


def pbkdf2_sha1(password: bytes, salt: bytes, iterations: int, length: int) -> bytes:
    """Standard PBKDF2-HMAC-SHA1 (RFC 8018), through the stdlib (OpenSSL underneath)."""
    return hashlib.pbkdf2_hmac("sha1", password, salt, iterations, length)


def hkdf_expand_sha256(prk: bytes, info: bytes, length: int) -> bytes:
    """HKDF-Expand with HMAC-SHA256 (RFC 5869 §2.3): T(i) = HMAC(PRK, T(i-1) | info | i)."""
    if length > 255 * 32:
        raise CryptbootError(f"HKDF-Expand cannot make {length} bytes")
    out, t, i = b"", b"", 1
    while len(out) < length:
        t = hmac.new(prk, t + info + bytes([i]), hashlib.sha256).digest()
        out += t
        i += 1
    return out[:length]


def _pbkdf2_block(password: bytes, salt: bytes, iterations: int, index: int) -> bytes:
    """F(P, S, c, i) of RFC 8018 for any block index, including cgd's buggy 0."""
    base = hmac.new(password, digestmod=hashlib.sha1)
    h = base.copy()
    h.update(salt + index.to_bytes(4, "big"))
    u = h.digest()
    acc = int.from_bytes(u, "big")
    for _ in range(iterations - 1):
        h = base.copy()
        h.update(u)
        u = h.digest()
        acc ^= int.from_bytes(u, "big")
    return acc.to_bytes(SHA1_LEN, "big")


def pbkdf2_sha1_legacy(password: bytes, salt: bytes, iterations: int, length: int) -> bytes:
    """cgd's deprecated ``pkcs5_pbkdf2``: PBKDF2-HMAC-SHA1 with block indices 0, 1, 2, ...

    Block k uses index k where the standard uses k+1, so blocks 1.. equal the standard's blocks
    0..: only block 0 needs the hand-written loop; the rest comes from a standard PBKDF2.
    """
    nblocks = -(-length // SHA1_LEN)
    out = _pbkdf2_block(password, salt, iterations, 0)
    if nblocks > 1:
        out += pbkdf2_sha1(password, salt, iterations, (nblocks - 1) * SHA1_LEN)
    return out[:length]


def argon2id(password: bytes, kg: Keygen, length: int) -> bytes:
    """Argon2id with no secret and no associated data (NetBSD ``argon2_utils.c``)."""
    assert kg.salt is not None and kg.iterations is not None
    assert kg.memory is not None and kg.parallelism is not None
    if kg.version != ARGON2_VERSION:
        raise CryptbootError(
            f"keygen argon2id (line {kg.line}) uses Argon2 version {kg.version} "
            f"(0x{kg.version or 0:x}); only version 19 (0x13) can be computed here: the "
            "cryptography library implements no other",
            hint="re-key the volume on NetBSD with a current cgdconfig (it writes version 19)")
    try:
        from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
    except ImportError:
        raise CryptbootError(
            "keygen argon2id needs the cryptography library 44 or newer (Argon2id)",
            hint="install cryptography>=44 built against OpenSSL>=3.2") from None
    from cryptography.exceptions import UnsupportedAlgorithm

    try:
        kdf = Argon2id(salt=kg.salt.data, length=length, iterations=kg.iterations,
                       lanes=kg.parallelism, memory_cost=kg.memory, ad=None, secret=None)
        return kdf.derive(password)
    except UnsupportedAlgorithm:
        raise CryptbootError(
            "keygen argon2id: the OpenSSL behind the cryptography library has no Argon2id",
            hint="Argon2id needs OpenSSL 3.2 or newer") from None
    except ValueError as e:
        raise ConfigError(f"keygen argon2id: {e}", file=None) from None


def _shell_cmd(kg: Keygen, length: int) -> bytes:
    from cryptboot.run import run

    assert kg.cmd is not None
    try:
        proc = run(["/bin/sh", "-c", kg.cmd], check=True)
    except CommandError as e:
        raise CryptbootError(f"keygen shell_cmd (line {kg.line}): {e.message}") from None
    out = proc.stdout or b""
    if len(out) < length:
        raise CryptbootError(
            f"keygen shell_cmd (line {kg.line}) printed {len(out)} bytes; the key needs "
            f"{length} raw bytes on its standard output")
    return out[:length]


def keygen_output(kg: Keygen, params: Params, passphrase: bytes | None) -> bytes:
    """The key one keygen contributes, after its ``shared`` step if it has one."""
    nbytes = params.keylength // 8
    length = SHARED_ALGORITHMS[kg.shared.algorithm] // 8 if kg.shared else nbytes
    where = f"{params.path}:{kg.line}"
    if kg.needs_passphrase and passphrase is None:
        raise CryptbootError(f"{where}: keygen {kg.method} needs a passphrase and none was given")
    if kg.method in ("pkcs5_pbkdf2/sha1", "pkcs5_pbkdf2"):
        assert kg.salt is not None and kg.iterations is not None and passphrase is not None
        fn = pbkdf2_sha1 if kg.method == "pkcs5_pbkdf2/sha1" else pbkdf2_sha1_legacy
        out = fn(_password(passphrase), kg.salt.data, kg.iterations, length)
    elif kg.method == "argon2id":
        assert passphrase is not None
        out = argon2id(_password(passphrase), kg, length)
    elif kg.method == "storedkey":
        assert kg.key is not None
        out = kg.key.data
    elif kg.method == "shell_cmd":
        out = _shell_cmd(kg, length)
    elif kg.method in ("randomkey", "urandomkey"):
        raise CryptbootError(
            f"{where}: keygen {kg.method} makes a new random key every time it runs, so this "
            "volume's key cannot be derived again: its data is unreadable after the first use",
            hint="randomkey suits scratch or swap volumes re-created at each NetBSD boot; "
                 "nothing can open an existing one")
    else:  # the parser admits no other method
        raise ConfigError(f"unknown keygen method {kg.method!r}", file=params.path, line=kg.line)
    if kg.shared:
        out = hkdf_expand_sha256(out, kg.shared.info, nbytes)
    return out


def derive_key(params: Params, passphrase: bytes | None) -> bytes:
    """The volume key (``keylength`` bits): every keygen's output XORed, as cgdconfig does."""
    key = b""
    for kg in params.keygens:
        log.debug(f"cgd: keygen {kg.method} ({params.path}:{kg.line})")
        key = _xor(key, keygen_output(kg, params, passphrase))
    nbytes = params.keylength // 8
    if len(key) < nbytes:
        raise ConfigError(
            f"the keygens make a {8 * len(key)}-bit key but keylength is {params.keylength}",
            file=params.path)
    return key[:nbytes]
