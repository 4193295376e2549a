"""The cgd backend: open a NetBSD cgd(4) volume at boot.

On Linux, a cgd ``aes-xts`` volume is exactly a dm-crypt ``plain`` mapping: no header, data from
byte 0, the raw cgd key as the dm-crypt key, and the sector number as the XTS tweak (``plain64``).
So this module derives the key from the params file the way cgdconfig(8) does, checks it on the
first sectors in Python when the params file names a ``verify_method``, and runs::

    cryptsetup open --type plain --cipher aes-xts-plain64 --key-size 256|512 --hash plain \\
        --key-file=- --offset 0 --sector-size S DEVICE NAME

with the key on stdin. ``--hash plain`` matters: cryptsetup hashes a key read from stdin
(``--key-file=-``) with the plain-mode default hash unless told ``plain`` (cryptsetup.c
``action_open_plain``); with it, exactly key-size bytes are read and used as they are.

Without the ``cryptography`` package (a lean initramfs), the check runs the way cgdconfig runs it:
on the mapping, which is closed again when the check fails.

The other cgd ciphers have no dm-crypt equivalent and are refused with a message saying so (see
:func:`linux_refusal`). On NetBSD itself the backend hands over to ``cgdconfig``
(:mod:`cryptboot.unlock.cgd_netbsd`).
"""

from __future__ import annotations

import os
import stat
import sys

from cryptboot import log
from cryptboot.errors import CryptbootError, WrongKey
from cryptboot.run import run, which
from cryptboot.unlock.cgd_params import Params, load_params

MAPPER_DIR = "/dev/mapper"
BLKSSZGET = 0x1268  # <linux/fs.h>: logical sector size of a block device
XTS_KEYLENGTHS = (256, 512)
READABLE = ("Linux can open cgd volumes made with 'algorithm aes-xts;' and 'keylength 256;' or "
            "'keylength 512;' (any keygen, any verify_method)")


def needs_passphrase(params_path: str) -> bool:
    """True if any keygen of the params file is made from a passphrase."""
    return load_params(params_path).needs_passphrase


def linux_refusal(params: Params) -> str | None:
    """Why Linux cannot map this cgd volume, or None if it can."""
    alg = params.algorithm
    if alg == "aes-xts":
        if params.keylength not in XTS_KEYLENGTHS:
            return (f"{params.path}: aes-xts with keylength {params.keylength} is not a cgd "
                    "setting (cgd's aes-xts takes 256 or 512 bits)")
        return None
    if alg in ("aes-cbc", "3des-cbc", "blowfish-cbc"):
        times = "eight times" if params.iv_method in ("encblkno", "encblkno8") else "once"
        why = (f"cgd's {alg} uses as each sector's IV the cipher applied {times} to the sector "
               f"number (iv-method {params.iv_method}), and no dm-crypt IV mode computes that "
               "(essiv encrypts with a hash of the key, eboiv encrypts the byte offset)")
    elif alg == "adiantum":
        why = ("cgd's adiantum takes a 16-byte sector tweak and Linux's adiantum a 32-byte one, "
               "so the same key gives different sectors")
    else:
        why = f"{alg!r} is not a cgd algorithm known here"
    return (f"{params.path}: cgd algorithm {alg} has no dm-crypt equivalent: {why}. {READABLE}")


def ensure_openable(params_path: str) -> None:
    """Raise the refusal for a cgd volume Linux cannot map (before asking for a passphrase)."""
    if _on_netbsd():
        return
    reason = linux_refusal(load_params(params_path))
    if reason:
        raise CryptbootError(
            reason,
            hint="open it on NetBSD, or copy its data to a new aes-xts cgd "
                 "('cgdconfig -g -V gpt aes-xts 512' writes such a params file)")


def sector_size(device: str) -> int:
    """The logical sector size of ``device`` (cgd counts sectors in it); 512 for a file."""
    import fcntl

    try:
        st = os.stat(device)
    except OSError as e:
        raise CryptbootError(f"{device}: {e.strerror}") from None
    if not stat.S_ISBLK(st.st_mode):
        return 512
    fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    try:
        buf = fcntl.ioctl(fd, BLKSSZGET, b"\0\0\0\0")
    except OSError:
        return 512
    finally:
        os.close(fd)
    return int.from_bytes(buf, sys.byteorder)


def check_key(params: Params, key: bytes, device: str, secsize: int) -> bool | None:
    """Run the params file's ``verify_method`` on ``device`` decrypted in Python with ``key``."""
    from cryptboot.unlock import cgd_cipher, cgd_verify

    if params.verify_method not in cgd_verify.CHECKABLE:
        return None
    try:
        fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise CryptbootError(f"{device}: cannot read it to check the key: {e.strerror}") from None

    def read(offset: int, length: int) -> bytes:
        first = offset // secsize
        end = -(-(offset + length) // secsize)
        data = os.pread(fd, (end - first) * secsize, first * secsize)
        data = data[:len(data) - len(data) % secsize]
        plain = cgd_cipher.decrypt(params.algorithm, params.iv_method, key, first, data, secsize)
        return plain[offset - first * secsize:offset - first * secsize + length]

    try:
        return cgd_verify.verify(params.verify_method, read)
    except OSError as e:
        raise CryptbootError(f"{device}: cannot read it to check the key: {e.strerror}") from None
    finally:
        os.close(fd)


def _python_cipher() -> bool:
    """Whether sectors can be decrypted in Python (the ``cryptography`` package is there)."""
    try:
        import cryptography.hazmat.primitives.ciphers  # noqa: F401
    except ImportError:
        return False
    return True


def check_mapped(params: Params, mapping: str) -> bool | None:
    """Run the ``verify_method`` on an open mapping (the kernel decrypts)."""
    from cryptboot.unlock import cgd_verify

    if params.verify_method not in cgd_verify.CHECKABLE:
        return None
    try:
        fd = os.open(mapping, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise CryptbootError(f"{mapping}: cannot read it to check the key: {e.strerror}") from None
    try:
        return cgd_verify.verify(params.verify_method, lambda off, n: os.pread(fd, n, off))
    finally:
        os.close(fd)


def cryptsetup_argv(params: Params, device: str, name: str, secsize: int) -> list[str]:
    """The dm-crypt plain mapping that reads a cgd aes-xts volume (the key goes on stdin)."""
    argv = [
        "cryptsetup", "open", "--type", "plain", "--cipher", "aes-xts-plain64",
        "--key-size", str(params.keylength), "--hash", "plain", "--key-file=-",
        "--offset", "0", "--skip", "0", "--sector-size", str(secsize), "--batch-mode",
    ]
    if secsize != 512:
        argv.append("--iv-large-sectors")  # cgd numbers sectors in the disk's own unit
    return argv + [device, name]


def _on_netbsd() -> bool:
    return sys.platform.startswith("netbsd") and which("cgdconfig") is not None


def open_cgd(name: str, device: str, params_path: str, passphrase: bytes | None) -> None:
    """Open the cgd volume on ``device`` as ``name`` (/dev/mapper/NAME; on NetBSD the unit).

    Raises :class:`WrongKey` when the params file's verify_method shows the key is wrong, and
    :class:`CryptbootError` when the volume cannot be mapped on Linux or the key cannot be made.
    """
    if _on_netbsd():
        from cryptboot.unlock.cgd_netbsd import configure

        configure(name, device, params_path, passphrase)
        return
    params = load_params(params_path)
    reason = linux_refusal(params)
    if reason:
        raise CryptbootError(f"cgd volume {name}: {reason}")
    from cryptboot.unlock.cgd_keygen import derive_key

    key = derive_key(params, passphrase)
    secsize = sector_size(device)
    in_python = _python_cipher()
    ok = check_key(params, key, device, secsize) if in_python else None
    if ok is False:
        raise _wrong_key(name, device, params)
    run(cryptsetup_argv(params, device, name, secsize), input=key)
    if not in_python:
        log.debug(f"cgd volume {name}: no cryptography package, checking the key on the mapping")
        ok = check_mapped(params, os.path.join(MAPPER_DIR, name))
        if ok is False:
            run(["cryptsetup", "close", name], check=False)
            raise _wrong_key(name, device, params)
    if ok is None:
        log.warning(f"cgd volume {name}: {params.path} has verify_method "
                    f"{params.verify_method}, so the key cannot be checked; a wrong passphrase "
                    "will show up as an unreadable filesystem")
    else:
        log.debug(f"cgd volume {name}: key checked ({params.verify_method})")


def _wrong_key(name: str, device: str, params: Params) -> WrongKey:
    from cryptboot.unlock.cgd_verify import describe

    return WrongKey(
        f"cgd volume {name}: wrong passphrase or key: no {describe(params.verify_method)} "
        f"in the decrypted start of {device} (verify_method {params.verify_method})")
