"""``cryptboot check [IMAGE] [--kver VER] [--cmdline STRING|@FILE] [--json]``: will this image
boot this machine?

Exit status 0 when nothing blocks the boot, 1 when something would (each finding one line),
2 for bad input (not an initramfs, a truncated archive, an unknown compression, an unreadable
file: one line, no traceback). Reads only; see docs/check.md.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from cryptboot.config.values import read_input
from cryptboot.errors import CryptbootError


class BadInput(CryptbootError):
    exit_code = 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cryptboot check",
        description="Check that an initramfs image holds what this machine's next boot needs "
                    "(disk drivers, dm-crypt and the volumes' ciphers, programs, crypttab lines, "
                    "keyfiles) and that its plan fits the system (devices exist, keyfiles open "
                    "their volumes, root= is produced). Changes nothing.")
    p.add_argument("image", nargs="?", metavar="IMAGE",
                   help="the image (default: /boot/initrd.img-VER of the newest kernel)")
    p.add_argument("--kver", metavar="VER",
                   help="kernel version (default: the image's lib/modules/VER, else the "
                        "newest /boot/vmlinuz-VER)")
    p.add_argument("--cmdline", metavar="STRING|@FILE", default=None,
                   help="the next boot's kernel command line, or @FILE (default: "
                        "@/etc/kernel/cmdline if it exists, else @/proc/cmdline)")
    p.add_argument("--crypttab", metavar="FILE", default=None,
                   help="this system's crypttab, for hints (default: /etc/crypttab)")
    p.add_argument("--root", metavar="DIR", default="/",
                   help="read the system's facts under DIR (sys/, dev/, run/udev/data/, "
                        "proc/self/mountinfo) instead of / (for facts collected elsewhere)")
    p.add_argument("--json", action="store_true", help="print JSON (schema in docs/check.md)")
    p.add_argument("--list", action="store_true",
                   help="only list what the image holds (parts, then mode, size and path of "
                        "each file) and exit")
    p.add_argument("-v", "--verbose", action="store_true", help="also print what was checked")
    return p


def main(argv: list[str]) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 2
    from cryptboot.check import system
    from cryptboot.check.compare import compare
    from cryptboot.check.image import read_image

    root = Path(args.root)
    if not root.is_dir():
        raise BadInput(f"--root {root}: not a directory")
    kver = args.kver
    path = args.image
    if path is None:
        kver = kver or system.newest_kernel()
        if kver is None:
            raise BadInput("no IMAGE given and no /boot/vmlinuz-VER found to pick one")
        path = f"/boot/initrd.img-{kver}"
    image = read_image(path)
    if args.list:
        import stat

        lines = [f"# {path}: {' + '.join(image.parts)}"]
        for p, m in sorted(image.members.items()):
            link = ""
            if stat.S_ISLNK(m.mode) and m.data is not None:
                link = " -> " + m.data.decode("utf-8", "surrogateescape")
            lines.append(f"{stat.filemode(m.mode)} {m.size:>10} {p}{link}")
        text = "\n".join(lines) + "\n"
        sys.stdout.write(text.encode("utf-8", "backslashreplace").decode("utf-8"))
        return 0
    if kver is None:
        versions = image.kernel_versions()
        kver = versions[-1] if len(versions) == 1 else system.newest_kernel()
        if kver is None:
            raise BadInput(f"{path}: cannot tell the kernel version (the image holds modules "
                           f"for {', '.join(versions) or 'none'})", hint="pass --kver VER")
    if args.cmdline is None:
        # kernel-install's (and systemd-boot's) command line for new entries, else this boot's
        cmdline_path = str(root / "etc/kernel/cmdline")
        if not os.path.isfile(cmdline_path):
            cmdline_path = str(root / "proc/cmdline")
        cmdline = read_input(cmdline_path, "kernel command line") or ""
    elif args.cmdline.startswith("@"):
        cmdline_path = args.cmdline[1:]
        cmdline = read_input(cmdline_path, "kernel command line") or ""
    else:
        cmdline_path, cmdline = "--cmdline", args.cmdline
    tab_path = args.crypttab or str(root / "etc/crypttab")
    tab = read_input(tab_path, "crypttab", missing_ok=args.crypttab is None)
    modules_root = root if (root / "lib/modules" / kver).is_dir() else Path("/")
    report = compare(image, system.SystemRoot(root), cmdline.strip(), cmdline_path, kver,
                     (tab_path, tab), modules_root)
    if args.json:
        import json

        data = {
            "image": report.image, "kver": report.kver, "parts": report.parts,
            "boots": not report.blocking,
            "findings": [{"kind": f.kind, "name": f.name, "message": f.message,
                          "blocking": f.blocking} for f in report.findings],
            "checked": report.checked,
        }
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
    else:
        out = [f"{'error' if f.blocking else 'warning'}: {f.message}" for f in report.findings]
        if args.verbose:
            out += [f"checked {k}: {v}" for k, vs in report.checked.items() for v in vs]
        n = sum(f.blocking for f in report.findings)
        if n:
            out.append(f"{path}: would not boot this machine ({n} problem{'s' * (n != 1)})")
        else:
            out.append(f"{path}: nothing missing for kernel {kver} on this machine")
        text = "\n".join(out) + "\n"
        sys.stdout.write(text.encode("utf-8", "backslashreplace").decode("utf-8"))
    sys.stdout.flush()
    return 1 if report.blocking else 0
