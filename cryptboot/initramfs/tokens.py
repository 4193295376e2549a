"""What an image needs for LUKS2 tokens (issue 13), added only when asked or found.

- ``clevis`` (tang, sss): cryptboot's own tang client (:mod:`cryptboot.keys.clevis`,
  :mod:`cryptboot.keys.tang`, which the plain image does not hold: the boot reaches them by
  name only), the standard-library modules they import (``http.client``...), and Debian's
  ``python3-cryptography`` (built for the image's interpreter) with ``_cffi_backend`` and the
  OpenSSL libraries, all under :data:`cryptboot.initramfs.pyfiles.SITE`, and OpenSSL's
  ``legacy`` provider module: ``cryptography``'s binding loads it with ``OSSL_PROVIDER_load()``
  the first time it is used (no ELF header names it; without it every operation fails with
  "DSO support routines::could not load the shared library"). It goes where the image's
  ``libcrypto`` looks for modules (its compiled-in ``MODULESDIR``). No ``openssl.cnf``: OpenSSL
  runs on its built-in defaults when the file is absent, and the host's may name providers or
  engines the image does not hold.
- ``tpm2`` (systemd-tpm2): :mod:`cryptboot.keys.tpm2`, systemd's cryptsetup token plugin
  ``libcryptsetup-token-systemd-tpm2.so`` where libcryptsetup looks for it, and the tpm2-tss
  libraries systemd ``dlopen()``\\ s (no ELF header names them): ``libtss2-esys``, ``-rc``,
  ``-mu``, ``-tctildr`` and the ``-tcti-device`` driver for ``/dev/tpmrm0``.

:func:`tokens_in_crypttab` finds which are needed for a host-only image: the LUKS2 headers of
the crypttab's devices on this machine.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

from cryptboot.config.model import DeviceSpec
from cryptboot.errors import CryptbootError
from cryptboot.initramfs import elf, pyfiles

KINDS = ("clevis", "tpm2")
DIST = "/usr/lib/python3/dist-packages"
CLEVIS_ROOTS = [
    "cryptboot.keys.clevis", "cryptboot.keys.tang", "cryptboot.keys.tokens", "http.client",
    # socket.getaddrinfo() encodes every host name, an address too, with the idna codec,
    # which the encodings package finds by name at run time (no import names it)
    "encodings.idna", "urllib.parse", "cryptography.exceptions",
    "cryptography.hazmat.primitives.hashes",
    "cryptography.hazmat.primitives.asymmetric.ec",
    "cryptography.hazmat.primitives.asymmetric.utils",
    "cryptography.hazmat.primitives.ciphers.aead",
    "cryptography.hazmat.backends.openssl.backend", "_cffi_backend",
]
TPM2_ROOTS = ["cryptboot.keys.tpm2", "cryptboot.keys.tpm2_pin", "cryptboot.keys.tokens"]
# the token providers of keys.providers.PROVIDERS: left out of the plain image's import walk
TOKEN_PROVIDERS = frozenset({"cryptboot.keys.clevis", "cryptboot.keys.tpm2",
                             "cryptboot.keys.tpm2_pin"})
TPM2_PLUGIN = "libcryptsetup-token-systemd-tpm2.so"
OSSL_PROVIDERS = ("legacy.so",)  # what cryptography's binding loads (default is built in)
TSS2_LIBS = ("libtss2-esys.so.0", "libtss2-rc.so.0", "libtss2-mu.so.0", "libtss2-tctildr.so.0",
             "libtss2-tcti-device.so.0")


def python_rows(roots: list[str], cache_dir: str) -> list[tuple[str, str]]:
    """``(dest, src)`` of ``roots`` and what they import (stdlib, cryptboot, Debian's
    dist-packages), compiled like the rest of the image's Python."""
    stdlib, dynload = pyfiles.stdlib_dirs()
    cb_dir = pyfiles.package_dir("cryptboot")
    dest_roots = {dynload: dynload, stdlib: stdlib, cb_dir: f"{pyfiles.SITE}/cryptboot",
                  DIST: pyfiles.SITE}
    search = [stdlib, dynload, os.path.dirname(cb_dir), DIST]
    from cryptboot.launch import LeanModules

    found = pyfiles.walk(
        roots, search, lazy_prefix="cryptography", provided=LeanModules.NAMES,
        shipped=lambda f: pyfiles._dest_for(os.path.realpath(f), dest_roots) is not None)
    missing = [r for r in roots if r not in found]
    if missing:
        raise CryptbootError(f"the image's tang client needs {', '.join(missing)}, not found "
                             "for this machine's Python",
                             hint="apt-get install python3-cryptography")
    rows: dict[str, str] = {}
    cache = Path(cache_dir)
    for name in sorted(found):
        src = os.path.realpath(found[name])
        dest = pyfiles._dest_for(src, dest_roots)
        if dest is None:
            continue
        if src.endswith(".py"):
            pyc_dest = dest[:-3] + ".pyc"
            pyc_src = cache / pyc_dest.lstrip("/")
            pyfiles._compile(src, pyc_src, pyc_dest, 0 if name.startswith("cryptboot") else 2)
            rows[pyc_dest] = str(pyc_src)
        else:
            rows[dest] = src
    sos = [s for s in rows.values() if s.endswith(".so")]
    for dest, src in elf.dependencies(sos).items():
        rows.setdefault(dest, src)
    if any(name.startswith("cryptography") for name in found):
        for dest, src in openssl_module_rows([s for d, s in rows.items()
                                              if os.path.basename(d).startswith("libcrypto.so")]):
            rows.setdefault(dest, src)
    return sorted(rows.items())


def modules_dir(libcrypto: str) -> str | None:
    """The directory a ``libcrypto`` loads provider modules from: the ``MODULESDIR: "..."``
    string OpenSSL 3 compiles in (what ``openssl version -m`` prints); None before OpenSSL 3."""
    with open(libcrypto, "rb") as f:
        data = f.read()
    start = data.find(b'MODULESDIR: "')
    if start < 0:
        return None
    start += len(b'MODULESDIR: "')
    end = data.find(b'"', start)
    return data[start:end].decode() if end > start else None


def openssl_module_rows(libcryptos: list[str]) -> list[tuple[str, str]]:
    """``(dest, src)`` of the OpenSSL provider modules ``cryptography`` loads at run time
    (:data:`OSSL_PROVIDERS`), for each ``libcrypto`` of the image, with their libraries."""
    rows: dict[str, str] = {}
    for lib in libcryptos:
        where = modules_dir(lib)
        if where is None:
            continue
        for module in OSSL_PROVIDERS:
            src = os.path.join(where, module)
            if not os.path.exists(src):
                raise CryptbootError(
                    f"{src} not found: cryptography loads OpenSSL's {module[:-3]} provider "
                    f"(libcrypto {lib} looks for it in {where})", hint="apt-get install libssl3")
            rows[src] = os.path.realpath(src)
    for dest, src in elf.dependencies(sorted(rows.values())).items():
        rows.setdefault(dest, src)
    return sorted(rows.items())


def tpm2_rows() -> list[tuple[str, str]]:
    """``(dest, src)`` of the token plugin, its libraries and the dlopen()ed tss2 ones."""
    plugins = glob.glob(f"/usr/lib/*/cryptsetup/{TPM2_PLUGIN}") + \
        glob.glob(f"/lib/*/cryptsetup/{TPM2_PLUGIN}")
    if not plugins:
        raise CryptbootError(f"{TPM2_PLUGIN} not found (TPM2 tokens need systemd's cryptsetup "
                             "token plugin)", hint="apt-get install systemd")
    plugin = os.path.realpath(plugins[0])
    rows = {plugin: plugin}
    for lib in TSS2_LIBS:
        path = elf.find_library(lib)
        if path is None:
            raise CryptbootError(f"{lib} not found (systemd's TPM2 support loads it)",
                                 hint="apt-get install libtss2-esys-3.0.2-0 libtss2-rc0 "
                                      "libtss2-mu0 libtss2-tctildr0 libtss2-tcti-device0")
        rows[elf.library_path(path)] = os.path.realpath(path)
    for dest, src in elf.dependencies(sorted(rows.values())).items():
        rows.setdefault(dest, src)
    return sorted(rows.items())


def rows_for(kinds: tuple[str, ...], cache_dir: str) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    for kind in kinds:
        if kind not in KINDS:
            raise CryptbootError(f"--token {kind}: expected one of {', '.join(KINDS)}")
    if "clevis" in kinds:
        rows += python_rows(CLEVIS_ROOTS, cache_dir)
    if "tpm2" in kinds:
        rows += python_rows(TPM2_ROOTS, cache_dir) + tpm2_rows()
    return rows


BY = {"UUID": "by-uuid", "LABEL": "by-label", "PARTUUID": "by-partuuid",
      "PARTLABEL": "by-partlabel", "ID": "by-id"}


def host_node(spec: DeviceSpec) -> str | None:
    """The device a crypttab spec names on this machine, if it is here (udev's links)."""
    if spec.prefix:
        return None
    path = spec.value if spec.kind.value == "PATH" else \
        f"/dev/disk/{BY[spec.kind.value]}/{spec.value}"
    return path if os.path.exists(path) else None


def tokens_in_crypttab(text: str, path: str) -> tuple[str, ...]:
    """The token kinds of the LUKS2 headers of the crypttab's devices found on this machine."""
    from cryptboot.config.crypttab import parse_crypttab
    from cryptboot.keys.tokens import TOKEN_KINDS, read_tokens

    kinds: set[str] = set()
    for entry in parse_crypttab(text, path):
        node = host_node(entry.source)
        if node is None:
            continue
        header = entry.options.get("header") or node
        for token in read_tokens(str(header)).values():
            kind = TOKEN_KINDS.get(str(token.get("type")))
            if kind is not None:
                kinds.add(kind.value)
    return tuple(sorted(kinds))
