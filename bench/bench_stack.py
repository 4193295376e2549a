"""Issue 12: the plain LUKS image with and without the stacked-storage work.

Builds the same plain LUKS image (one crypttab line, no ``--lvm/--md/--btrfs``, gzip) with the
code at the commit before the stack work (``PRE_STACK``, built from a ``git worktree`` of it)
and with the code measured, and reports both sizes (file and uncompressed) and every entry of
the current image that belongs to LVM, md or btrfs (programs, rules, modules, cryptboot's layer
modules). The build host's root is not on LVM/md/btrfs, so no layer comes in from it.

Then the Debian guided encrypted-LVM disk (``tests.vm.stack_helpers.debian_lvm_disk``: MBR,
``/boot``, LUKS2 -> VG ``debian-vg`` -> ``root`` + ``swap_1``) is booted, same disk, same run,
through cryptboot's image (``--lvm``), initramfs-tools (its own cryptsetup and lvm2 hooks,
``cryptopts=...,lvm=``) and dracut (its crypt and lvm modules), with bench_boot's boot loop:
``CRYPTBOOT_BENCH_RUNS`` times under TCG (default 2 here) and ``CRYPTBOOT_BENCH_ICOUNT_RUNS``
under ``-icount shift=0`` (default 1), the prompt's wait taken out; ratios to cryptboot.
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.bench_boot import kernel

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PRE_STACK = "83db144"  # the parent of b590f08, the first commit of issue 12's layers
STACK_NAME = re.compile(r"(^|/)(lvm|mdadm|btrfs[^/]*|dm-mod|dm_mod|md-mod|md_mod|raid\d+|"
                        r"56-lvm|63-md|64-btrfs|lvm\.conf|mdadm\.conf)(\.|$|/|\.ko|\.rules)"
                        r"|layers/(lvm|md|btrfs)\.pyc$")
TAB = "cryptroot UUID=5e1f0000-aaaa-4bbb-8ccc-00000000beef none luks\n"


def build(src: Path, out: Path, kver: str, tab: Path, cache: Path) -> None:
    argv = [sys.executable, "-m", "cryptboot", "mkinitramfs", "-o", str(out), "--kver", kver,
            "--crypttab", str(tab), "--compress", "gzip", "--cache-dir", str(cache)]
    env = {**os.environ, "SOURCE_DATE_EPOCH": "1700000000", "PYTHONPATH": str(src)}
    subprocess.run(argv, cwd=src, env=env, check=True, capture_output=True)


def names(image: Path) -> list[str]:
    """Entry names of a gzip-compressed newc cpio image."""
    buf = gzip.decompress(image.read_bytes())
    out, pos = [], 0
    while pos + 110 <= len(buf):
        fsize = int(buf[pos + 54:pos + 62], 16)
        nsize = int(buf[pos + 94:pos + 102], 16)
        name = buf[pos + 110:pos + 110 + nsize - 1].decode(errors="replace")
        if name == "TRAILER!!!":
            break
        out.append(name)
        pos = (pos + 110 + nsize + 3) & ~3
        pos = (pos + fsize + 3) & ~3
    return out


def debian_boot(kver: str, kernel_path: Path) -> list[str]:
    from bench.bench_boot import (
        DISK_MODULES,
        DRACUT_DRIVERS,
        REAL_INIT,
        Image,
        boot,
        cell,
        dracut,
        median,
        mkinitramfs_cryptboot,
        mkinitramfs_itools,
        ratio,
    )
    from tests.vm.conftest import make_root_tree
    from tests.vm.stack_helpers import DEBIAN_CRYPTTAB, DEBIAN_LUKS_UUID, ROOT_LV, debian_lvm_disk

    runs = int(os.environ.get("CRYPTBOOT_BENCH_RUNS", "2"))
    icount_runs = int(os.environ.get("CRYPTBOOT_BENCH_ICOUNT_RUNS", "1"))
    work = Path(os.environ.get("CRYPTBOOT_BENCH_DIR", REPO / "build" / "bench-stack"))
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    tree = make_root_tree(work / "tree")
    (tree / "sbin/init").write_text(REAL_INIT)
    disk = debian_lvm_disk(work / "disk", tree)
    tab = work / "crypttab"
    tab.write_text(DEBIAN_CRYPTTAB)
    u = DEBIAN_LUKS_UUID
    mods = [a for m in DISK_MODULES for a in ("--module", m)]
    omit = ("mdraid dmraid multipath iscsi nvmf nbd fcoe fcoe-uefi nfs cifs network "
            "network-legacy network-manager qemu-net plymouth i18n btrfs")
    imgs = [
        Image("cryptboot", "cryptboot", "`cryptboot mkinitramfs --crypttab TAB --lvm`",
              mkinitramfs_cryptboot(work, kver, "--crypttab", str(tab), "--lvm", *mods),
              f"root={ROOT_LV} rd.shell=0 rd.emergency=poweroff"),
        Image("itools", "initramfs-tools", "`mkinitramfs -d CONF`, `MODULES=list` (its "
              "cryptsetup and lvm2 hooks)", mkinitramfs_itools(work, kver, "lvm", "list"),
              f"root={ROOT_LV} cryptopts=target=vda5_crypt,source=UUID={u},luks,"
              "lvm=debian--vg-root"),
        Image("dracut", "dracut", f"`dracut --no-hostonly --add \"crypt lvm\" --drivers "
              f"\"{DRACUT_DRIVERS}\" --omit \"{omit}\"`",
              dracut(kver, "--no-hostonly", "--add", "lvm", "--drivers", DRACUT_DRIVERS,
                     "--omit", omit),
              f"root={ROOT_LV} rd.luks.uuid={u} rd.lvm.lv=debian-vg/root rd.shell=0 "
              "rd.emergency=poweroff"),
    ]
    logdir = work / "logs"
    logdir.mkdir()
    for img in imgs:
        img.path = work / f"{img.key}.img"
        img.build(img.path)
    for clock, n in (("tcg", runs), ("icount", icount_runs)):
        for run in range(n):
            for img in imgs:  # interleaved: the machine's load hits all alike
                boot(img, kernel_path, disk, logdir, run, clock)
    cb = imgs[0]
    lines = ["", "### The Debian encrypted-LVM layout booted (same disk, same run)", "",
             f"Kernel start to the real init, the prompt's wait taken out, seconds: median "
             f"(min–max) of {runs} TCG and {icount_runs} `-icount shift=0` boots; ratio = "
             "cryptboot / peer.", "",
             "| image | how | TCG | ratio | icount | ratio |", "|---|---|---|---|---|---|"]
    for img in imgs:
        lines.append(
            f"| {img.name} | {img.how} | {cell(img, 'total')} | "
            f"{ratio(median(cb, 'total'), median(img, 'total'))} | "
            f"{cell(img, 'total', 'icount')} | "
            f"{ratio(median(cb, 'total', 'icount'), median(img, 'total', 'icount'))} |")
    return lines


def main() -> str:
    k, kver = kernel()
    work = Path(tempfile.mkdtemp(prefix="bench-stack-"))
    try:
        tab = work / "crypttab"
        tab.write_text(TAB)
        old_src = work / "pre-stack"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(old_src),
                        PRE_STACK], check=True, capture_output=True)
        try:
            build(old_src, work / "old.img", kver, tab, work / "cache-old")
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force",
                            str(old_src)], check=False, capture_output=True)
        build(REPO, work / "new.img", kver, tab, work / "cache-new")
        sizes = {}
        for key in ("old", "new"):
            img = work / f"{key}.img"
            sizes[key] = (img.stat().st_size, len(gzip.decompress(img.read_bytes())))
        stack_new = sorted(n for n in names(work / "new.img") if STACK_NAME.search(n))
        stack_old = sorted(n for n in names(work / "old.img") if STACK_NAME.search(n))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    mib = 1 << 20
    (o, ou), (n, nu) = sizes["old"], sizes["new"]
    lines = [
        "## Stacked storage (issue 12): the plain LUKS image",
        "",
        f"Kernel {kver}; one crypttab line (`{TAB.strip()}`), gzip, no `--lvm/--md/--btrfs`.",
        "",
        "| image | compressed | uncompressed |",
        "|---|---|---|",
        f"| before the stack work ({PRE_STACK}) | {o / mib:.2f} MiB | {ou / mib:.2f} MiB |",
        f"| now | {n / mib:.2f} MiB | {nu / mib:.2f} MiB |",
        f"| now / before | {n / o:.3f}x | {nu / ou:.3f}x |",
        "",
        "The difference includes every other change between the two commits (keymap, tang, "
        "TPM2, ...), not only issue 12's.",
        "",
        f"LVM/md/btrfs entries in the plain image now ({len(stack_new)}): "
        + (", ".join(f"`{x}`" for x in stack_new) or "none"),
        "",
        f"... and before ({len(stack_old)}): "
        + (", ".join(f"`{x}`" for x in stack_old) or "none"),
    ]
    if os.environ.get("CRYPTBOOT_BENCH_STACK_BOOT", "1") != "0":
        lines += debian_boot(kver, k)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(main())
