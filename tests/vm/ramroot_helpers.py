"""A real root for the ramroot VM test: Python, cryptboot, cryptsetup, udev and mke2fs in it.

The root tree is what ``cryptboot mkinitramfs`` puts in its image (the same file set, from
:func:`cryptboot.initramfs.build.assemble`), written out as a directory instead of a cpio,
without the kernel modules (the initramfs loaded them) and with :data:`SCRIPT` as
``/sbin/init``. Two trees are made: the "old" root (``/etc/release`` = ``old-1``), encrypted
onto the first disk, and the "firmware" (``new-2``, plus ``/FIRMWARE_MARKER``) on a plain ext4
second disk, which the script copies onto the reformatted volume.

The script runs the issue's proofs in one boot, PID 1 re-executing itself at each stage
(``exec /bin/sh /etc/ramroot-test.sh STAGE``) so that it runs from whichever root is current
and does not itself hold the root being let go. Each fact is one line ``RR KEY VALUE...``.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from cryptboot.initramfs import build
from cryptboot.initramfs.cpio import Entry

SCRIPT = r"""#!/bin/sh
# The ramroot VM test, run as PID 1 in stages (see tests/vm/ramroot_helpers.py).
export PATH=/usr/sbin:/usr/bin
self=/etc/ramroot-test.sh
fact() { echo "RR $*"; }
must() {  # a step that must work: else say so and stop at once
    "$@" || { echo "RR abort $*"; poweroff -f; }
}
mem() { awk -v k="$1:" '$1 == k { print $2 }' /proc/meminfo; }
facts() {
    fact "$1" rootfs "$(awk '$5 == "/" { for (i = 7; i <= NF; i++) if ($i == "-") t = $(i + 1) }
                            END { print t }' /proc/self/mountinfo)"
    fact "$1" pid1 "$(cut -d' ' -f22 /proc/1/stat)" "$(cat /proc/sys/kernel/random/boot_id)"
    sync
    echo 3 >/proc/sys/vm/drop_caches  # page cache counts as available: compare without it
    fact "$1" mem "$(mem MemAvailable)" "$(mem Shmem)"
    fact "$1" release "$(cat /etc/release)"
}
mappings() {
    n=0
    for d in /sys/block/dm-*; do [ -e "$d/dm/name" ] && n=$((n + 1)); done
    fact "$1" dm "$n" "$(dmsetup ls 2>&1 | tr '\n\t' '  ')"
    fact "$1" oldroot_mounted "$(grep -c ' /oldroot ' /proc/mounts)"
}
gone() {  # wait until process $1 has exited (its files closed)
    kill "$1"
    while [ -e "/proc/$1/exe" ] && readlink "/proc/$1/exe" >/dev/null 2>&1; do sleep 1; done
}
initramfs_freed() {  # no child of PID 1 but zombies (the deleting child is its child)
    for p in $(cat /proc/1/task/1/children 2>/dev/null); do
        s=$(cut -d' ' -f3 "/proc/$p/stat" 2>/dev/null)
        [ -z "$s" ] || [ "$s" = Z ] || return 1
    done
}
tree_sum() {
    find /etc /usr/lib/cryptboot /var/lib -type f | sort | xargs sha256sum | sha256sum | cut -c1-64
}
case "$1" in
"")
    exec </dev/console >/dev/console 2>&1
    echo "REAL_INIT_REACHED pid=$$"
    # the switch's child still frees the initramfs: wait for it, so memory readings compare
    n=0
    until initramfs_freed || [ $n -ge 120 ]; do sleep 1; n=$((n + 1)); done
    fact start waited "$n"
    facts start
    sleep 100000 </etc/release &
    fact reader "$!"
    must cryptboot ramroot
    fact enter1 rc $?
    facts ram1
    exec /bin/sh "$self" ram1 "$!"
    ;;
ram1)
    cryptboot ramroot --release
    fact release_held rc $?
    mappings release_held
    gone "$2"
    must cryptboot ramroot --release
    fact release rc $?
    mappings release
    # the upgrade: open the volume again, a new filesystem, filled from the firmware disk
    must cryptboot unlock root
    fact unlock rc $?
    must mkfs.ext4 -q -F -L firmware /dev/mapper/root
    fact mkfs rc $?
    mkdir -p /mnt/fw /mnt/new
    must mount -o ro /dev/vdb /mnt/fw
    must mount /dev/mapper/root /mnt/new
    must cp -a /mnt/fw/. /mnt/new/
    fact fill rc $?
    must umount /mnt/new
    must umount /mnt/fw
    must cryptboot ramroot --return --device /dev/mapper/root
    fact return1 rc $?
    exec /bin/sh "$self" back1
    ;;
back1)
    sleep 2
    facts back1
    fact back1 marker "$(cat /FIRMWARE_MARKER)"
    fact back1 ramroot_mounts "$(grep -c cryptboot-ramroot /proc/mounts)"
    mappings back1
    # the second pass: an upgrade that fails before it changes anything
    mkdir -p /var/lib /var/log
    echo "state written before the second pass" >/var/lib/state
    sync
    fact sum_before "$(tree_sum)"
    sleep 100000 >>/var/log/app.log &
    fact writer "$!"
    must cryptboot ramroot
    fact enter2 rc $?
    exec /bin/sh "$self" ram2 "$!"
    ;;
ram2)
    cryptboot ramroot --release
    fact release_writer rc $?
    mappings release_writer
    gone "$2"
    must umount /oldroot
    fact umount_by_hand rc $?
    cryptboot ramroot --return
    fact return_nothing rc $?
    facts return_nothing
    must cryptboot ramroot --release
    fact release2 rc $?
    mappings release2
    echo "upgrade: the firmware image does not verify; nothing written"
    must cryptboot ramroot --return
    fact return2 rc $?
    exec /bin/sh "$self" back2
    ;;
back2)
    sleep 2
    facts back2
    fact sum_after "$(tree_sum)"
    fact back2 ramroot_mounts "$(grep -c cryptboot-ramroot /proc/mounts)"
    mappings back2
    echo "RAMROOT_TEST_DONE"
    poweroff -f
    ;;
esac
"""

SKIP = ("init", "sysroot", "etc/initrd-release", "etc/cryptboot/modules", "usr/lib/modules")


def root_image_tree(dest: Path, kver: str, cache: Path, release: str,
                    marker: str | None = None) -> Path:
    """The image's file set written out as a root tree, with the test script as init."""
    img = build.assemble(build.Options(output=str(dest) + ".img", kver=kver,
                                       cache_dir=str(cache)))
    img.entries.pop("usr/sbin/mke2fs", None)  # busybox's applet: the real one makes ext4
    mke2fs = build.add_tool(img, "mke2fs")
    img.add_symlink("/usr/sbin/mkfs.ext4", os.path.basename(mke2fs))
    img.add(Entry.file("usr/sbin/init", b"#!/bin/sh\nexec /bin/sh /etc/ramroot-test.sh\n",
                       0o755))
    img.add(Entry.file("etc/ramroot-test.sh", SCRIPT.encode(), 0o755))
    img.add(Entry.file("etc/release", f"{release}\n".encode()))
    img.add(Entry.file("etc/os-release", b"NAME=cryptboot-ramroot-test\nID=cryptboot-test\n"))
    for d in ("mnt", "var/log", "var/lib"):
        img.add(Entry.directory(d))
    if marker is not None:
        img.add(Entry.file("FIRMWARE_MARKER", f"{marker}\n".encode()))
    dest.mkdir(parents=True, exist_ok=True)
    for path in sorted(img.entries, key=lambda p: p.split("/")):
        if path in SKIP or path.startswith(tuple(s + "/" for s in SKIP)):
            continue
        e = img.entries[path]
        out = dest / path
        if stat.S_ISDIR(e.mode):
            out.mkdir(parents=True, exist_ok=True)
            out.chmod(stat.S_IMODE(e.mode))
        elif stat.S_ISLNK(e.mode):
            out.symlink_to(e.data.decode())
        elif stat.S_ISREG(e.mode):
            out.write_bytes(e.data)
            out.chmod(stat.S_IMODE(e.mode))
        # device nodes: the real root gets devtmpfs from the initramfs
    return dest


def facts(transcript: str) -> dict[str, list[str]]:
    """``RR KEY VALUE...`` lines as ``{KEY or "STAGE KEY": [values]}`` (the last one wins)."""
    out: dict[str, list[str]] = {}
    for line in transcript.splitlines():
        m = re.match(r"RR (\S+) (.*)$", line.strip())
        if not m:
            continue
        key, rest = m.group(1), m.group(2).split()
        if rest and rest[0] in ("rc", "rootfs", "pid1", "mem", "release", "dm", "marker",
                                "oldroot_mounted", "ramroot_mounts"):
            key, rest = f"{key} {rest[0]}", rest[1:]
        out[key] = rest
    return out
