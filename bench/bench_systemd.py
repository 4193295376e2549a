"""systemd benchmark: kernel start to ``multi-user.target`` of a real Debian 12 on LUKS2.

The same Debian root (tests/vm/debian_root.py: mmdebstrap minbase + systemd, cached under
build/), the same encrypted disk (``snapshot=on``: every boot starts from the same bytes), the
same kernel and QEMU flags, three initramfs images: (a) cryptboot's (``mkinitramfs --crypttab
none``), (b) initramfs-tools with cryptsetup-initramfs (its own unlocker, ``cryptopts=``),
(c) Debian's dracut with its crypt module (its default, systemd-based initrd). Booted
``CRYPTBOOT_BENCH_RUNS`` times each (default 5), round-robin; the passphrase is typed 0.5 s
after the prompt appears and that wait is taken out.

Measured per boot: ``multi-user.target``'s ``ActiveEnterTimestampMonotonic`` (guest clock,
from kernel start) minus the wait; the host clock from QEMU's start to the console line
``CRYPTBOOT_MULTI_USER_REACHED``, which the report unit (ordered after ``multi-user.target``)
writes as it starts, minus the wait (includes QEMU start and firmware); and
``systemd-analyze``'s own split (kernel / initrd / userspace): an initramfs that does not hand
systemd its start time has its time counted as the kernel's. QEMU TCG on one emulated CPU:
for comparing tools, not real hardware.
"""

from __future__ import annotations

import os
import re
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

TYPE_DELAY = 0.5
ANALYZE = re.compile(r"Startup finished in ([0-9.]+)(m?s) \(kernel\)(?: \+ ([0-9.]+)(m?s) "
                     r"\(initrd\))? \+ ([0-9.a-z ]+?) \(userspace\)")


@dataclass
class Case:
    name: str
    image: Path
    append: str
    prompt: str
    runs: list[dict[str, float]] = field(default_factory=list)
    failures: int = 0


def seconds(text: str) -> float:
    """systemd's timespan ("1min 2.345s", "812ms", "3.059s") in seconds."""
    total = 0.0
    for num, unit in re.findall(r"([0-9.]+)\s*(min|ms|s)", text):
        total += float(num) * {"min": 60.0, "s": 1.0, "ms": 0.001}[unit]
    return total


def boot(case: Case, kernel: Path, disk: Path, logdir: Path, run: int) -> None:
    import pexpect

    argv = ["qemu-system-x86_64", "-accel", "tcg", "-cpu", "max", "-m", "512", "-nographic",
            "-nodefaults", "-serial", "stdio", "-net", "none", "-no-reboot",
            "-kernel", str(kernel), "-initrd", str(case.image),
            "-append", f"console=ttyS0 panic=-1 ro {case.append}",
            "-drive", f"file={disk},format=raw,if=virtio,snapshot=on"]
    t0 = time.monotonic()
    child = pexpect.spawn(argv[0], argv[1:], timeout=600, maxread=65536)
    child.logfile_read = open(logdir / f"{case.name}-{run}.log", "wb")  # noqa: SIM115
    try:
        child.expect(case.prompt.encode())
        t_prompt = time.monotonic()
        time.sleep(TYPE_DELAY)
        t_type = time.monotonic()
        child.send(b"hunter2\r")
        # not systemd's "Reached target multi-user.target" status line: after dracut's initrd
        # systemd printed none (its status output stopped after getty.target), the run failed
        child.expect(rb"CRYPTBOOT_MULTI_USER_REACHED")
        t_multi = time.monotonic()
        # up to the line's end: the console may have sent only part of the line yet
        child.expect(rb"SDREPORT analyze ([^\r\n]*)\r")
        analyze = child.match.group(1).decode(errors="replace")
        child.expect(rb"SDREPORT multiuser (\d+)\r")
        multi = int(child.match.group(1)) / 1e6
        child.expect(pexpect.EOF, timeout=300)
        wait = t_type - t_prompt
        m = ANALYZE.search(analyze)
        row = {"multi": multi - wait, "host": t_multi - t0 - wait}
        if m:
            row["kernel"] = seconds(m.group(1) + m.group(2))
            row["initrd"] = seconds(m.group(3) + m.group(4)) if m.group(3) else 0.0
            row["userspace"] = seconds(m.group(5))
        case.runs.append(row)
    except (pexpect.TIMEOUT, pexpect.EOF):
        case.failures += 1
        print(f"bench_systemd: {case.name} run {run} failed, see {logdir}", file=sys.stderr)
    finally:
        child.close(force=True)
        child.logfile_read.close()


def _median(case: Case, key: str) -> float | None:
    vals = [r[key] for r in case.runs if key in r]
    return statistics.median(vals) if vals else None


def _cell(case: Case, key: str) -> str:
    vals = sorted(r[key] for r in case.runs if key in r)
    if not vals:
        return "failed" if case.failures else "not booted"
    if len(vals) == 1:
        return f"{vals[0]:.2f}"
    return f"{statistics.median(vals):.2f} ({vals[0]:.2f}–{vals[-1]:.2f})"


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a is not None and b else "n/a"


def main() -> str:
    import subprocess

    from tests.vm.debian_root import build_root, make_disk

    runs = int(os.environ.get("CRYPTBOOT_BENCH_RUNS", "5"))
    work = Path(os.environ.get("CRYPTBOOT_BENCH_DIR", REPO / "build" / "bench-systemd"))
    logdir = work / "logs"
    logdir.mkdir(parents=True, exist_ok=True)
    kernel = sorted(Path("/boot").glob("vmlinuz-*-cloud-amd64"))[-1]
    kver = kernel.name[len("vmlinuz-"):]
    uuid = "5e1f0000-aaaa-4bbb-8ccc-000000000001"
    tree = build_root(REPO / "build/debian-root")
    disk = work / "debian.img"
    disk.unlink(missing_ok=True)
    make_disk(tree, disk, uuid=uuid, fs_uuid="5e1f0000-aaaa-4bbb-8ccc-0000000000f5",
              passphrase="hunter2")

    def sh(argv: list[str]) -> None:
        subprocess.run(argv, check=True, capture_output=True)

    reuse = set(os.environ.get("CRYPTBOOT_BENCH_REUSE", "").split(","))
    cb = work / "cryptboot.img"
    sh([sys.executable, "-m", "cryptboot", "mkinitramfs", "-o", str(cb), "--kver", kver,
        "--crypttab", "none", "--cache-dir", str(work / "pyc")])
    it = work / "itools.img"
    if not ("itools" in reuse and it.exists()):
        print("bench_systemd: building initramfs-tools' image", file=sys.stderr, flush=True)
        sh(["mkinitramfs", "-o", str(it), kver])
    dr = work / "dracut.img"
    if not ("dracut" in reuse and dr.exists()):
        print("bench_systemd: building dracut's image", file=sys.stderr, flush=True)
        sh(["dracut", "-q", "--no-hostonly", "--kver", kver, "--add", "crypt", "-f", str(dr)])
    cases = [
        Case("cryptboot", cb, f"root=/dev/mapper/root rd.luks.uuid={uuid} "
             f"rd.luks.name={uuid}=root rd.shell=0 rd.emergency=poweroff",
             r"Please enter passphrase for disk [^\n]*: "),
        Case("initramfs-tools", it, f"root=/dev/mapper/root "
             f"cryptopts=target=root,source=UUID={uuid},luks", r"Please unlock disk [^\n]*: "),
        Case("dracut", dr, f"root=/dev/mapper/root rd.luks.uuid={uuid} "
             f"rd.luks.name={uuid}=root rd.shell=0 rd.emergency=poweroff",
             r"(?i)passphrase for[^\n]*: "),
    ]
    skip = set(os.environ.get("CRYPTBOOT_BENCH_SKIP", "").split(","))
    for r in range(runs):
        for case in cases:
            if case.name.split()[0] in skip:
                continue
            print(f"bench_systemd: run {r + 1}/{runs} {case.name}", file=sys.stderr, flush=True)
            boot(case, kernel, disk, logdir, r)
    cbc, itc, drc = cases
    lines = [
        "## systemd: kernel start → multi-user.target of a Debian 12 root on LUKS2 (QEMU TCG)",
        "",
        f"Kernel {kver}; Debian 12 minbase + systemd ({disk.stat().st_size >> 20} MiB LUKS2 "
        f"disk, pbkdf2 1000 iterations); `-accel tcg -cpu max -m 512`; {runs} boot(s) per "
        f"image, round-robin; passphrase typed {TYPE_DELAY} s after the prompt, the wait taken "
        "out. Cells: median (min–max), seconds. \"guest\": multi-user.target's "
        "ActiveEnterTimestampMonotonic; \"host\": QEMU start → the report unit's "
        "first console line (it starts when multi-user.target is reached). "
        "systemd-analyze's split includes the wait.",
        "",
        "| image | guest: kernel start → multi-user − wait | host − wait "
        "| systemd-analyze kernel / initrd / userspace | guest vs initramfs-tools "
        "| guest vs dracut | host vs initramfs-tools |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in cases:
        lines.append(
            f"| {c.name} | {_cell(c, 'multi')} | {_cell(c, 'host')} "
            f"| {_cell(c, 'kernel')} / {_cell(c, 'initrd')} / {_cell(c, 'userspace')} "
            f"| {_ratio(_median(c, 'multi'), _median(itc, 'multi'))} "
            f"| {_ratio(_median(c, 'multi'), _median(drc, 'multi'))} "
            f"| {_ratio(_median(c, 'host'), _median(itc, 'host'))} |"
            + (f" ({c.failures} failed boots)" if c.failures else ""))
    lines += [
        "",
        "An initrd figure of 0.00 means the initramfs did not tell systemd when it started "
        "(its time is in the kernel figure). cryptboot this run: "
        f"{_ratio(_median(cbc, 'multi'), _median(itc, 'multi'))} of initramfs-tools, "
        f"{_ratio(_median(cbc, 'multi'), _median(drc, 'multi'))} of dracut to multi-user.target.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(main())
