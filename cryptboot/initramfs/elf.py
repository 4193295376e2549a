"""Shared-library dependencies of ELF files, read from the files themselves.

Running ``ldd`` would execute the binary's loader (and is wrong for a foreign root); reading
``PT_INTERP``, ``DT_NEEDED`` and ``DT_RUNPATH``/``DT_RPATH`` from the ELF headers is exact and
safe. Only 64-bit little-endian ELF (x86-64, aarch64) is handled: the machines cryptboot targets.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from cryptboot.errors import CryptbootError

ELF_MAGIC = b"\x7fELF"
PT_DYNAMIC = 2
PT_INTERP = 3
DT_NULL = 0
DT_NEEDED = 1
DT_STRTAB = 5
DT_RPATH = 15
DT_RUNPATH = 29
PT_LOAD = 1

# Where the loader looks when neither RUNPATH nor LD_LIBRARY_PATH says otherwise
# (Debian multiarch first, then the classic directories).
DEFAULT_LIBDIRS = (
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib/aarch64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/lib64",
    "/usr/lib64",
    "/lib",
    "/usr/lib",
)


@dataclass(frozen=True)
class ElfInfo:
    """What the dynamic loader needs to run a file: its interpreter, libraries, search path."""

    interp: str | None
    needed: tuple[str, ...]
    runpath: tuple[str, ...]


def is_elf(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == ELF_MAGIC
    except OSError:
        return False


def read_elf(path: str) -> ElfInfo:
    """Parse the program headers and the dynamic section of ``path``.

    A statically linked file gives no interpreter and no libraries.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise CryptbootError(f"{path}: cannot read: {e.strerror}") from None
    if data[:4] != ELF_MAGIC:
        raise CryptbootError(f"{path}: not an ELF file")
    if data[4] != 2 or data[5] != 1:
        raise CryptbootError(f"{path}: only 64-bit little-endian ELF files are supported")
    (phoff,) = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    interp: str | None = None
    dyn_off = dyn_size = 0
    loads: list[tuple[int, int, int]] = []  # (vaddr, offset, filesz)
    for i in range(phnum):
        base = phoff + i * phentsize
        p_type, _flags, p_offset, p_vaddr, _paddr, p_filesz = struct.unpack_from(
            "<IIQQQQ", data, base
        )
        if p_type == PT_INTERP:
            interp = data[p_offset:p_offset + p_filesz].rstrip(b"\0").decode()
        elif p_type == PT_DYNAMIC:
            dyn_off, dyn_size = p_offset, p_filesz
        elif p_type == PT_LOAD:
            loads.append((p_vaddr, p_offset, p_filesz))
    if not dyn_size:
        return ElfInfo(interp, (), ())
    entries: list[tuple[int, int]] = []
    for pos in range(dyn_off, dyn_off + dyn_size, 16):
        tag, val = struct.unpack_from("<qQ", data, pos)
        if tag == DT_NULL:
            break
        entries.append((tag, val))
    strtab_addr = next((v for t, v in entries if t == DT_STRTAB), None)
    if strtab_addr is None:
        return ElfInfo(interp, (), ())
    strtab = _vaddr_to_offset(strtab_addr, loads)

    def string(off: int) -> str:
        start = strtab + off
        return data[start:data.index(b"\0", start)].decode()

    needed = tuple(string(v) for t, v in entries if t == DT_NEEDED)
    runpath: list[str] = []
    for t, v in entries:
        if t in (DT_RUNPATH, DT_RPATH):
            origin = os.path.dirname(os.path.realpath(path))
            runpath += [p.replace("$ORIGIN", origin) for p in string(v).split(":") if p]
    return ElfInfo(interp, needed, tuple(runpath))


def _vaddr_to_offset(addr: int, loads: list[tuple[int, int, int]]) -> int:
    for vaddr, offset, filesz in loads:
        if vaddr <= addr < vaddr + filesz:
            return addr - vaddr + offset
    return addr


def find_library(soname: str, runpath: tuple[str, ...] = (),
                 libdirs: tuple[str, ...] = DEFAULT_LIBDIRS) -> str | None:
    """The path the loader would pick for ``soname``: RUNPATH first, then the default dirs."""
    for d in (*runpath, *libdirs):
        cand = os.path.join(d, soname)
        if os.path.exists(cand):
            return cand
    return None


def library_path(found: str) -> str:
    """Where a found library goes in the image: its directory made canonical, its soname kept.

    ``/lib/x86_64-linux-gnu/libc.so.6`` on a merged-/usr host becomes
    ``/usr/lib/x86_64-linux-gnu/libc.so.6``: one copy, however it was reached.
    """
    return os.path.join(os.path.realpath(os.path.dirname(found)), os.path.basename(found))


def dependencies(paths: list[str]) -> dict[str, str]:
    """Every file the loader needs to run ``paths``: ``{path in image: source on host}``.

    The interpreter is kept at its ``PT_INTERP`` path (the kernel opens it literally); libraries
    at :func:`library_path`. A library that cannot be found is an error naming it and who needs it.
    """
    out: dict[str, str] = {}
    todo = [p for p in paths if is_elf(p)]
    seen: set[str] = set()
    while todo:
        path = todo.pop()
        real = os.path.realpath(path)
        if real in seen:
            continue
        seen.add(real)
        info = read_elf(path)
        if info.interp and info.interp not in out:
            out[info.interp] = os.path.realpath(info.interp)
        for soname in info.needed:
            found = find_library(soname, info.runpath)
            if found is None:
                raise CryptbootError(
                    f"{soname}: shared library needed by {path} not found",
                    hint="install the package that provides it (apt-file search " + soname + ")",
                )
            dest = library_path(found)
            if dest not in out:
                out[dest] = os.path.realpath(found)
                todo.append(found)
    return out
