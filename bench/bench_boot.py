"""Boot benchmark: one LUKS2 disk, one kernel, the same QEMU flags, many initramfs images.

Contenders: cryptboot, Debian's dracut with its crypt module, initramfs-tools with
cryptsetup-initramfs, and the floor: a busybox shell ``/init`` doing insmod + cryptsetup + mount
+ switch_root and nothing else (built here). Every row says how its image was built:

- **passphrase boot** (what a person at the console sees): each peer in its smallest documented
  configuration that boots the disk (dracut ``--drivers``, initramfs-tools ``MODULES=list``) and
  in its generic one (dracut ``--no-hostonly``, initramfs-tools ``MODULES=most``), cryptboot with
  the modules of this disk and with every storage driver of the kernel. The passphrase is typed
  0.5 s after the prompt appears and that wait is taken out of the total. cryptboot does work
  in that window on purpose (cipher modules, imports, cryptsetup start), the floor does not.
- **unattended boot** (nothing waits on a person): the key in the image for all four (the
  floor's ``cryptsetup --key-file``, cryptboot's crypttab + ``--keyfile``, initramfs-tools'
  ``cryptopts=…,key=FILE`` with the file added by a hook, dracut's ``rd.luks.key=FILE`` with the
  file ``--include``d), smallest configurations; kernel start → real init, the guest's uptime.
  Booted under plain TCG and under ``-icount shift=0``: there the guest's clock advances with
  the instructions executed (1 ns each), so its uptime counts the work done, not how fast this
  host emulated it. TCG wall time is what a user of this VM waits; icount is the stable
  comparison between tools.

Each image is booted ``CRYPTBOOT_BENCH_RUNS`` times under TCG (default 5) and
``CRYPTBOOT_BENCH_ICOUNT_RUNS`` times under icount (default 3; unattended images only),
round-robin so host drift hits all alike. ``CRYPTBOOT_BENCH_SKIP`` (comma-separated) leaves out
images by name or by any part of it: ``dracut`` (all dracut rows), ``generic``, ``key``,
``itools-small``. ``CRYPTBOOT_BENCH_REUSE=dracut,itools`` (or ``cryptboot``) keeps those
contenders' images from an earlier run.
Sizes: the image file, and its cpio payload uncompressed. All numbers are QEMU numbers on one
emulated CPU: for comparing tools, not real hardware.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PASSPHRASE = "hunter2"
LUKS_UUID = "5e1f0000-aaaa-4bbb-8ccc-000000000001"
TYPE_DELAY = 0.5
KEY_PATH = "/etc/keys/root.key"  # where every unattended image holds the key

REAL_INIT = """#!/bin/sh
export PATH=/bin:/sbin
[ -c /dev/console ] || mount -t devtmpfs devtmpfs /dev 2>/dev/null
exec </dev/console >/dev/console 2>&1
[ -r /proc/uptime ] || mount -t proc proc /proc 2>/dev/null
echo REAL_INIT_REACHED
cat /proc/uptime
poweroff -f
"""

FLOOR_INIT = """#!/bin/sh
# The floor: the least an initramfs does to unlock a LUKS root and hand over.
export PATH=/bin:/sbin
mount -t devtmpfs devtmpfs /dev
mount -t proc proc /proc
for m in $(cat /etc/modules.order); do insmod /lib/modules/$m; done
while [ ! -b /dev/vda ]; do usleep 10000; done
until cryptsetup open {key}/dev/vda root; do :; done
mkdir -p /newroot
mount -o ro /dev/mapper/root /newroot || exec sh
umount /proc
mount --move /dev /newroot/dev
exec switch_root /newroot /sbin/init
"""
FLOOR_MODULES = ("virtio_pci", "virtio_blk", "dm_crypt", "aesni_intel", "xts", "af_alg",
                 "algif_skcipher")
# the disk's own modules: what the smallest configurations name
DISK_MODULES = ("virtio_pci", "virtio_blk")
# every storage driver of the kernel, for cryptboot's generic image (what a generic image of
# the peers carries too: dracut's kernel-modules and initramfs-tools' MODULES=most add these)
STORAGE_DIRS = ("drivers/ata", "drivers/block", "drivers/mmc", "drivers/nvme", "drivers/scsi",
                "drivers/usb/storage", "drivers/virtio", "drivers/message/fusion")
DRACUT_DRIVERS = "virtio_pci virtio_blk dm_crypt xts aesni_intel af_alg algif_skcipher"
DRACUT_OMIT = ("lvm mdraid dmraid multipath iscsi nvmf nbd fcoe fcoe-uefi nfs cifs network "
               "network-legacy network-manager qemu-net plymouth i18n btrfs")

PROMPTS = {
    "floor": r"Enter passphrase for [^\n]*: ",
    "cryptboot": r"Please enter passphrase for disk [^\n]*: ",
    "itools": r"Please unlock disk [^\n]*: ",
    "dracut": r"(?i)passphrase for[^\n]*: ",
}


@dataclass
class Image:
    key: str                       # short name: CRYPTBOOT_BENCH_SKIP matches it or its parts
    name: str                      # the row's label
    how: str                       # how it was built (Markdown)
    build: Callable[[Path], None]  # writes the image to the path given
    append: str
    unattended: bool = False
    path: Path = Path()
    runs: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)

    @property
    def contender(self) -> str:
        return self.key.split("-")[0]


def sh(argv: list[str], **kw: object) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(argv, check=True, capture_output=True, **kw)  # type: ignore[call-overload, no-any-return]


def kernel() -> tuple[Path, str]:
    k = sorted(Path("/boot").glob("vmlinuz-*-cloud-amd64"))[-1]
    return k, k.name[len("vmlinuz-"):]


def make_disk(work: Path) -> tuple[Path, Path]:
    """The LUKS2 disk (passphrase in slot 0, a 64-byte keyfile in slot 1) and the keyfile."""
    tree = work / "root"
    shutil.rmtree(tree, ignore_errors=True)
    for d in ("bin", "sbin", "dev", "proc", "sys", "run", "tmp", "etc"):
        (tree / d).mkdir(parents=True)
    shutil.copy2("/bin/busybox", tree / "bin/busybox")
    for a in sh([str(tree / "bin/busybox"), "--list"]).stdout.decode().split():
        if not (tree / "bin" / a).exists():
            (tree / "bin" / a).symlink_to("busybox")
    (tree / "sbin/init").write_text(REAL_INIT)
    (tree / "sbin/init").chmod(0o755)
    # systemd (dracut's default initrd) refuses to switch into a root without os-release
    (tree / "etc/os-release").write_text("NAME=bench-root\nID=bench\n")
    disk = work / "disk.img"
    with open(disk, "wb") as f:
        f.truncate(64 << 20)
    sh(["mkfs.ext4", "-q", "-F", "-L", "realroot", "-d", str(tree), str(disk), "40M"])
    sh(["cryptsetup", "reencrypt", "--encrypt", "--type", "luks2", "-q", "--uuid", LUKS_UUID,
        "--reduce-device-size", "16M", "--key-file=-", "--pbkdf", "pbkdf2",
        "--pbkdf-force-iterations", "1000", str(disk)], input=PASSPHRASE.encode())
    key = work / "root.key"
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(bytes(range(64)))  # a fixed key: the images stay the same between runs
    sh(["cryptsetup", "luksAddKey", "-q", "--key-file=-", "--pbkdf", "pbkdf2",
        "--pbkdf-force-iterations", "1000", str(disk), str(key)], input=PASSPHRASE.encode())
    return disk, key


def build_floor(out: Path, kver: str, key: Path | None = None) -> Path:
    """busybox + cryptsetup with its libraries + the modules, in dependency order; with ``key``
    the key file at :data:`KEY_PATH` and ``cryptsetup open --key-file``."""
    from cryptboot.initramfs import cpio, elf, kmod

    entries: dict[str, cpio.Entry] = {}

    def add(path: str, data: bytes, mode: int = 0o755) -> None:
        parts = path.split("/")
        for i in range(1, len(parts)):
            d = "/".join(parts[:i])
            entries.setdefault(d, cpio.Entry.directory(d))
        entries[path] = cpio.Entry.file(path, data, mode)

    for d in ("dev", "proc", "sys", "run", "newroot"):
        entries[d] = cpio.Entry.directory(d)
    entries["dev/console"] = cpio.Entry.chardev("dev/console", 5, 1)
    add("bin/busybox", Path("/bin/busybox").read_bytes())
    for a in ("sh", "mount", "umount", "insmod", "usleep", "switch_root", "mkdir", "cat"):
        entries[f"bin/{a}"] = cpio.Entry.symlink(f"bin/{a}", "busybox")
    add("sbin/cryptsetup", Path("/sbin/cryptsetup").read_bytes())
    for dest, src in elf.dependencies(["/sbin/cryptsetup"]).items():
        add(dest.lstrip("/"), Path(src).read_bytes())
    mods = kmod.resolve(kver, list(FLOOR_MODULES))
    deps = {}
    for line in (kmod.module_dir(kver) / "modules.dep").read_text().splitlines():
        path, _, rest = line.partition(":")
        deps[path] = rest.split()
    order: list[str] = []

    def visit(p: str) -> None:
        if p in order:
            return
        for d in reversed(deps.get(p, [])):
            visit(d)
        order.append(p)

    for p in sorted(mods.files):
        visit(p)
    for p in order:
        add(f"lib/modules/{os.path.basename(p)}", Path(mods.files[p]).read_bytes(), 0o644)
    add("etc/modules.order", ("\n".join(os.path.basename(p) for p in order) + "\n").encode(),
        0o644)
    if key is not None:
        add(KEY_PATH.lstrip("/"), key.read_bytes(), 0o400)
    add("init", FLOOR_INIT.format(key=f"--key-file {KEY_PATH} " if key else "").encode())
    with tempfile.TemporaryFile() as raw:
        cpio.write(raw, entries.values(), 0)
        raw.seek(0)
        data = sh(["zstd", "-q", "-19", "-T0", "-c", "-"], input=raw.read()).stdout
    out.write_bytes(data)
    if key is not None:
        out.chmod(0o600)
    return out


# in those directories but not drivers of a disk one boots from: test devices, targets (the
# serving side), RAM disks and non-storage virtio devices; cryptboot loads every module it is
# given, and these would create devices or do work no peer's image does
NOT_STORAGE = {"scsi_debug", "null_blk", "brd", "zram", "xen-blkback", "virtio_balloon",
               "virtio_input", "virtio_mem"}


def storage_modules(kver: str) -> list[str]:
    base = Path("/lib/modules") / kver / "kernel"
    names = {p.name.split(".ko")[0] for d in STORAGE_DIRS for p in (base / d).rglob("*.ko*")}
    return sorted(n for n in names if n not in NOT_STORAGE and not n.startswith("nvmet"))


def mkinitramfs_cryptboot(work: Path, kver: str, *args: str) -> Callable[[Path], None]:
    def build(out: Path) -> None:
        sh([sys.executable, "-m", "cryptboot", "mkinitramfs", "-o", str(out), "--kver", kver,
            "--cache-dir", str(work / "pyc"), *args])
    return build


def cryptboot_at(work: Path, rev: str, kver: str, *args: str) -> Callable[[Path], None]:
    """``cryptboot mkinitramfs`` of the code at commit ``rev`` (a detached git worktree under
    ``work``): the row that shows what the work since ``rev`` changed in the same run."""
    def build(out: Path) -> None:
        tree = work / f"base-{rev}"
        if not tree.exists():
            sh(["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), rev])
        env = dict(os.environ, PYTHONPATH=str(tree))
        sh([sys.executable, "-m", "cryptboot", "mkinitramfs", "-o", str(out), "--kver", kver,
            "--cache-dir", str(work / f"pyc-{rev}"), *args], cwd=str(tree), env=env)
    return build


def itools_confdir(work: Path, name: str, modules: str, key: Path | None) -> Path:
    """A private copy of /etc/initramfs-tools: ``MODULES=`` and its module list; with ``key``
    a hook that puts it at :data:`KEY_PATH` (mode 0400) and UMASK=0077."""
    conf = work / f"itools-{name}.conf"
    shutil.rmtree(conf, ignore_errors=True)
    shutil.copytree("/etc/initramfs-tools", conf, symlinks=True)
    (conf / "conf.d").mkdir(exist_ok=True)
    settings = f"MODULES={modules}\nCOMPRESS=zstd\n"
    if modules == "list":
        (conf / "modules").write_text("".join(m + "\n" for m in DISK_MODULES))
    if key is not None:
        settings += "UMASK=0077\n"
        hook = conf / "hooks" / "bench-key"
        hook.parent.mkdir(exist_ok=True)
        hook.write_text("#!/bin/sh\n[ \"$1\" = prereqs ] && exit 0\n"
                        f"mkdir -p \"$DESTDIR{os.path.dirname(KEY_PATH)}\"\n"
                        f"install -m 0400 {key} \"$DESTDIR{KEY_PATH}\"\n")
        hook.chmod(0o755)
    (conf / "conf.d" / "bench").write_text(settings)
    return conf


def mkinitramfs_itools(work: Path, kver: str, name: str, modules: str,
                       key: Path | None = None) -> Callable[[Path], None]:
    def build(out: Path) -> None:
        conf = itools_confdir(work, name, modules, key)
        sh(["mkinitramfs", "-d", str(conf), "-o", str(out), kver])
    return build


def dracut(kver: str, *args: str) -> Callable[[Path], None]:
    def build(out: Path) -> None:
        sh(["dracut", "-q", "--kver", kver, "--add", "crypt", *args, "-f", str(out)])
    return build


def images(work: Path, kver: str, key: Path) -> list[Image]:
    u = LUKS_UUID
    cb_cmd = f"root=/dev/mapper/root rd.luks.uuid={u} rd.luks.name={u}=root rd.shell=0 " \
             "rd.emergency=poweroff"
    it_cmd = f"root=/dev/mapper/cryptroot cryptopts=target=cryptroot,source=UUID={u},luks"
    dr_cmd = f"root=/dev/mapper/luks-{u} rd.luks.uuid={u} rd.shell=0 rd.emergency=poweroff"
    disk_mods = [a for m in DISK_MODULES for a in ("--module", m)]
    generic_mods = [a for m in storage_modules(kver) for a in ("--module", m)]
    tab = work / "crypttab-key"
    tab.write_text(f"root UUID={u} {KEY_PATH} luks\n")
    mods = " ".join(DISK_MODULES)
    return [
        Image("floor", "floor (busybox sh)", f"busybox, cryptsetup, {len(FLOOR_MODULES)} "
              "modules and their dependencies, a 12-line `/init` (bench_boot.py)",
              lambda out: None, ""),
        Image("cryptboot", "cryptboot", f"`cryptboot mkinitramfs --crypttab none "
              f"{' '.join(disk_mods)}`", mkinitramfs_cryptboot(work, kver, "--crypttab",
                                                               "none", *disk_mods), cb_cmd),
        Image("cryptboot-generic", "cryptboot, generic",
              f"as above with `--module` for all {len(generic_mods) // 2} storage drivers "
              f"({', '.join(STORAGE_DIRS)}; not test devices, targets, RAM disks)",
              mkinitramfs_cryptboot(work, kver, "--crypttab", "none", *generic_mods), cb_cmd),
        Image("itools-small", "initramfs-tools, smallest", f"`mkinitramfs -d CONF` with "
              f"`MODULES=list` and `{mods}` in CONF/modules",
              mkinitramfs_itools(work, kver, "small", "list"), it_cmd),
        Image("itools-generic", "initramfs-tools, generic", "`mkinitramfs` with Debian's "
              "`MODULES=most`", mkinitramfs_itools(work, kver, "generic", "most"), it_cmd),
        Image("dracut-small", "dracut, smallest", f"`dracut --no-hostonly --add crypt --drivers "
              f"\"{DRACUT_DRIVERS}\" --omit \"{DRACUT_OMIT}\"`",
              dracut(kver, "--no-hostonly", "--drivers", DRACUT_DRIVERS, "--omit", DRACUT_OMIT),
              dr_cmd),
        Image("dracut-generic", "dracut, generic", "`dracut --no-hostonly --add crypt`",
              dracut(kver, "--no-hostonly"), dr_cmd),
        # unattended: the key in the image
        Image("floor-key", "floor (busybox sh)", f"as the floor, with the key at {KEY_PATH} "
              "and `cryptsetup open --key-file`", lambda out: None, "", unattended=True),
        Image("cryptboot-key", "cryptboot", f"as cryptboot, with `--crypttab` (`root UUID=… "
              f"{KEY_PATH} luks`) and `--keyfile KEY:{KEY_PATH}`",
              mkinitramfs_cryptboot(work, kver, "--crypttab", str(tab), "--keyfile",
                                    f"{key}:{KEY_PATH}", *disk_mods),
              "root=/dev/mapper/root rd.shell=0 rd.emergency=poweroff", unattended=True),
        Image("itools-key", "initramfs-tools", f"as initramfs-tools smallest, with a hook "
              f"adding the key at {KEY_PATH}; `cryptopts=…,key={KEY_PATH},luks`",
              mkinitramfs_itools(work, kver, "key", "list", key),
              f"root=/dev/mapper/cryptroot cryptopts=target=cryptroot,source=UUID={u},"
              f"key={KEY_PATH},luks", unattended=True),
        Image("dracut-key", "dracut", f"as dracut smallest, with `--include KEY {KEY_PATH}`; "
              f"`rd.luks.key={KEY_PATH}`",
              dracut(kver, "--no-hostonly", "--drivers", DRACUT_DRIVERS, "--omit", DRACUT_OMIT,
                     "--include", str(key), KEY_PATH),
              f"{dr_cmd} rd.luks.key={KEY_PATH}", unattended=True),
    ] + base_images(work, kver, key, tab, disk_mods)


def base_images(work: Path, kver: str, key: Path, tab: Path, disk_mods: list[str]) -> list[Image]:
    """``CRYPTBOOT_BENCH_BASE=REV``: the unattended cryptboot image built from commit REV too,
    beside today's (a new capability must cost nothing in a boot that does not use it)."""
    rev = os.environ.get("CRYPTBOOT_BENCH_BASE", "")
    if not rev:
        return []
    rev = sh(["git", "-C", str(REPO), "rev-parse", "--short=12", rev]).stdout.decode().strip()
    return [Image("cryptboot-base-key", f"cryptboot at {rev}", f"as cryptboot (unattended), "
                  f"built by the code of commit `{rev}`",
                  cryptboot_at(work, rev, kver, "--crypttab", str(tab), "--keyfile",
                               f"{key}:{KEY_PATH}", *disk_mods),
                  "root=/dev/mapper/root rd.shell=0 rd.emergency=poweroff", unattended=True)]


def image_sizes(path: Path) -> tuple[int, int]:
    """(file bytes, uncompressed cpio bytes) of an image of concatenated cpio segments."""
    buf = path.read_bytes()
    pos = raw = 0
    while pos < len(buf):
        if buf[pos] == 0:
            pos += 1
            continue
        if buf[pos:pos + 6] in (b"070701", b"070702"):
            end = _cpio_end(buf, pos)
            raw += end - pos
            pos = end
            continue
        for magic, cmd in ((b"\x28\xb5\x2f\xfd", ["zstd", "-qdc"]), (b"\x1f\x8b", ["gzip", "-dc"]),
                           (b"\xfd7zXZ", ["xz", "-dc"])):
            if buf.startswith(magic, pos):
                out = subprocess.run(cmd, input=buf[pos:], capture_output=True).stdout
                raw += len(out)
                pos = len(buf)
                break
        else:
            raise ValueError(f"{path}: unknown segment at {pos}")
    return len(buf), raw


def _cpio_end(buf: bytes, pos: int) -> int:
    while True:
        fsize = int(buf[pos + 54:pos + 62], 16)
        nsize = int(buf[pos + 94:pos + 102], 16)
        name = buf[pos + 110:pos + 110 + nsize - 1]
        pos = (pos + 110 + nsize + 3) & ~3
        pos = (pos + fsize + 3) & ~3
        if name == b"TRAILER!!!":
            return pos


def qemu_argv(kernel_path: Path, image: Path, disk: Path, append: str, clock: str) -> list[str]:
    icount = ["-icount", "shift=0"] if clock == "icount" else []
    return ["qemu-system-x86_64", "-accel", "tcg", *icount, "-cpu", "max", "-m", "512",
            "-nographic", "-nodefaults", "-serial", "stdio", "-net", "none", "-no-reboot",
            "-kernel", str(kernel_path), "-initrd", str(image),
            "-append", f"console=ttyS0 panic=-1 quiet {append}",
            "-drive", f"file={disk},format=raw,if=virtio,snapshot=on"]


def boot(img: Image, kernel_path: Path, disk: Path, logdir: Path, run: int,
         clock: str = "tcg") -> None:
    """One boot; appends its figures to ``img.runs[clock]`` (or counts a failure)."""
    import pexpect

    argv = qemu_argv(kernel_path, img.path, disk, img.append, clock)
    t0 = time.monotonic()
    child = pexpect.spawn(argv[0], argv[1:], timeout=300, maxread=65536)
    child.logfile_read = open(logdir / f"{img.key}-{clock}-{run}.log", "wb")  # noqa: SIM115
    try:
        wait = 0.0
        if not img.unattended:
            child.expect(PROMPTS[img.contender].encode())
            t_prompt = time.monotonic()
            time.sleep(TYPE_DELAY)
            t_type = time.monotonic()
            child.send(PASSPHRASE + "\r")
            wait = t_type - t_prompt
        child.expect(rb"REAL_INIT_REACHED[\r\n]+\s*([0-9.]+) ")
        t_real = time.monotonic()
        up_real = float(child.match.group(1))
        child.expect(pexpect.EOF, timeout=60)
        figures = {"total": up_real - wait, "host": t_real - t0 - wait}
        if not img.unattended:
            figures.update(prompt=up_real - (t_real - t_prompt), unlock=t_real - t_type)
        img.runs.setdefault(clock, []).append(figures)
    except (pexpect.TIMEOUT, pexpect.EOF):
        img.failures[clock] = img.failures.get(clock, 0) + 1
        print(f"bench_boot: {img.key} ({clock}) run {run} failed, see {logdir}",
              file=sys.stderr)
    finally:
        child.close(force=True)
        child.logfile_read.close()


def median(img: Image, key: str, clock: str = "tcg") -> float | None:
    vals = [r[key] for r in img.runs.get(clock, [])]
    return statistics.median(vals) if vals else None


def cell(img: Image, key: str, clock: str = "tcg", spread: bool = False) -> str:
    vals = sorted(r[key] for r in img.runs.get(clock, []))
    if not vals:
        return "failed" if img.failures.get(clock) else "not booted"
    med = statistics.median(vals)
    text = f"{med:.2f} ({vals[0]:.2f}–{vals[-1]:.2f})"
    if spread:
        text += f" ±{(vals[-1] - vals[0]) / 2 / med * 100:.0f}%"
    return text


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a is not None and b else "n/a"


def skipped(key: str, skip: set[str]) -> bool:
    return key in skip or any(part in skip for part in key.split("-"))


def main() -> str:
    runs = int(os.environ.get("CRYPTBOOT_BENCH_RUNS", "5"))
    icount_runs = int(os.environ.get("CRYPTBOOT_BENCH_ICOUNT_RUNS", "3"))
    work = Path(os.environ.get("CRYPTBOOT_BENCH_DIR", REPO / "build" / "bench-boot"))
    skip = set(filter(None, os.environ.get("CRYPTBOOT_BENCH_SKIP", "").split(",")))
    reuse = set(filter(None, os.environ.get("CRYPTBOOT_BENCH_REUSE", "").split(",")))
    logdir = work / "logs"
    logdir.mkdir(parents=True, exist_ok=True)
    kpath, kver = kernel()
    print(f"bench_boot: disk and images in {work}", file=sys.stderr, flush=True)
    disk, key = make_disk(work)
    all_images = images(work, kver, key)
    chosen = [i for i in all_images if not skipped(i.key, skip)]
    for img in chosen:
        img.path = work / f"{img.key}.img"
        if img.key == "floor":
            build_floor(img.path, kver)
        elif img.key == "floor-key":
            build_floor(img.path, kver, key)
        elif not (img.contender in reuse and img.path.exists()):
            print(f"bench_boot: building {img.key}", file=sys.stderr, flush=True)
            img.build(img.path)
    for r in range(runs):
        for img in chosen:
            print(f"bench_boot: run {r + 1}/{runs} {img.key} (tcg)", file=sys.stderr, flush=True)
            boot(img, kpath, disk, logdir, r)
    for r in range(icount_runs):
        for img in (i for i in chosen if i.unattended):
            print(f"bench_boot: run {r + 1}/{icount_runs} {img.key} (icount)", file=sys.stderr,
                  flush=True)
            boot(img, kpath, disk, logdir, r, "icount")
    return report([i for i in all_images if i in chosen], kver, runs, icount_runs)


def _sizes(img: Image) -> str:
    packed, raw = image_sizes(img.path)
    return f"{packed / 2**20:.1f} / {raw / 2**20:.1f}"


def _failed(img: Image) -> str:
    n = sum(img.failures.values())
    return f" ({n} failed boots)" if n else ""


def report(chosen: list[Image], kver: str, runs: int, icount_runs: int) -> str:
    by_key = {i.key: i for i in chosen}

    def m(key: str, what: str = "total", clock: str = "tcg") -> float | None:
        return median(by_key[key], what, clock) if key in by_key else None

    lines = [
        "## Boot: kernel to the real init through a LUKS2 root (QEMU)",
        "",
        f"Kernel {kver}; one 64 MiB LUKS2 disk (pbkdf2, 1000 iterations; a passphrase slot and "
        "a keyfile slot); `-accel tcg -cpu max -m 512`; round-robin boots. Cells: median "
        "(min–max), seconds.",
        "",
        f"### Passphrase boot (TCG, {runs} boots each)",
        "",
        f"The passphrase is typed {TYPE_DELAY} s after the prompt. \"total − wait\" is the real "
        "init's guest uptime minus that wait; \"host − wait\" the same on the host clock "
        "including QEMU start and firmware. Smallest rows are compared with the floor and with "
        "each other, generic rows with generic rows.",
        "",
        "| image | kernel start → prompt | passphrase → real init | total − wait | host − wait "
        "| compressed / uncompressed MiB | total vs floor | total vs initramfs-tools (same "
        "kind) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    floor = m("floor")
    for img in (i for i in chosen if not i.unattended):
        kind = "generic" if img.key.endswith("generic") else "small"
        peer = m(f"itools-{kind}")
        lines.append(
            f"| {img.name} | {cell(img, 'prompt')} | {cell(img, 'unlock')} "
            f"| {cell(img, 'total')} | {cell(img, 'host')} | {_sizes(img)} "
            f"| {ratio(median(img, 'total'), floor)} | {ratio(median(img, 'total'), peer)} |"
            + _failed(img))
    unattended = [i for i in chosen if i.unattended]
    if unattended:
        lines += [
            "",
            f"### Unattended boot: the key in the image, kernel start → real init ({runs} TCG "
            f"boots, {icount_runs} `-icount shift=0` boots each)",
            "",
            "TCG: the guest's uptime at the real init, which runs at the host's wall-clock rate "
            "(what a user of this VM waits; it moves with the host's load). icount: the same "
            "uptime on a virtual clock that advances 1 ns per guest instruction (the work done, "
            "independent of the host's speed). ± is half the min–max range over the median.",
            "",
            "| image | TCG: kernel start → real init | icount: kernel start → real init "
            "| compressed / uncompressed MiB | TCG vs floor | icount vs floor "
            "| icount vs initramfs-tools |",
            "|---|---|---|---|---|---|---|",
        ]
        for img in unattended:
            lines.append(
                f"| {img.name} | {cell(img, 'total', spread=True)} "
                f"| {cell(img, 'total', 'icount', spread=True)} | {_sizes(img)} "
                f"| {ratio(median(img, 'total'), m('floor-key'))} "
                f"| {ratio(median(img, 'total', 'icount'), m('floor-key', clock='icount'))} "
                f"| {ratio(median(img, 'total', 'icount'), m('itools-key', clock='icount'))} |"
                + _failed(img))
    lines += ["", "How each image was built (kernel command lines in bench/bench_boot.py):", ""]
    lines += [f"- {img.name}{' (unattended)' if img.unattended else ''}: {img.how}"
              for img in chosen]
    cb, cbg = m("cryptboot"), m("cryptboot-generic")
    lines += [
        "",
        f"Goals for cryptboot (passphrase boot): total ≤ 1.3x the floor's and ≤ 0.6x "
        f"initramfs-tools'; compressed image ≤ 2x the floor's. This run: total "
        f"{ratio(cb, floor)} of the floor, {ratio(cb, m('itools-small'))} of initramfs-tools "
        f"smallest; generic {ratio(cbg, m('itools-generic'))} of initramfs-tools generic and "
        f"{ratio(cbg, m('dracut-generic'))} of dracut generic; unattended "
        f"{ratio(m('cryptboot-key'), m('floor-key'))} (TCG) and "
        f"{ratio(m('cryptboot-key', clock='icount'), m('floor-key', clock='icount'))} (icount) "
        "of the floor.",
        "",
        "Goals in instruction time (unattended, icount): ≤ 0.9x the floor and ≤ 0.5x "
        "initramfs-tools. This run: "
        f"{ratio(m('cryptboot-key', clock='icount'), m('floor-key', clock='icount'))} and "
        f"{ratio(m('cryptboot-key', clock='icount'), m('itools-key', clock='icount'))}.",
    ]
    base = next((i for i in chosen if i.key == "cryptboot-base-key"), None)
    if base is not None:
        today = m("cryptboot-key", clock="icount")
        lines[-1] += (f" Today's cryptboot takes {ratio(today, median(base, 'total', 'icount'))} "
                      f"of the icount time of {base.name}.")
    if "cryptboot" in by_key and "floor" in by_key:
        ratio_size = image_sizes(by_key["cryptboot"].path)[0] / image_sizes(by_key["floor"].path)[0]
        lines[-1] += f" Image {ratio_size:.2f}x the floor's."
    return "\n".join(lines)


if __name__ == "__main__":
    print(main())
