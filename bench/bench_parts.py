"""Where a cryptboot boot's extra time goes: the parts the issue requires, each timed alone.

The boot benchmark (bench_boot) compares whole boots. This one times, inside the same QEMU TCG
guest and kernel, the parts that cryptboot's image has and the busybox floor has not, so the
gap between them can be accounted for:

- **unpack**: the kernel's initramfs unpacking ("Trying to unpack" to "Freeing initrd memory"
  in the kernel log) of cryptboot's image and of the floor's, zstd both;
- **CPython start**: ``python3.11 -I -S -B -c pass``, the first and a second time (the first
  pays QEMU's translation of the interpreter's code, as a boot does);
- **boot imports**: what ``cryptboot boot`` imports up to its prompt (cryptboot's boot path,
  pyudev and their standard-library modules), after a first CPython start; then pyudev alone
  in a new process (a lower bound: much of that code was translated by the run before);
- **udevd**: ``systemd-udevd --daemon`` started, the block devices triggered (the disk is
  attached and its driver loaded first), until ``udevadm settle`` returns: the daemon's start-up
  and its work for the disk. ``udevadm trigger`` and ``settle`` are processes cryptboot does
  not start (it writes the ``uevent`` files and waits per device), so the time of two
  ``udevadm`` starts is taken out.

Each part is run ``CRYPTBOOT_BENCH_RUNS`` times (default 3) in fresh boots; medians, seconds, by
``/proc/uptime`` (10 ms resolution) around each step in a shell ``/init`` appended to the image
as a second cpio segment. The floor's whole boot is read from bench_boot's latest results.
"""

from __future__ import annotations

import io
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

PARTS_INIT = r"""#!/bin/sh
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /run && mount -t tmpfs tmpfs /run
up() { cut -d' ' -f1 /proc/uptime; }
modprobe -a virtio_pci virtio_blk
t0=$(up); /usr/bin/python3.11 -ISB -c pass; t1=$(up)
/usr/bin/python3.11 -ISB -c pass; t2=$(up)
/usr/bin/python3.11 -ISB -c "import sys; sys.path.insert(0, '/usr/lib/cryptboot/python')
import cryptboot.launch; cryptboot.launch.install()
import cryptboot.cli, cryptboot.boot, cryptboot.mount, cryptboot.syscalls
import cryptboot.config.plan, cryptboot.modload, cryptboot.udev, cryptboot.devices, pyudev
import cryptboot.keys, cryptboot.keys.prompt, cryptboot.unlock"; t3=$(up)
/usr/bin/python3.11 -ISB -c "import sys; sys.path.insert(0, '/usr/lib/cryptboot/python')
import cryptboot.launch; cryptboot.launch.install()
import pyudev"; t4=$(up)
/usr/bin/python3.11 -ISB -c pass; t5=$(up)
/lib/systemd/systemd-udevd --daemon --resolve-names=never
udevadm trigger --action=add --subsystem-match=block
udevadm settle; t6=$(up)
udevadm --version >/dev/null; udevadm --version >/dev/null; t7=$(up)
echo "PARTS $t0 $t1 $t2 $t3 $t4 $t5 $t6 $t7"
poweroff -f
"""


def qemu(image: Path, append: str, disk: Path | None = None, timeout: float = 120) -> str:
    from bench.bench_boot import kernel

    kpath, _ = kernel()
    argv = ["qemu-system-x86_64", "-accel", "tcg", "-cpu", "max", "-m", "512", "-nographic",
            "-nodefaults", "-serial", "stdio", "-net", "none", "-no-reboot",
            "-kernel", str(kpath), "-initrd", str(image), "-append", f"console=ttyS0 {append}"]
    if disk is not None:
        argv += ["-drive", f"file={disk},format=raw,if=virtio,snapshot=on"]
    proc = subprocess.run(argv, capture_output=True, timeout=timeout, check=False)
    return proc.stdout.decode(errors="replace")


def unpack_seconds(image: Path) -> float | None:
    """The kernel's unpack time of ``image``: it boots into a missing init and stops."""
    out = qemu(image, "panic=-1 rdinit=/no-such-init init=/no-such-init")
    start = re.search(r"\[\s*([0-9.]+)\] Trying to unpack rootfs", out)
    end = re.search(r"\[\s*([0-9.]+)\] Freeing initrd memory", out)
    if not (start and end):
        return None
    return float(end.group(1)) - float(start.group(1))


def with_init(image: Path, out: Path, script: str) -> Path:
    """``image`` plus an uncompressed cpio segment whose ``/init`` is ``script``."""
    from cryptboot.initramfs import cpio

    buf = io.BytesIO()
    cpio.write(buf, [cpio.Entry.file("init", script.encode(), 0o755)], 0)
    data = image.read_bytes()
    out.write_bytes(data + b"\0" * (-len(data) % 4) + buf.getvalue())
    return out


def _med(vals: list[float]) -> str:
    return f"{statistics.median(vals):.2f}" if vals else "failed"


def main() -> str:
    runs = int(os.environ.get("CRYPTBOOT_BENCH_RUNS", "3"))
    work = Path(os.environ.get("CRYPTBOOT_BENCH_DIR", REPO / "build" / "bench-boot"))
    work.mkdir(parents=True, exist_ok=True)
    from bench.bench_boot import build_floor, kernel, make_disk, sh

    _, kver = kernel()
    disk, _ = make_disk(work)
    cb = work / "cryptboot.img"
    sh([sys.executable, "-m", "cryptboot", "mkinitramfs", "-o", str(cb), "--kver", kver,
        "--crypttab", "none", "--cache-dir", str(work / "pyc")])
    floor = build_floor(work / "floor.img", kver)
    parts_img = with_init(cb, work / "parts.img", PARTS_INIT)
    unpack: dict[str, list[float]] = {"cryptboot": [], "floor": []}
    got: dict[str, list[float]] = {"cold": [], "warm": [], "pyudev": [], "imports": [],
                                   "udev": []}
    for r in range(runs):
        print(f"bench_parts: run {r + 1}/{runs}", file=sys.stderr, flush=True)
        for name, img in (("cryptboot", cb), ("floor", floor)):
            t = unpack_seconds(img)
            if t is not None:
                unpack[name].append(t)
        m = re.search(r"PARTS ((?:[0-9.]+ ){7}[0-9.]+)", qemu(parts_img, "panic=-1 quiet", disk))
        if m:
            ts = [float(x) for x in m.group(1).split()]
            bare = ts[5] - ts[4]
            got["cold"].append(ts[1] - ts[0])
            got["warm"].append(ts[2] - ts[1])
            got["imports"].append((ts[3] - ts[2]) - bare)       # minus a bare start
            got["pyudev"].append((ts[4] - ts[3]) - bare)        # after: a lower bound
            got["udev"].append((ts[6] - ts[5]) - (ts[7] - ts[6]))  # minus two udevadm starts
    extra_unpack = ([c - f for c, f in zip(unpack["cryptboot"], unpack["floor"], strict=False)]
                    or [0.0])
    required = (statistics.median(extra_unpack) + statistics.median(got["cold"] or [0])
                + statistics.median(got["pyudev"] or [0]) + statistics.median(got["udev"] or [0]))
    lines = [
        "## Where the boot's extra time goes (QEMU TCG, parts timed alone)",
        "",
        f"Kernel {kver}, same QEMU flags as bench_boot; {runs} boots per part; medians in "
        "seconds, by `/proc/uptime` (10 ms resolution) around each step of a shell `/init`.",
        "",
        "| part (the floor has none of it) | seconds |",
        "|---|---:|",
        f"| unpacking cryptboot's image ({_med(unpack['cryptboot'])}) minus the floor's "
        f"({_med(unpack['floor'])}) | {_med(extra_unpack)} |",
        f"| CPython start, first in the boot (`python3.11 -ISB -c pass`; a second one: "
        f"{_med(got['warm'])}) | {_med(got['cold'])} |",
        f"| importing pyudev and the standard-library modules it needs (measured after the "
        f"row below, so QEMU has translated much of that code already: a lower bound) | "
        f"{_med(got['pyudev'])} |",
        f"| systemd-udevd start, block trigger, its work for the disk (to `udevadm settle`) | "
        f"{_med(got['udev'])} |",
        f"| **sum of the parts above** | **{required:.2f}** |",
        f"| for information: importing everything `cryptboot boot` needs up to its prompt "
        f"(pyudev included) | {_med(got['imports'])} |",
        "",
        "The parts summed are what the issue requires of any cryptboot boot (a Python `/init`, "
        "systemd-udevd with pyudev, an image at most 2x the floor's compressed size, which rules "
        "out lz4: see docs/initramfs.md), and all of them run before the prompt. Their sum is "
        "the least cryptboot's boot can take over the floor's on this emulated CPU, before any "
        "of cryptboot's own code runs; compare it with what bench_boot's goal allows (0.3x the "
        "floor's total).",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(main())
