"""Keymap benchmark (issue 15): what loading the console keymap (and font) costs before the
prompt, beside the same boot without them.

One LUKS2 disk, one kernel, the same QEMU flags (a VGA device without a display,
``console=tty0 console=ttyS0``, so there is a VT to load the keymap into); cryptboot images
that differ only in the console: none, ``de-latin1`` (kbd keymap, 10 maps), console-setup's
compiled French keymap (128 maps, 32 reachable), ``de-latin1`` with a font.
Each is booted ``CRYPTBOOT_BENCH_RUNS`` times (default 3), round-robin; the passphrase is typed
on serial. Measured: guest uptime at the prompt, and the keymap step's own duration as the boot
logs it (it runs in a thread beside udev's start and the device wait, joined before the
prompt, so the prompt moves by less than the step takes).
"""

from __future__ import annotations

import gzip
import os
import re
import statistics
import sys
import time
from pathlib import Path

from bench.bench_boot import LUKS_UUID, PASSPHRASE, TYPE_DELAY, kernel, make_disk, sh

REPO = Path(__file__).resolve().parent.parent
PROMPT = rb"Please enter passphrase for disk [^\n]*: "
STEP = re.compile(rb"load the keymap \(in the background\): [^\n]*?typing maps in after "
                  rb"([0-9.]+)s[^\n]*?done in ([0-9.]+)s")


def boot(image: Path, kpath: Path, disk: Path, log: Path) -> dict[str, float] | None:
    import pexpect

    u = LUKS_UUID
    argv = ["qemu-system-x86_64", "-accel", "tcg", "-cpu", "max", "-m", "512", "-nographic",
            "-nodefaults", "-serial", "stdio", "-vga", "std", "-display", "none",
            "-net", "none", "-no-reboot", "-kernel", str(kpath), "-initrd", str(image),
            "-append", f"console=tty0 console=ttyS0 panic=-1 root=/dev/mapper/root "
            f"rd.luks.uuid={u} rd.luks.name={u}=root rd.shell=0 rd.emergency=poweroff",
            "-drive", f"file={disk},format=raw,if=virtio,snapshot=on"]
    child = pexpect.spawn(argv[0], argv[1:], timeout=300, maxread=65536)
    child.logfile_read = open(log, "wb")  # noqa: SIM115
    try:
        child.expect(PROMPT)
        t_prompt = time.monotonic()
        time.sleep(TYPE_DELAY)
        child.send(PASSPHRASE + "\r")
        child.expect(rb"REAL_INIT_REACHED[\r\n]+\s*([0-9.]+) ")
        up_real = float(child.match.group(1))
        t_real = time.monotonic()
        child.expect(pexpect.EOF, timeout=60)
        out = {"prompt": up_real - (t_real - t_prompt)}
        # logged when the thread is joined, before the prompt: in the whole transcript
        child.logfile_read.flush()
        m = STEP.search(log.read_bytes())
        if b"warning: font" in log.read_bytes():
            print(f"bench_keymap: {image.name}: the font did not load, see {log}",
                  file=sys.stderr)
            return None
        if m:
            out["typing"], out["step"] = float(m.group(1)), float(m.group(2))
        return out
    except (pexpect.TIMEOUT, pexpect.EOF):
        print(f"bench_keymap: {image.name} failed, see {log}", file=sys.stderr)
        return None
    finally:
        child.close(force=True)
        child.logfile_read.close()


def _cell(vals: list[float]) -> str:
    if not vals:
        return "-"
    vals = sorted(vals)
    return f"{statistics.median(vals):.3f} ({vals[0]:.3f}–{vals[-1]:.3f})"


def main() -> str:
    runs = int(os.environ.get("CRYPTBOOT_BENCH_RUNS", "3"))
    work = Path(os.environ.get("CRYPTBOOT_BENCH_DIR", REPO / "build" / "bench-keymap"))
    logdir = work / "logs"
    logdir.mkdir(parents=True, exist_ok=True)
    kpath, kver = kernel()
    disk, _ = make_disk(work)
    de = work / "vconsole-de.conf"
    de.write_text("KEYMAP=de-latin1\n")
    de_font = work / "vconsole-de-font.conf"
    de_font.write_text("KEYMAP=de-latin1\nFONT=Lat15-Fixed16\n")
    # Debian console-setup for a French keyboard, compiled as setupcon --save-only does
    etc = work / "etc-fr"
    (etc / "default").mkdir(parents=True, exist_ok=True)
    (etc / "console-setup").mkdir(exist_ok=True)
    (etc / "default/keyboard").write_text('XKBMODEL="pc105"\nXKBLAYOUT="fr"\n')
    kmap = sh(["ckbcomp", "-model", "pc105", "-layout", "fr"]).stdout
    (etc / "console-setup/cached_UTF-8_del.kmap.gz").write_bytes(gzip.compress(kmap, mtime=0))
    cases = {
        "no keymap": ["--vconsole", "none", "--keyboard", "none"],
        "de-latin1 (kbd)": ["--vconsole", str(de), "--keyboard", "none"],
        "console-setup fr": ["--vconsole", "none", "--keyboard",
                             str(etc / "default/keyboard")],
        "de-latin1 + font Lat15-Fixed16": ["--vconsole", str(de_font), "--keyboard", "none"],
    }
    images = {}
    for n, (name, args) in enumerate(cases.items()):
        img = work / f"cryptboot-{n}.img"
        sh([sys.executable, "-m", "cryptboot", "mkinitramfs", "-o", str(img), "--kver", kver,
            "--crypttab", "none", "--cache-dir", str(work / "pyc"), *args],
           env={**os.environ, "SOURCE_DATE_EPOCH": "1700000000"})
        images[name] = img
    results: dict[str, list[dict[str, float]]] = {name: [] for name in cases}
    for r in range(runs):
        for n, name in enumerate(cases):
            print(f"bench_keymap: run {r + 1}/{runs} {name}", file=sys.stderr, flush=True)
            got = boot(images[name], kpath, disk, logdir / f"{n}-{r}.log")
            if got:
                results[name].append(got)
    base = statistics.median(x["prompt"] for x in results["no keymap"]) \
        if results["no keymap"] else None
    lines = [
        "## Keymap: loading the console keymap and font before the prompt (QEMU TCG)",
        "",
        f"Kernel {kver}; `-vga std -display none`, `console=tty0 console=ttyS0`; {runs} boots "
        "per image, round-robin. Cells: median (min–max), seconds. The keymap step runs in a "
        "thread beside udev and the device wait; the prompt waits for its typing maps only "
        "(\"typing maps in\", from the step's start); the rest and the font follow while "
        "the prompt waits (\"whole step\").",
        "",
        "| image | kernel start → prompt | vs no keymap | typing maps in | whole step "
        "| image KiB |",
        "|---|---|---|---|---|---|",
    ]
    for name, rows in results.items():
        prompt = [x["prompt"] for x in rows]
        step = [x["step"] for x in rows if "step" in x]
        typing = [x["typing"] for x in rows if "typing" in x]
        delta = (f"{statistics.median(prompt) - base:+.3f}" if prompt and base is not None
                 else "-")
        lines.append(f"| {name} | {_cell(prompt)} | {delta} | {_cell(typing)} | {_cell(step)} "
                     f"| {images[name].stat().st_size / 1024:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(main())
