"""Boot benchmark: one LUKS2 disk, one kernel, the same QEMU flags, four initramfs images.

(a) cryptboot's image, (b) Debian's dracut with its crypt module, (c) initramfs-tools with
cryptsetup-initramfs, (d) the floor: a busybox shell ``/init`` doing insmod + cryptsetup +
mount + switch_root and nothing else (built here). Each is booted ``CRYPTBOOT_BENCH_RUNS``
times (default 5), round-robin so host drift hits all alike; the passphrase is typed 0.5 s
after the prompt appears and that wait is taken out of the total.

Measured per boot: guest uptime at the prompt (kernel start to prompt), host time from typing
to the real init's sentinel, and the real init's guest uptime minus the prompt wait (the
total with the human taken out). Sizes: the image file, and its cpio payload uncompressed.
All numbers are QEMU-TCG numbers on one emulated CPU: for comparing tools, not real hardware.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PASSPHRASE = "hunter2"
LUKS_UUID = "5e1f0000-aaaa-4bbb-8ccc-000000000001"
TYPE_DELAY = 0.5

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
until cryptsetup open /dev/vda root; do :; done
mkdir -p /newroot
mount -o ro /dev/mapper/root /newroot || exec sh
umount /proc
mount --move /dev /newroot/dev
exec switch_root /newroot /sbin/init
"""
FLOOR_MODULES = ("virtio_pci", "virtio_blk", "dm_crypt", "aesni_intel", "xts", "af_alg",
                 "algif_skcipher")


@dataclass
class Case:
    name: str
    image: Path
    append: str
    prompt: str
    runs: list[dict[str, float]] = field(default_factory=list)
    failures: int = 0


def sh(argv: list[str], **kw: object) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(argv, check=True, capture_output=True, **kw)  # type: ignore[call-overload, no-any-return]


def kernel() -> tuple[Path, str]:
    k = sorted(Path("/boot").glob("vmlinuz-*-cloud-amd64"))[-1]
    return k, k.name[len("vmlinuz-"):]


def make_disk(work: Path) -> Path:
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
    return disk


def build_floor(out: Path, kver: str) -> Path:
    """busybox + cryptsetup with its libraries + the modules, in dependency order."""
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
    add("init", FLOOR_INIT.encode())
    with tempfile.TemporaryFile() as raw:
        cpio.write(raw, entries.values(), 0)
        raw.seek(0)
        data = sh(["zstd", "-q", "-19", "-T0", "-c", "-"], input=raw.read()).stdout
    out.write_bytes(data)
    return out


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


def boot(case: Case, kernel_path: Path, disk: Path, logdir: Path, run: int) -> None:
    import pexpect

    argv = ["qemu-system-x86_64", "-accel", "tcg", "-cpu", "max", "-m", "512", "-nographic",
            "-nodefaults", "-serial", "stdio", "-net", "none", "-no-reboot",
            "-kernel", str(kernel_path), "-initrd", str(case.image),
            "-append", f"console=ttyS0 panic=-1 quiet {case.append}",
            "-drive", f"file={disk},format=raw,if=virtio,snapshot=on"]
    t0 = time.monotonic()
    child = pexpect.spawn(argv[0], argv[1:], timeout=240, maxread=65536)
    child.logfile_read = open(logdir / f"{case.name}-{run}.log", "wb")  # noqa: SIM115
    try:
        child.expect(case.prompt.encode())
        t_prompt = time.monotonic()
        time.sleep(TYPE_DELAY)
        t_type = time.monotonic()
        child.send(PASSPHRASE + "\r")
        child.expect(rb"REAL_INIT_REACHED[\r\n]+\s*([0-9.]+) ")
        t_real = time.monotonic()
        up_real = float(child.match.group(1))
        child.expect(pexpect.EOF, timeout=60)
        wait = t_type - t_prompt
        case.runs.append({
            "prompt": up_real - (t_real - t_prompt),
            "unlock": t_real - t_type,
            "total": up_real - wait,
            "host": t_real - t0 - wait,
        })
    except (pexpect.TIMEOUT, pexpect.EOF):
        case.failures += 1
        print(f"bench_boot: {case.name} run {run} failed, see {logdir}", file=sys.stderr)
    finally:
        child.close(force=True)
        child.logfile_read.close()


def _median(case: Case, key: str) -> float | None:
    vals = [r[key] for r in case.runs]
    return statistics.median(vals) if vals else None


def _cell(case: Case, key: str) -> str:
    vals = sorted(r[key] for r in case.runs)
    if not vals:
        return "failed" if case.failures else "not booted"
    return f"{statistics.median(vals):.2f} ({vals[0]:.2f}–{vals[-1]:.2f})"


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a is not None and b else "n/a"


def main() -> str:
    runs = int(os.environ.get("CRYPTBOOT_BENCH_RUNS", "5"))
    work = Path(os.environ.get("CRYPTBOOT_BENCH_DIR", REPO / "build" / "bench-boot"))
    logdir = work / "logs"
    logdir.mkdir(parents=True, exist_ok=True)
    kpath, kver = kernel()
    print(f"bench_boot: disk and images in {work}", file=sys.stderr, flush=True)
    disk = make_disk(work)
    u = LUKS_UUID
    # CRYPTBOOT_BENCH_REUSE=dracut,itools keeps those images from an earlier run (slow builds)
    reuse = set(os.environ.get("CRYPTBOOT_BENCH_REUSE", "").split(","))
    cb = work / "cryptboot.img"
    sh([sys.executable, "-m", "cryptboot", "mkinitramfs", "-o", str(cb), "--kver", kver,
        "--crypttab", "none", "--cache-dir", str(work / "pyc")])
    dr = work / "dracut.img"
    if not ("dracut" in reuse and dr.exists()):
        print("bench_boot: building dracut's image", file=sys.stderr, flush=True)
        sh(["dracut", "-q", "--no-hostonly", "--kver", kver, "--add", "crypt", "-f", str(dr)])
    it = work / "itools.img"
    if not ("itools" in reuse and it.exists()):
        print("bench_boot: building initramfs-tools' image", file=sys.stderr, flush=True)
        sh(["mkinitramfs", "-o", str(it), kver])
    fl = build_floor(work / "floor.img", kver)
    cases = [
        Case("floor (busybox sh)", fl, "", r"Enter passphrase for [^\n]*: "),
        Case("cryptboot", cb, f"root=/dev/mapper/root rd.luks.uuid={u} rd.luks.name={u}=root "
             "rd.shell=0 rd.emergency=poweroff", r"Please enter passphrase for disk [^\n]*: "),
        Case("initramfs-tools", it, f"root=/dev/mapper/cryptroot "
             f"cryptopts=target=cryptroot,source=UUID={u},luks", r"Please unlock disk [^\n]*: "),
        Case("dracut", dr, f"root=/dev/mapper/luks-{u} rd.luks.uuid={u} rd.shell=0 "
             "rd.emergency=poweroff", r"(?i)passphrase for[^\n]*: "),
    ]
    # CRYPTBOOT_BENCH_SKIP=dracut skips booting a case (its row then says "not booted")
    skip = set(os.environ.get("CRYPTBOOT_BENCH_SKIP", "").split(","))
    for r in range(runs):
        for case in cases:
            if case.name.split()[0] in skip:
                continue
            print(f"bench_boot: run {r + 1}/{runs} {case.name}", file=sys.stderr, flush=True)
            boot(case, kpath, disk, logdir, r)
    floor, cbc, itc = cases[0], cases[1], cases[2]
    lines = [
        "## Boot: kernel to the real init through a LUKS2 root (QEMU TCG)",
        "",
        f"Kernel {kver}; one 64 MiB LUKS2 disk (pbkdf2, 1000 iterations); `-accel tcg -cpu max "
        f"-m 512`; {runs} boots per image, round-robin; passphrase typed {TYPE_DELAY} s after "
        "the prompt. Cells: median (min–max), seconds. \"total\" is the real init's guest "
        "uptime minus the prompt wait; \"host\" the same on the host clock including QEMU "
        "start and firmware.",
        "",
        "| image | kernel start → prompt | passphrase → real init | total − wait | host − wait "
        "| compressed / uncompressed MiB | total vs floor | total vs initramfs-tools "
        "| size vs floor |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    fsize = image_sizes(floor.image)[0]
    for c in cases:
        packed, raw = image_sizes(c.image)
        lines.append(
            f"| {c.name} | {_cell(c, 'prompt')} | {_cell(c, 'unlock')} | {_cell(c, 'total')} "
            f"| {_cell(c, 'host')} | {packed / 2**20:.1f} / {raw / 2**20:.1f} "
            f"| {_ratio(_median(c, 'total'), _median(floor, 'total'))} "
            f"| {_ratio(_median(c, 'total'), _median(itc, 'total'))} "
            f"| {packed / fsize:.2f}x |"
            + (f" ({c.failures} failed boots)" if c.failures else ""))
    lines += [
        "",
        f"Goals for cryptboot: total ≤ 1.3x the floor's and ≤ 0.6x initramfs-tools'; compressed "
        f"image ≤ 2x the floor's. This run: total "
        f"{_ratio(_median(cbc, 'total'), _median(floor, 'total'))} of the floor, "
        f"{_ratio(_median(cbc, 'total'), _median(itc, 'total'))} of "
        f"initramfs-tools; image {image_sizes(cb)[0] / fsize:.2f}x the floor's.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(main())
