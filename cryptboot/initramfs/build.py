"""Assemble a cryptboot initramfs: the file set, then one reproducible compressed cpio.

The image uses a merged-/usr layout (``bin``, ``sbin``, ``lib``, ``lib64`` are symlinks into
``usr``), so every host file is stored once at its canonical path however it was reached.
"""

from __future__ import annotations

import gzip
import os
import re
import stat
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from cryptboot import log
from cryptboot.errors import CryptbootError
from cryptboot.initramfs import cpio, elf, kmod, pyfiles
from cryptboot.initramfs.cpio import Entry
from cryptboot.run import run, which

MERGED = {"bin": "usr/bin", "sbin": "usr/sbin", "lib": "usr/lib", "lib64": "usr/lib64"}
DIRS = ("dev", "proc", "sys", "run", "tmp", "etc", "root", "sysroot", "usr/bin", "usr/sbin",
        "usr/lib", "usr/lib64", "etc/cryptboot")
RULES_DIR = "/usr/lib/udev/rules.d"
# Rules for block devices, device-mapper and persistent names (Debian's and upstream names).
# Not 80-drivers.rules: every module in the image is listed in /etc/cryptboot/modules and
# loaded by cryptboot itself, so udev need not look up a driver for every coldplugged device
# (CPU time the boot's single emulated CPU spends before the prompt).
RULES = ("50-udev-default.rules", "60-block.rules", "60-persistent-storage.rules",
         "10-dm.rules", "11-dm-lvm.rules", "13-dm-disk.rules", "55-dm.rules",
         "60-persistent-storage-dm.rules", "95-dm-notify.rules")
# Keep device-mapper devices' udev database entries when udevd stops before the hand-off (the
# boot cleans the rest, as `udevadm info --cleanup-db`): the real system's coldplug "add" event
# for a mapping reads DM_UDEV_PRIMARY_SOURCE_FLAG from that entry, and without it device-mapper's
# rules mark the device not ready (SYSTEMD_READY=0: systemd would wait for its root forever).
# dracut keeps them the same way.
DM_PERSIST_RULES = "11-cryptboot-dm-persist.rules"
DM_PERSIST = b"""# cryptboot: keep device-mapper entries in udev's database for the real root
SUBSYSTEM!="block", GOTO="cryptboot_dm_end"
KERNEL!="dm-[0-9]*", GOTO="cryptboot_dm_end"
ACTION!="add|change", GOTO="cryptboot_dm_end"
OPTIONS+="db_persist"
LABEL="cryptboot_dm_end"
"""
SEARCH = ("/usr/sbin", "/usr/bin", "/sbin", "/bin", "/usr/lib/systemd", "/lib/systemd",
          "/usr/lib/udev")
# Which Debian package to install when a tool is missing.
PACKAGES = {
    "cryptsetup": "cryptsetup-bin", "udevadm": "udev", "blkid": "util-linux",
    "dmsetup": "dmsetup", "e2fsck": "e2fsprogs", "fsck.ext4": "e2fsprogs",
    "fsck.ext2": "e2fsprogs", "fsck.ext3": "e2fsprogs", "fsck.xfs": "xfsprogs",
    "fsck.btrfs": "btrfs-progs", "busybox": "busybox-static", "kmod": "kmod", "depmod": "kmod",
    "zstd": "zstd", "lz4": "lz4", "ata_id": "udev", "scsi_id": "udev",
}
COMPRESSORS = ("zstd", "lz4", "gzip", "none")
last_ssh_host_keys: list[str] = []  # issue 14: the last build's SSH host keys, for mkinitramfs


@dataclass(frozen=True)
class Options:
    """What ``cryptboot mkinitramfs`` was asked for."""

    output: str
    kver: str
    crypttab: str | None = None
    keyfiles: tuple[tuple[str, str], ...] = ()   # (source on host, path in image)
    cmdline: str = ""
    modules: tuple[str, ...] = ()
    fstypes: tuple[str, ...] = ("ext4",)
    compress: str = "zstd"
    epoch: int = 0
    cache_dir: str = ""
    # issue 18: the shutdown initramfs (/run/initramfs, see cryptboot/initramfs/shutdown.py)
    shutdown: bool = False
    # --- issue 13: LUKS2 token support ("clevis", "tpm2"), only when asked or found ---
    tokens: tuple[str, ...] = ()
    # --- issue 14: network and SSH unlock ---
    network: str = ""          # NIC drivers: "host", "generic", "" = only if SSH/--cmdline needs it
    ssh_authorized_keys: str | None = None  # an authorized_keys file: dropbear goes in
    ssh_key_dir: str = ""      # where the image's SSH host keys are kept (/etc/cryptboot/ssh)
    ssh_host_keys_from: str = ""  # convert these OpenSSH host keys (a directory, /etc/ssh)
    # issue 15: the console's keymap and font (cryptboot.initramfs.console); None = not read
    vconsole: str | None = None        # systemd's vconsole.conf
    keyboard: str | None = None        # Debian's /etc/default/keyboard (console-setup)
    keymaps: tuple[str, ...] = ()      # more keymaps, for rd.vconsole.keymap= at boot
    # --- issue 12: storage layers whose tools, rules and modules go in (lvm, md, btrfs) ---
    layers: tuple[str, ...] = ()


@dataclass
class Image:
    """The image being assembled: ``{path without leading slash: entry}``."""

    entries: dict[str, Entry] = field(default_factory=dict)
    by_source: dict[str, str] = field(default_factory=dict)  # host realpath -> image path
    has_key: bool = False
    ssh_host_keys: list[str] = field(default_factory=list)  # issue 14: public keys, to print

    def canon(self, path: str) -> str:
        """``/lib64/x`` -> ``usr/lib64/x``: the path through the image's own symlinks."""
        rel = path.lstrip("/")
        head, _, tail = rel.partition("/")
        if head in MERGED:
            rel = MERGED[head] + ("/" + tail if tail else "")
        return rel

    def add(self, entry: Entry) -> None:
        path = self.canon(entry.path)
        parent = os.path.dirname(path)
        if parent and parent not in self.entries:
            self.add(Entry.directory(parent))
        old = self.entries.get(path)
        if old is not None and stat.S_ISDIR(old.mode) and stat.S_ISDIR(entry.mode):
            return
        self.entries[path] = Entry(path, entry.mode, entry.data, entry.rdev)

    def add_file(self, src: str, dest: str, mode: int | None = None) -> None:
        """Copy host file ``src`` to ``dest``; a second copy of the same file becomes a symlink."""
        real = os.path.realpath(src)
        path = self.canon(dest)
        if path in self.entries:
            return
        first = self.by_source.get(real)
        if first is not None and first != path:
            self.add(Entry.symlink(path, os.path.relpath("/" + first, "/" + os.path.dirname(path))))
            return
        try:
            data = Path(real).read_bytes()
            perm = stat.S_IMODE(os.stat(real).st_mode) if mode is None else mode
        except OSError as e:
            raise CryptbootError(f"{src}: cannot read: {e.strerror}") from None
        self.by_source[real] = path
        self.add(Entry.file(path, data, perm))

    def add_symlink(self, path: str, target: str) -> None:
        self.add(Entry.symlink(self.canon(path), target))


def find_tool(name: str) -> str:
    """A program on the host, or an error naming the package that provides it."""
    if name.startswith("/"):
        if os.access(name, os.X_OK):
            return name
    else:
        for d in SEARCH:
            cand = os.path.join(d, name)
            if os.access(cand, os.X_OK) and os.path.isfile(cand):
                return cand
    base = os.path.basename(name)
    pkg = PACKAGES.get(base)
    raise CryptbootError(
        f"{base}: needed in the image but not found on this machine",
        hint=f"apt-get install {pkg}" if pkg else "install the package that provides it",
    )


def add_elf_with_deps(img: Image, files: dict[str, str]) -> None:
    """Add ``{dest: src}`` files and every shared library they need."""
    for dest, src in sorted(files.items()):
        img.add_file(src, dest)
    for dest, src in sorted(elf.dependencies(sorted(files.values())).items()):
        img.add_file(src, dest)


def tool_dest(path: str) -> str:
    """The canonical path of a host program: ``/sbin/cryptsetup`` -> ``/usr/sbin/cryptsetup``."""
    return os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))


def add_tool(img: Image, name: str) -> str:
    """Add a program (and its libraries) at its canonical path; symlinks keep their shape."""
    path = find_tool(name)
    dest = tool_dest(path)
    if os.path.islink(path):
        real = os.path.realpath(path)
        img.add_symlink(dest, os.path.relpath(tool_dest(real), os.path.dirname(dest)))
        path = real
        dest = tool_dest(real)
    add_elf_with_deps(img, {dest: path})
    return dest


def rule_programs(text: str) -> set[str]:
    """Programs a rules file runs (``PROGRAM``, ``IMPORT{program}``, ``RUN``), by path."""
    out: set[str] = set()
    for m in re.finditer(r'(PROGRAM|IMPORT\{program\}|RUN(?:\{program\})?)\+?=\s*"([^"]*)"', text):
        word = m.group(2).split()[0] if m.group(2).split() else ""
        if not word or word.startswith("$") or "%" in word:
            continue
        out.add(word if word.startswith("/") else f"/usr/lib/udev/{word}")
    return out


def add_udev(img: Image) -> None:
    udevadm = add_tool(img, "udevadm")
    img.add_symlink("/usr/lib/systemd/systemd-udevd", os.path.relpath(udevadm,
                                                                      "/usr/lib/systemd"))
    programs: set[str] = set()
    found = 0
    for name in RULES:
        src = os.path.join(RULES_DIR, name)
        if not os.path.exists(src):
            continue
        found += 1
        img.add_file(src, src, 0o644)
        programs |= rule_programs(Path(src).read_text())
    if not found:
        raise CryptbootError(f"no udev rules for block devices in {RULES_DIR}",
                             hint="apt-get install udev")
    img.add(Entry.file(f"{RULES_DIR.lstrip('/')}/{DM_PERSIST_RULES}", DM_PERSIST, 0o644))
    for prog in sorted(programs):
        add_tool(img, prog)


def add_busybox(img: Image) -> None:
    """busybox for the emergency shell; its applets where no real tool is installed."""
    path = find_tool("busybox")
    dest = "/usr/bin/busybox"
    add_elf_with_deps(img, {dest: path})
    proc = run([path, "--list-full"])
    for line in proc.stdout.decode().split():
        applet = img.canon(line)
        if applet in img.entries or applet.endswith("/busybox"):
            continue
        img.add_symlink("/" + applet, os.path.relpath(dest, "/" + os.path.dirname(applet)))


def add_modules(img: Image, opts: Options, nics: tuple[str, ...] = ()) -> kmod.ModuleSet:
    asked = list(opts.modules)
    if not asked:
        host = kmod.loaded_modules()
        storage = [m for m in host if _module_in(opts.kver, m, _BOOT_DIRS)]
        asked = storage or ["virtio_pci", "virtio_blk"]
        log.info(f"modules: {'loaded on this machine' if storage else 'defaults for a VM'}: "
                 + " ".join(asked))
        # the keyboard the passphrase is typed on (USB host controller, HID), as loaded here
        keyboard = [m for m in host if m not in asked and _module_in(opts.kver, m, _INPUT_DIRS)]
        if keyboard:
            log.info("modules: keyboard drivers loaded on this machine: " + " ".join(keyboard))
            asked += keyboard
    asked += [m for m in (*nics, "dm_mod", "dm_crypt") if m not in asked]
    if opts.layers:
        from cryptboot.initramfs.stack import modules as layer_modules

        asked += [m for m in layer_modules(opts.layers) if m not in asked]
    optional = [m for m in ("xts", "aesni_intel", "af_alg", "algif_skcipher") if m not in asked]
    mods = kmod.resolve(opts.kver, asked)
    extra: list[str] = []
    for m in optional + [t for t in opts.fstypes if t not in asked]:
        try:
            more = kmod.resolve(opts.kver, [m])
        except CryptbootError:
            continue  # an optional cipher this architecture does not have
        mods.files.update(more.files)
        extra += more.names
    mods = kmod.ModuleSet(mods.kver, tuple(list(mods.names) + extra), mods.files,
                          mods.builtin)
    base = f"/usr/lib/modules/{opts.kver}"
    for rel, src in sorted(mods.files.items()):
        img.add_file(src, f"{base}/{rel}", 0o644)
    for name, data in kmod.indexes(mods).items():
        img.add(Entry.file(f"{base}/{name}", data))
    builtin = set(mods.builtin) | set(kmod.builtin_names(opts.kver))
    wanted = "".join(f"{n}\n" for n in mods.names if n not in builtin)
    img.add(Entry.file("etc/cryptboot/modules", wanted.encode()))
    return mods


_BOOT_DIRS = ("kernel/drivers/block/", "kernel/drivers/scsi/", "kernel/drivers/ata/",
              "kernel/drivers/nvme/", "kernel/drivers/md/", "kernel/drivers/virtio/",
              "kernel/drivers/mmc/", "kernel/drivers/usb/storage/", "kernel/crypto/",
              "kernel/arch/x86/crypto/", "kernel/fs/")


# Keyboards: HID (USB keyboards, vendor quirks), PS/2 and other keyboard drivers, and the USB
# stack under them; dracut's host-only images carry these too.
_INPUT_DIRS = ("kernel/drivers/hid/", "kernel/drivers/input/keyboard/",
               "kernel/drivers/input/serio/", "kernel/drivers/usb/host/",
               "kernel/drivers/usb/core/", "kernel/drivers/usb/common/")


def _module_in(kver: str, name: str, dirs: tuple[str, ...]) -> bool:
    """Whether module ``name`` of ``kver`` lives in one of ``dirs``."""
    try:
        mods = kmod.resolve(kver, [name])
    except CryptbootError:
        return False
    return any(rel.startswith(dirs) for rel in list(mods.files)[:1])


def add_python(img: Image, cache_dir: str, layers: tuple[str, ...] = ()) -> None:
    for dest, src in python_runtime(cache_dir, layers):
        mode = None if not dest.endswith(".pyc") else 0o644
        img.add_file(src, dest, mode)
    img.add_symlink("/init", "usr/bin/cryptboot")


def python_runtime(cache_dir: str, layers: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """``(dest, src)`` of everything needed to run ``cryptboot``: the interpreter and its
    libraries, the stdlib subset, cryptboot, pyudev, libudev and the launcher."""
    files = pyfiles.python_files(cache_dir, layers)
    python = pyfiles.interpreter()
    libudev = elf.find_library("libudev.so.1")
    if libudev is None:
        raise CryptbootError("libudev.so.1 not found (pyudev needs it)",
                             hint="apt-get install libudev1")
    elfs = [python, libudev] + [f.src for f in files if f.src.endswith(".so")]
    deps = elf.dependencies(elfs)
    deps[elf.library_path(libudev)] = os.path.realpath(libudev)
    deps[python] = python
    rows = {f.dest: f.src for f in files}
    for dest, src in deps.items():
        rows.setdefault(dest, src)
    return sorted(rows.items())


def add_config(img: Image, opts: Options) -> None:
    if opts.crypttab:
        try:
            text = Path(opts.crypttab).read_text()
        except OSError as e:
            raise CryptbootError(f"{opts.crypttab}: cannot read: {e.strerror}") from None
        from cryptboot.config.crypttab import parse_crypttab

        parse_crypttab(text, opts.crypttab)  # a malformed crypttab fails the build, not the boot
        img.add(Entry.file("etc/crypttab", text.encode(), 0o644))
    for src, dest in opts.keyfiles:
        try:
            data = Path(src).read_bytes()
        except OSError as e:
            raise CryptbootError(f"keyfile {src}: cannot read: {e.strerror}") from None
        img.add(Entry.file(img.canon(dest), data, 0o400))
        img.has_key = True
    if opts.cmdline:
        img.add(Entry.file("etc/cryptboot/cmdline", (opts.cmdline.strip() + "\n").encode()))
    img.add(Entry.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n"))
    img.add(Entry.file("etc/group", _system_groups()))
    img.add(Entry.file("etc/initrd-release", b"NAME=cryptboot\nID=cryptboot\n"))


def _system_groups() -> bytes:
    """The host's system groups, so udev rules' GROUP= names resolve (disk, tty, kmem...)."""
    lines = ["root:x:0:"]
    try:
        for line in Path("/etc/group").read_text().splitlines():
            parts = line.split(":")
            if len(parts) >= 3 and parts[2].isdigit() and 0 < int(parts[2]) < 1000:
                lines.append(":".join(parts[:3]) + ":")
    except OSError:
        pass
    return ("\n".join(lines) + "\n").encode()


def assemble(opts: Options) -> Image:
    img = Image()
    for d in DIRS:
        img.add(Entry.directory(d, 0o1777 if d == "tmp" else 0o755))
    for link, target in MERGED.items():
        img.entries[link] = Entry.symlink(link, target)
    img.add(Entry.chardev("dev/console", 5, 1))
    img.add(Entry.chardev("dev/null", 1, 3, 0o666))
    cache = opts.cache_dir or default_cache_dir()
    add_python(img, cache, tuple(opts.layers))
    for tool in ("cryptsetup", "blkid", "dmsetup"):
        add_tool(img, tool)
    add_udev(img)
    # modprobe is busybox's (static, reads the depmod-made modules.dep and modules.alias), not
    # kmod's: the kernel runs /sbin/modprobe for every module request (crypto-*, fs-*...),
    # and kmod's dynamic start (libcrypto among its libraries) made loading the image's
    # modules twice as slow under emulation.
    for fstype in opts.fstypes:
        add_tool(img, f"fsck.{fstype}")
    if opts.layers:
        from cryptboot.initramfs.stack import add_layers

        add_layers(img, opts.layers)
    add_busybox(img)
    nics: tuple[str, ...] = ()
    if network_wanted(opts):  # issue 14: NIC drivers, udhcpc's script, dropbear
        from cryptboot.initramfs import network, ssh

        nics = tuple(network.nic_modules(opts.kver, opts.network or "host"))
        img.add(Entry.file(network.SCRIPT_DEST, network.script(), 0o755))
        if opts.ssh_authorized_keys:
            img.ssh_host_keys = ssh.add_ssh(img, opts)
    add_modules(img, opts, nics)
    add_config(img, opts)
    if opts.shutdown:
        from cryptboot.initramfs.shutdown import add_shutdown, describe

        log.info(describe(add_shutdown(img), img))
    if opts.tokens:  # issue 13: the token providers and what they need
        from cryptboot.initramfs.tokens import rows_for

        for dest, src in rows_for(opts.tokens, cache):
            img.add_file(src, dest)
    from cryptboot.initramfs.console import add_console

    add_console(img, opts)  # issue 15: keymap and font, only when configured
    return img


def network_wanted(opts: Options) -> bool:
    from cryptboot.initramfs.network import cmdline_needs_network

    return bool(opts.network or opts.ssh_authorized_keys or cmdline_needs_network(opts.cmdline)
                or "clevis" in opts.tokens  # issue 13: tang servers are on the network
                or crypttab_needs_network(opts.crypttab))


def crypttab_needs_network(path: str | None) -> bool:
    """A crypttab line with ``_netdev``: the volume needs the network at boot."""
    if not path:
        return False
    from cryptboot.config.crypttab import parse_crypttab

    try:
        text = Path(path).read_text()
    except OSError:
        return False  # add_config names the unreadable file
    return any(e.options.get("netdev") for e in parse_crypttab(text, path))


def default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or (
        "/var/cache" if os.geteuid() == 0 else os.path.expanduser("~/.cache"))
    return os.path.join(base, "cryptboot", "pyc")


def compress(data: bytes, how: str) -> bytes:
    if how == "none":
        return data
    if how == "gzip":
        return gzip.compress(data, compresslevel=9, mtime=0)
    if how == "lz4":
        return compress_lz4(data)
    zstd = which("zstd")
    if zstd is None:
        raise CryptbootError("zstd: command not found", hint="apt-get install zstd, "
                             "or use --compress gzip")
    # --long: long-distance matches (the same code in several libraries), ~0.4 MiB smaller.
    # The window is what the kernel allocates to unpack the image: 16 MiB (--long=24) is
    # 19 KB larger than a window of the whole image (--long=27) but unpacked 30-50 ms sooner
    # under QEMU TCG (27 MiB image); --stream-size shrinks it further for a smaller image.
    return run([zstd, "-q", "-19", "--long=24", f"--stream-size={len(data)}", "-T0", "-c", "-"],
               input=data).stdout


def compress_lz4(data: bytes) -> bytes:
    """lz4 in the legacy frame format (``-l``), the only one the kernel's initramfs unpacker
    reads. About 45% larger than zstd, but unpacked about twice as fast: under QEMU TCG
    (27 MiB image) the kernel took 0.27-0.32 s instead of 0.60 s."""
    lz4 = which("lz4")
    if lz4 is None:
        raise CryptbootError("lz4: command not found", hint="apt-get install lz4, "
                             "or use --compress zstd")
    return run([lz4, "-q", "-l", "-12", "--favor-decSpeed", "-c", "-"], input=data).stdout


def write_image(img: Image, opts: Options) -> tuple[int, int]:
    """Write the image to a temporary file beside ``output`` and rename it into place.

    Returns (uncompressed, compressed) sizes.
    """
    import io

    buf = io.BytesIO()
    raw = cpio.write(buf, img.entries.values(), opts.epoch)
    data = compress(buf.getvalue(), opts.compress)
    out = os.path.abspath(opts.output)
    fd, tmp = tempfile.mkstemp(prefix=".cryptboot-initramfs.", dir=os.path.dirname(out))
    try:
        os.fchmod(fd, 0o600 if img.has_key else 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return raw, len(data)


def build(opts: Options) -> tuple[int, int]:
    if opts.compress not in COMPRESSORS:
        raise CryptbootError(f"--compress {opts.compress}: expected one of "
                             + ", ".join(COMPRESSORS))
    if sys.version_info[:2] != (3, 11):
        log.warning("the image's Python is compiled for this interpreter "
                    f"({sys.version_info[0]}.{sys.version_info[1]})")
    img = assemble(opts)
    global last_ssh_host_keys
    last_ssh_host_keys = img.ssh_host_keys
    sizes = write_image(img, opts)
    if img.has_key:
        log.warning(f"{opts.output} holds a key: it is mode 0600; keep it where only root "
                    "can read it (e.g. /boot on an encrypted disk or a root-only directory)")
    return sizes
