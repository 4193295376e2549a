"""Kernel modules for the image: names resolved through ``modules.dep``, their closure, and the
``modules.*`` indexes regenerated for just that set with ``depmod``.

A module built into the kernel (``modules.builtin``) needs no file and is not an error; a name
that is neither a module nor built in is an error naming it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptboot.errors import CryptbootError
from cryptboot.paths import module_name as norm
from cryptboot.run import run, which

# Files depmod reads besides the modules themselves: kept so that ``modprobe`` in the image
# knows the built-in modules (and does not fail on them) and their aliases.
KEEP_FILES = ("modules.order", "modules.builtin", "modules.builtin.modinfo")
# What a virtual machine and a LUKS root need when nothing else is asked: the virtio storage
# drivers, device-mapper with dm-crypt, and the ciphers of cryptsetup's defaults
# (aes-xts-plain64; argon2 and pbkdf2 run in user space) with their accelerated versions,
# plus the kernel crypto user API that cryptsetup uses to decrypt LUKS2 keyslots.
DEFAULT_MODULES = (
    "virtio_pci", "virtio_blk", "virtio_scsi", "sd_mod",
    "dm_mod", "dm_crypt", "xts", "aesni_intel", "af_alg", "algif_skcipher",
)


@dataclass(frozen=True)
class ModuleSet:
    """The modules of one kernel: ``files`` maps a path under /lib/modules/KVER to the host file."""

    kver: str
    names: tuple[str, ...]         # asked for, normalised (dashes become underscores)
    files: dict[str, str]          # relative path in /lib/modules/KVER -> host path
    builtin: tuple[str, ...]       # asked for but built into the kernel


def module_dir(kver: str, root: str = "/") -> Path:
    return Path(root) / "lib/modules" / kver


def _parse_dep(moddir: Path) -> dict[str, tuple[str, list[str]]]:
    """``{name: (path, [dependency paths])}`` from ``modules.dep``."""
    try:
        text = (moddir / "modules.dep").read_text()
    except FileNotFoundError:
        raise CryptbootError(
            f"{moddir}/modules.dep not found: no modules for this kernel version",
            hint="install the kernel's package (e.g. linux-image-cloud-amd64) or pass --kver",
        ) from None
    out: dict[str, tuple[str, list[str]]] = {}
    for line in text.splitlines():
        path, _, deps = line.partition(":")
        if not path:
            continue
        base = os.path.basename(path).split(".ko")[0]
        out[norm(base)] = (path, deps.split())
    return out


def _builtin(moddir: Path) -> set[str]:
    try:
        lines = (moddir / "modules.builtin").read_text().splitlines()
    except FileNotFoundError:
        return set()
    return {norm(os.path.basename(p).split(".ko")[0]) for p in lines if p}


def builtin_names(kver: str, root: str = "/") -> set[str]:
    """Modules built into kernel ``kver`` (nothing to load)."""
    return _builtin(module_dir(kver, root))


def _softdeps(moddir: Path) -> dict[str, list[str]]:
    """``softdep NAME pre: A B post: C`` lines: modules loaded with NAME (crc32c for ext4...)."""
    out: dict[str, list[str]] = {}
    try:
        text = (moddir / "modules.softdep").read_text()
    except FileNotFoundError:
        return out
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 3 and words[0] == "softdep":
            out[norm(words[1])] = [norm(w) for w in words[2:] if not w.endswith(":")]
    return out


def resolve(kver: str, names: list[str], root: str = "/") -> ModuleSet:
    """The files of ``names`` and of everything they depend on (hard and soft dependencies)."""
    moddir = module_dir(kver, root)
    deps = _parse_dep(moddir)
    builtin = _builtin(moddir)
    soft = _softdeps(moddir)
    files: dict[str, str] = {}
    asked: list[str] = []
    builtin_asked: list[str] = []
    todo: list[tuple[str, bool]] = [(norm(n), True) for n in names]
    seen: set[str] = set()
    while todo:
        name, required = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        if required and name not in asked:
            asked.append(name)
        if name in deps:
            path, hard = deps[name]
            files[path] = str(moddir / path)
            for d in hard:
                files[d] = str(moddir / d)
            todo.extend((s, False) for s in soft.get(name, []))
        elif name in builtin:
            if required:
                builtin_asked.append(name)
        elif required:
            raise CryptbootError(
                f"kernel module {name} not found for kernel {kver} (not in {moddir}/modules.dep "
                "nor built in)",
                hint="check the name (modinfo NAME), or install the package with the kernel's "
                     "modules (linux-image-*)",
            )
    return ModuleSet(kver, tuple(sorted(asked)), files, tuple(sorted(builtin_asked)))


def loaded_modules(proc_modules: str = "/proc/modules") -> list[str]:
    """Modules loaded on this machine now (none on a machine with everything built in)."""
    try:
        with open(proc_modules) as f:
            return [line.split()[0] for line in f if line.strip()]
    except FileNotFoundError:
        return []


def indexes(mods: ModuleSet, root: str = "/") -> dict[str, bytes]:
    """``modules.*`` regenerated by ``depmod`` for exactly ``mods``: ``{file name: bytes}``."""
    depmod = which("depmod")
    if depmod is None:
        raise CryptbootError("depmod: command not found", hint="apt-get install kmod")
    moddir = module_dir(mods.kver, root)
    with tempfile.TemporaryDirectory(prefix="cryptboot-depmod-") as tmp:
        tdir = Path(tmp) / "lib/modules" / mods.kver
        tdir.mkdir(parents=True)
        for rel, src in mods.files.items():
            dst = tdir / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(src, dst)
        for name in KEEP_FILES:
            if (moddir / name).exists():
                shutil.copyfile(moddir / name, tdir / name)
        run([depmod, "-b", tmp, mods.kver])
        out: dict[str, bytes] = {}
        for p in sorted(tdir.iterdir()):
            if p.is_file() and not p.is_symlink() and p.name.startswith("modules."):
                out[p.name] = p.read_bytes()
        return out
