"""Issue 12: the plain LUKS image with and without the stacked-storage work.

Builds the same plain LUKS image (one crypttab line, no ``--lvm/--md/--btrfs``, gzip) with the
code at the commit before the stack work (``PRE_STACK``, built from a ``git worktree`` of it)
and with the code measured, and reports both sizes (file and uncompressed) and every entry of
the current image that belongs to LVM, md or btrfs (programs, rules, modules, cryptboot's layer
modules). The build host's root is not on LVM/md/btrfs, so no layer comes in from it.

Not here (yet): the Debian LVM-on-LUKS layout booted through cryptboot, initramfs-tools and
dracut side by side (docs/stack.md says so).
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
                        r"56-lvm|63-md|64-btrfs|lvm\.conf|mdadm\.conf)(\.|$|/|\.ko|\.rules)")
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


def main() -> str:
    _k, kver = kernel()
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
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(main())
