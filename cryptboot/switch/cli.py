"""Command-line edges of the switch core: switch-root, pivot-root, ramroot.

``switch-root`` parses its options by hand, busybox style (``-c CONSOLE`` only, parsing stops at
the first non-option so INIT's own options pass through), to stay drop-in compatible and to
keep argparse out of the boot path. The other two use argparse, imported when called.
"""

from __future__ import annotations

import sys

SWITCH_USAGE = """\
usage: cryptboot switch-root [-c CONSOLE] [--no-pivot] NEWROOT INIT [ARGS...]

Free the initramfs, make NEWROOT the root, exec INIT as PID 1 (busybox switch_root compatible).
  -c CONSOLE   reopen stdin/stdout/stderr on CONSOLE after the switch (a failure only warns)
  --no-pivot   skip pivot_root(".", ".") and switch with MS_MOVE + chroot
Options end at the first non-option; everything after INIT goes to INIT.
"""


def switch_root_main(argv: list[str]) -> int:
    """``cryptboot switch-root``; returns only when a check refused (the error is raised)."""
    from cryptboot.switch.switch_root import switch_root

    console: str | None = None
    force_move = False
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            i += 1
            break
        if arg in ("-h", "--help"):
            sys.stdout.write(SWITCH_USAGE)
            return 0
        if arg == "-c":
            if i + 1 >= len(argv):
                sys.stderr.write("cryptboot switch-root: -c needs a CONSOLE\n" + SWITCH_USAGE)
                return 2
            console = argv[i + 1]
            i += 2
            continue
        if arg.startswith("-c"):
            console = arg[2:]
            i += 1
            continue
        if arg == "--no-pivot":
            force_move = True
            i += 1
            continue
        if arg.startswith("-") and arg != "-":
            sys.stderr.write(f"cryptboot switch-root: unknown option {arg}\n" + SWITCH_USAGE)
            return 2
        break
    rest = argv[i:]
    if len(rest) < 2:
        sys.stderr.write("cryptboot switch-root: expected NEWROOT and INIT\n" + SWITCH_USAGE)
        return 2
    switch_root(rest[0], rest[1], rest[2:], console, force_move=force_move)


def pivot_root_main(argv: list[str]) -> int:
    """``cryptboot pivot-root [--umount-old] [--raw] NEW_ROOT PUT_OLD``; exit code = errno."""
    import argparse

    from cryptboot.switch.pivot_root import pivot_root

    p = argparse.ArgumentParser(
        prog="cryptboot pivot-root",
        description="Make NEW_ROOT the root of this mount namespace and move the old root to "
        "PUT_OLD (under NEW_ROOT). On failure the exit code is the errno.",
    )
    p.add_argument("new_root", metavar="NEW_ROOT")
    p.add_argument("put_old", metavar="PUT_OLD")
    p.add_argument("--umount-old", action="store_true",
                   help="detach PUT_OLD (lazily) after the pivot")
    p.add_argument("--raw", action="store_true",
                   help="skip the checks and give the paths to the kernel as they are "
                   "(to see the kernel's own refusal)")
    a = p.parse_args(argv)
    pivot_root(a.new_root, a.put_old, umount_old=a.umount_old, raw=a.raw)
    return 0


def ramroot_main(argv: list[str]) -> int:
    """``cryptboot ramroot [--release | --return [--device SPEC] [--nextroot]] ...``: pivot
    into a RAM copy of the root, let the old root go, and come back."""
    import argparse

    from cryptboot.switch import ramroot

    p = argparse.ArgumentParser(
        prog="cryptboot ramroot",
        description="Copy the root filesystem (or --source TREE) into a tmpfs and pivot into "
        "it, with the old root at PUT_OLD, naming what still holds the old root. "
        "`ramroot --release` unmounts the old root and closes the dm-crypt mappings under "
        "it; `ramroot --return` pivots back (opening and mounting it again when released) "
        "and frees the copy.",
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--release", action="store_true",
                      help="unmount the old root and close its mappings (refused, naming "
                      "the holders, while anything holds it)")
    mode.add_argument("--return", dest="back", action="store_true",
                      help="pivot back to the root mounted at PUT_OLD (or --device) and "
                      "free the RAM copy")
    p.add_argument("--device", metavar="SPEC", default=None,
                   help="with --return: the root to return into (/dev/mapper/NAME, UUID=..., "
                   "LABEL=...; a closed mapping is opened again with the plan's keys or the "
                   "prompt); default: the released old root")
    p.add_argument("--nextroot", action="store_true",
                   help="with --return: only mount it at /run/nextroot, for `systemctl "
                   "soft-reboot`")
    p.add_argument("--source", default="/",
                   help="tree to copy (default: /, without crossing mount points)")
    p.add_argument("--mountpoint", default=ramroot.DEFAULT_MOUNTPOINT,
                   help="where the tmpfs is mounted before the pivot "
                   f"(default {ramroot.DEFAULT_MOUNTPOINT})")
    p.add_argument("--put-old", default=ramroot.DEFAULT_PUT_OLD,
                   help=f"where the old root appears (default {ramroot.DEFAULT_PUT_OLD})")
    p.add_argument("--size", default=None, help="tmpfs size= option (default: tmpfs's own)")
    a = p.parse_args(argv)
    if (a.device or a.nextroot) and not a.back:
        p.error("--device and --nextroot go with --return")
    if a.release:
        report = ramroot.release_root()
    elif a.back:
        report = ramroot.leave(a.device, nextroot=a.nextroot)
    else:
        report = ramroot.enter(a.source, mountpoint=a.mountpoint, put_old=a.put_old,
                               size=a.size)
    for line in report:
        print(line)
    return 0
