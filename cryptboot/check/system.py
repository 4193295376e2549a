"""What the running system's next boot needs, read from sysfs, udev's database, mountinfo and
the LUKS headers: the block stack under a device, each layer's kernel modules and programs.

Every function takes a :class:`SystemRoot`, so that tests (and a VM test, with facts collected
in the guest) can feed a tree laid out like ``/``: ``sys/class/block/NAME`` (links into
``sys/devices``, as in sysfs), ``dev/NAME`` (device nodes, or files holding a LUKS header),
``run/udev/data/bMAJ:MIN`` and ``proc/self/mountinfo``. Nothing here writes anything.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from cryptboot.config.model import DeviceSpec, SpecKind
from cryptboot.run import run, which

# md personality (sys/block/mdX/md/level) -> kernel module
MD_MODULES = {"raid0": "raid0", "raid1": "raid1", "raid4": "raid456", "raid5": "raid456",
              "raid6": "raid456", "raid10": "raid10", "linear": "linear"}
# udev property holding each device spec kind
SPEC_PROPS = {SpecKind.UUID: "ID_FS_UUID", SpecKind.LABEL: "ID_FS_LABEL",
              SpecKind.PARTUUID: "ID_PART_ENTRY_UUID", SpecKind.PARTLABEL: "ID_PART_ENTRY_NAME"}
BLKID_TAGS = {SpecKind.UUID: "UUID", SpecKind.LABEL: "LABEL", SpecKind.PARTUUID: "PARTUUID",
              SpecKind.PARTLABEL: "PARTLABEL"}


@dataclass(frozen=True)
class SystemRoot:
    """Where the system's facts are read: ``/`` on the running system."""

    root: Path = Path("/")

    @property
    def sysfs(self) -> Path:
        return self.root / "sys"

    @property
    def dev(self) -> Path:
        return self.root / "dev"

    def node(self, name: str) -> str:
        """The device node of block device ``name`` as the user knows it (``/dev/vda``)."""
        return f"/dev/{name}"

    def path(self, node: str) -> str:
        """``/dev/X`` mapped under the root (the file to give cryptsetup)."""
        return str(self.root / node.lstrip("/"))


@dataclass
class Block:
    """One block device and what it is made of."""

    name: str                     # sysfs name: vda, vda2, dm-0, md0, loop0
    devnum: str                   # MAJ:MIN
    kind: str                     # disk, part, crypt, lvm, dm, md, loop
    slaves: list[str] = field(default_factory=list)
    dm_name: str | None = None
    props: dict[str, str] = field(default_factory=dict)  # udev database properties

    @property
    def node(self) -> str:
        return f"/dev/mapper/{self.dm_name}" if self.dm_name else f"/dev/{self.name}"


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _link_name(path: Path) -> str | None:
    try:
        return os.path.basename(os.readlink(path))
    except OSError:
        return None


def udev_props(sr: SystemRoot, devnum: str) -> dict[str, str]:
    """``E:KEY=VALUE`` lines of udev's database entry for block device MAJ:MIN."""
    text = _read(sr.root / "run/udev/data" / f"b{devnum}") or ""
    out = {}
    for line in text.splitlines():
        if line.startswith("E:"):
            k, _, v = line[2:].partition("=")
            out[k] = v
    return out


def block(sr: SystemRoot, name: str) -> Block | None:
    base = sr.sysfs / "class/block" / name
    devnum = _read(base / "dev")
    if devnum is None:
        return None
    slaves = sorted(os.listdir(base / "slaves")) if (base / "slaves").is_dir() else []
    dm_name = _read(base / "dm/name")
    kind = "disk"
    if dm_name is not None:
        uuid = _read(base / "dm/uuid") or ""
        kind = "crypt" if uuid.startswith("CRYPT-") else "lvm" if uuid.startswith("LVM-") \
            else "dm"
    elif (base / "md").is_dir():
        kind = "md"
    elif (base / "partition").exists():
        kind = "part"
        parent = os.path.basename(os.path.dirname(os.path.realpath(base)))
        slaves = [parent]
    elif name.startswith("loop"):
        kind = "loop"
    return Block(name, devnum, kind, slaves, dm_name, udev_props(sr, devnum))


def by_devnum(sr: SystemRoot, devnum: str) -> str | None:
    """The sysfs name of block device MAJ:MIN."""
    link = sr.sysfs / "dev/block" / devnum
    if os.path.lexists(link):
        return os.path.basename(os.path.realpath(link))
    cls = sr.sysfs / "class/block"
    if cls.is_dir():
        for name in sorted(os.listdir(cls)):
            if _read(cls / name / "dev") == devnum:
                return name
    return None


def stack(sr: SystemRoot, name: str) -> list[Block]:
    """``name`` and every device under it (top first, depth first)."""
    out: list[Block] = []
    seen: set[str] = set()
    todo = [name]
    while todo:
        n = todo.pop(0)
        if n in seen:
            continue
        seen.add(n)
        b = block(sr, n)
        if b is None:
            continue
        out.append(b)
        todo.extend(b.slaves)
    return out


def drivers(sr: SystemRoot, name: str) -> list[tuple[str, str, str | None]]:
    """(device, driver, module or None when built in) of the device behind disk ``name`` and
    of each of its parents (the controller, the bus): ``[("virtio1", "virtio_blk",
    "virtio_blk"), ("0000:00:02.0", "virtio-pci", "virtio_pci")]``."""
    dev = sr.sysfs / "class/block" / name / "device"
    if not os.path.lexists(dev):
        return []
    out: list[tuple[str, str, str | None]] = []
    top = os.path.realpath(sr.sysfs / "devices")
    cur = os.path.realpath(dev)
    while cur.startswith(top + "/"):
        driver = Path(cur) / "driver"
        dname = _link_name(driver)
        if dname is not None:
            out.append((os.path.basename(cur), dname, _link_name(driver / "module")))
        cur = os.path.dirname(cur)
    return out


def md_module(sr: SystemRoot, name: str) -> str | None:
    level = _read(sr.sysfs / "class/block" / name / "md/level")
    return MD_MODULES.get(level or "")


@dataclass(frozen=True)
class Mount:
    target: str
    devnum: str
    fstype: str
    source: str


def mounts(sr: SystemRoot) -> dict[str, Mount]:
    """The last mount on each mount point (the visible one), from mountinfo."""
    out: dict[str, Mount] = {}
    text = _read(sr.root / "proc/self/mountinfo") or ""
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        f = left.split()
        r = right.split()
        if not sep or len(f) < 5 or len(r) < 2:
            continue
        out[f[4]] = Mount(f[4], f[2], r[0], r[1])
    return out


def mount_block(sr: SystemRoot, m: Mount) -> str | None:
    """The block device under mount ``m`` (btrfs reports an anonymous 0:N: use its source)."""
    if not m.devnum.startswith("0:"):
        name = by_devnum(sr, m.devnum)
        if name is not None:
            return name
    if m.source.startswith("/dev/"):
        real = os.path.realpath(sr.path(m.source))
        name = os.path.basename(real)
        if (sr.sysfs / "class/block" / name).exists():
            return name
    return None


def resolve(sr: SystemRoot, spec: DeviceSpec) -> str | None:
    """The sysfs name of the block device ``spec`` names on this system, else None.

    Paths are looked up under the root's ``dev``; UUIDs and labels in udev's database, then
    with ``blkid`` on the running system (root ``/``)."""
    if spec.kind in (SpecKind.PATH, SpecKind.ID):
        node = spec.value if spec.kind is SpecKind.PATH else f"/dev/disk/by-id/{spec.value}"
        path = sr.path(node)
        if not os.path.exists(path):
            # no node (facts collected elsewhere): /dev/NAME is sysfs' NAME
            name = node[len("/dev/"):] if node.startswith("/dev/") else ""
            if "/" not in name and name and (sr.sysfs / "class/block" / name).exists():
                return name
            return None
        real = os.path.realpath(path)
        name = os.path.basename(real)
        if (sr.sysfs / "class/block" / name).exists():
            return name
        try:
            st = os.stat(real)
        except OSError:
            return None
        import stat

        if stat.S_ISBLK(st.st_mode):
            return by_devnum(sr, f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}")
        return None
    value = spec.value.lower() if spec.kind is SpecKind.UUID else spec.value
    prop = SPEC_PROPS[spec.kind]
    cls = sr.sysfs / "class/block"
    names = sorted(os.listdir(cls)) if cls.is_dir() else []
    for name in names:
        b = block(sr, name)
        if b is None:
            continue
        got = b.props.get(prop)
        if got is None:
            continue
        got = got.lower() if spec.kind is SpecKind.UUID else got
        if got == value or (spec.prefix and got.replace("-", "").startswith(
                value.replace("-", ""))):
            return name
    # no udev database entry: ask blkid about the device nodes under this root
    blkid = which("blkid")
    if blkid is None:
        return None
    for name in names:
        path = sr.path(sr.node(name))
        if not os.path.exists(path):
            continue
        proc = run([blkid, "-p", "-o", "export", path], check=False)
        for line in proc.stdout.decode(errors="replace").splitlines():
            k, _, v = line.partition("=")
            if k == BLKID_TAGS[spec.kind]:
                got = v.lower() if spec.kind is SpecKind.UUID else v
                if got == value or (spec.prefix and got.replace("-", "").startswith(
                        value.replace("-", ""))):
                    return name
    return None


# ---------------------------------------------------------------------------------------------
# LUKS headers


@dataclass(frozen=True)
class LuksInfo:
    version: str
    ciphers: tuple[str, ...]     # the data segments' cipher specs (aes-xts-plain64)
    hashes: tuple[str, ...]      # the digest / PBKDF hashes (user space, for the report)
    integrity: tuple[str, ...] = ()


def is_luks(path: str) -> bool:
    return run(["cryptsetup", "isLuks", path], check=False).returncode == 0


def luks_dump(path: str) -> LuksInfo | None:
    """The cipher and hash of the LUKS volume at ``path`` as ``cryptsetup luksDump`` reports
    them; None when it is not LUKS."""
    proc = run(["cryptsetup", "luksDump", path], check=False)
    if proc.returncode != 0:
        return None
    text = proc.stdout.decode(errors="replace")
    version = ""
    ciphers: list[str] = []
    hashes: list[str] = []
    integrity: list[str] = []
    name = mode = ""
    section = ""
    for line in text.splitlines():
        if line and not line[0].isspace() and line.rstrip().endswith(":") and ":" not in \
                line.rstrip()[:-1]:
            section = line.strip().rstrip(":")
            continue
        key, _, value = line.strip().partition(":")
        value = value.strip()
        if key == "Version":
            version = value
        elif key == "Cipher name":       # LUKS1
            name = value
        elif key == "Cipher mode":
            mode = value
        elif key == "Hash spec":
            hashes.append(value)
        elif key == "cipher" and section == "Data segments":   # LUKS2
            ciphers.append(value)
        elif key == "integrity" and section == "Data segments" and value != "(none)":
            integrity.append(value)
        elif key == "Hash" and section == "Digests":
            hashes.append(value)
    if name:
        ciphers.append(f"{name}-{mode}" if mode else name)
    return LuksInfo(version, tuple(dict.fromkeys(ciphers)), tuple(dict.fromkeys(hashes)),
                    tuple(dict.fromkeys(integrity)))


def cipher_algorithms(spec: str) -> list[str]:
    """The kernel crypto algorithms (``crypto-NAME`` module aliases) a dm-crypt cipher spec
    needs: ``aes-xts-plain64`` -> aes, xts; ``aes-cbc-essiv:sha256`` -> aes, cbc, essiv,
    sha256; ``capi:xts(aes)-plain64`` -> xts, aes."""
    spec = spec.strip()
    if spec.startswith("capi:"):
        body = spec[5:].rsplit("-", 1)[0]
        import re

        return list(dict.fromkeys(w for w in re.split(r"[()]+", body) if w))
    words = spec.split("-")
    cipher = words[0]
    mode = words[1] if len(words) > 1 else "cbc"
    iv = "-".join(words[2:])
    out = [cipher, mode]
    ivmode, _, ivopt = iv.partition(":")
    if ivmode == "essiv":
        out.append("essiv")
        if ivopt:
            out.append(ivopt)
    elif ivmode in ("lmk", "tcw"):
        out.append("md5")
    return [a for a in dict.fromkeys(out) if a]


# ---------------------------------------------------------------------------------------------
# The kernel's module indexes (the modules of the kernel the image is for, on this system)


@dataclass
class KernelModules:
    kver: str
    moddir: Path
    deps: dict[str, list[str]]          # module -> its hard dependencies (names)
    builtin: set[str]
    aliases: dict[str, set[str]]        # alias -> modules providing it (crypto-xts -> {xts})
    builtin_aliases: set[str]

    def known(self) -> bool:
        return bool(self.deps or self.builtin)

    def providers(self, alias: str) -> tuple[set[str], bool]:
        """(modules providing ``alias``, whether the kernel has it built in)."""
        return self.aliases.get(alias, set()), alias in self.builtin_aliases


def _modname(path: str) -> str:
    return os.path.basename(path).split(".ko")[0].replace("-", "_")


def kernel_modules(kver: str, root: Path = Path("/")) -> KernelModules:
    moddir = root / "lib/modules" / kver
    deps: dict[str, list[str]] = {}
    for line in (_read(moddir / "modules.dep") or "").splitlines():
        path, _, rest = line.partition(":")
        if path:
            deps[_modname(path)] = [_modname(d) for d in rest.split()]
    builtin = {_modname(p) for p in (_read(moddir / "modules.builtin") or "").split()}
    aliases: dict[str, set[str]] = {}
    for line in (_read(moddir / "modules.alias") or "").splitlines():
        w = line.split()
        if len(w) == 3 and w[0] == "alias" and w[1].startswith("crypto-"):
            aliases.setdefault(w[1], set()).add(w[2].replace("-", "_"))
    builtin_aliases: set[str] = set()
    try:
        raw = (moddir / "modules.builtin.modinfo").read_bytes()
    except OSError:
        raw = b""
    for rec in raw.split(b"\0"):
        _, _, kv = rec.partition(b".")
        if kv.startswith(b"alias=crypto-"):
            builtin_aliases.add(kv[6:].decode(errors="replace"))
    return KernelModules(kver, moddir, deps, builtin, aliases, builtin_aliases)


def newest_kernel(boot: Path = Path("/boot")) -> str | None:
    """The version of the newest ``vmlinuz-VER`` in /boot (what the boot loader starts)."""
    try:
        names = [n[len("vmlinuz-"):] for n in os.listdir(boot) if n.startswith("vmlinuz-")]
    except OSError:
        return None
    if not names:
        return None
    import re

    def key(v: str) -> list[tuple[int, str]]:
        return [(int(p), "") if p.isdigit() else (-1, p) for p in re.split(r"[.-]", v)]

    return sorted(names, key=key)[-1]
