"""A machine's block-device facts as lines of text, and a tree laid out like ``/`` built from them,
for ``cryptboot check --root TREE`` (issue 17).

The same format is printed by :data:`DUMP_SCRIPT`, a busybox shell script run by a VM guest's
real init, so the VM tier checks an image against the guest's own sysfs; the unit tier writes
the facts of the VM tier's machine by hand (:data:`VIRTIO_LUKS_ROOT`).

Lines::

    B NAME MAJ:MIN DEVPATH PART   block device; DEVPATH under /sys/devices; PART 1 = partition
    S NAME SLAVE                  NAME is built on SLAVE
    M NAME DMNAME DMUUID          device-mapper name and uuid
    L NAME LEVEL                  an md array and its personality (sysfs md/level)
    D DEVPATH DRIVER MODULE|-     the driver bound to a device (and its module, - if built in)
    I MOUNTINFO-LINE              one line of /proc/self/mountinfo
    U MAJ:MIN LINE                one line of udev's database entry of a block device
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

DUMP_SCRIPT = r"""
echo CHECK_FACTS_BEGIN
for b in /sys/class/block/*; do
    n=${b##*/}
    real=$(readlink -f "$b")
    part=0; [ -e "$b/partition" ] && part=1
    echo "B $n $(cat "$b/dev") ${real#/sys/devices/} $part"
    for s in "$b"/slaves/*; do [ -e "$s" ] && echo "S $n ${s##*/}"; done
    [ -e "$b/dm/name" ] && echo "M $n $(cat "$b/dm/name") $(cat "$b/dm/uuid")"
    [ -e "$b/md/level" ] && echo "L $n $(cat "$b/md/level")"
    if [ -e "$b/device" ]; then
        d=$(readlink -f "$b/device")
        while [ "${d#/sys/devices/}" != "$d" ]; do
            if [ -e "$d/driver" ]; then
                m=-; [ -e "$d/driver/module" ] && m=$(basename "$(readlink -f "$d/driver/module")")
                echo "D ${d#/sys/devices/} $(basename "$(readlink -f "$d/driver")") $m"
            fi
            d=${d%/*}
        done
    fi
done
while read -r line; do echo "I $line"; done < /proc/self/mountinfo
for f in /run/udev/data/b*; do
    [ -e "$f" ] || continue
    while read -r line; do echo "U ${f##*/b} $line"; done < "$f"
done
echo CHECK_FACTS_END
"""

# The VM tier's machine (tests/vm/conftest.py): one virtio disk holding a LUKS volume whose
# mapping "root" is the ext4 root.
VIRTIO_LUKS_ROOT = """\
B vda 254:0 pci0000:00/0000:00:02.0/virtio0/block/vda 0
B dm-0 253:0 virtual/block/dm-0 0
S dm-0 vda
M dm-0 root CRYPT-LUKS2-5e1f0000aaaa4bbb8ccc000000000001-root
D pci0000:00/0000:00:02.0/virtio0 virtio_blk virtio_blk
D pci0000:00/0000:00:02.0 virtio-pci virtio_pci
I 20 1 253:0 / / ro,relatime - ext4 /dev/mapper/root ro
I 21 20 0:5 / /dev rw - devtmpfs devtmpfs rw
"""


def build_tree(dest: Path, facts: str, devices: dict[str, Path] | None = None) -> Path:
    """A tree under ``dest`` for ``cryptboot check --root``: sys/ from ``facts``,
    proc/self/mountinfo, and dev/NAME links to the files in ``devices`` (LUKS images standing
    for the devices)."""
    sys_ = dest / "sys"
    holders: dict[str, list[str]] = {}
    for raw in facts.splitlines():
        kind, _, rest = raw.partition(" ")
        w = rest.split()
        if kind == "B" and len(w) >= 3:
            name, devnum, devpath = w[0], w[1], w[2]
            d = sys_ / "devices" / devpath
            d.mkdir(parents=True, exist_ok=True)
            (d / "dev").write_text(devnum + "\n")
            if len(w) > 3 and w[3] == "1":
                (d / "partition").write_text("1\n")
            (d / "slaves").mkdir(exist_ok=True)
            (d / "holders").mkdir(exist_ok=True)
            if not devpath.startswith("virtual/") and w[3:4] != ["1"]:
                # sysfs: .../virtio0/block/vda -> virtio0; .../nvme/nvme0/nvme0n1 -> nvme0
                parent = sys_ / "devices" / (devpath.rsplit("/block/", 1)[0]
                                             if "/block/" in devpath else os.path.dirname(devpath))
                parent.mkdir(parents=True, exist_ok=True)
                if not (d / "device").is_symlink():
                    (d / "device").symlink_to(parent)
            for link in (sys_ / "class/block" / name, sys_ / "dev/block" / devnum):
                link.parent.mkdir(parents=True, exist_ok=True)
                if not link.is_symlink():
                    link.symlink_to(d)
        elif kind == "S" and len(w) == 2:
            (sys_ / "class/block" / w[0] / "slaves" / w[1]).symlink_to(sys_ / "class/block" / w[1])
            holders.setdefault(w[1], []).append(w[0])
        elif kind == "M" and len(w) == 3:
            dm = sys_ / "class/block" / w[0] / "dm"
            dm.mkdir(exist_ok=True)
            (dm / "name").write_text(w[1] + "\n")
            (dm / "uuid").write_text(w[2] + "\n")
        elif kind == "L" and len(w) == 2:
            md = sys_ / "class/block" / w[0] / "md"
            md.mkdir(exist_ok=True)
            (md / "level").write_text(w[1] + "\n")
        elif kind == "D" and len(w) == 3:
            drv = sys_ / "bus/x/drivers" / w[1]
            drv.mkdir(parents=True, exist_ok=True)
            if w[2] != "-" and not (drv / "module").is_symlink():
                mod = sys_ / "module" / w[2]
                mod.mkdir(parents=True, exist_ok=True)
                (drv / "module").symlink_to(mod)
            link = sys_ / "devices" / w[0] / "driver"
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.is_symlink():
                link.symlink_to(drv)
    for lower, uppers in holders.items():
        for u in uppers:
            h = sys_ / "class/block" / lower / "holders" / u
            if not h.is_symlink():
                h.symlink_to(sys_ / "class/block" / u)
    for raw in facts.splitlines():
        if raw.startswith("U "):
            _, devnum, line = raw.split(" ", 2)
            db = dest / "run/udev/data" / f"b{devnum}"
            db.parent.mkdir(parents=True, exist_ok=True)
            with open(db, "a") as f:
                f.write(line + "\n")
    proc = dest / "proc/self"
    proc.mkdir(parents=True, exist_ok=True)
    (proc / "mountinfo").write_text(
        "".join(line[2:] + "\n" for line in facts.splitlines() if line.startswith("I ")))
    (dest / "dev").mkdir(exist_ok=True)
    for name, target in (devices or {}).items():
        link = dest / "dev" / name
        link.parent.mkdir(parents=True, exist_ok=True)
        if os.path.lexists(link):
            link.unlink()
        link.symlink_to(target)
    return dest


def facts_root_tree(root_tree: Path, dest: Path, extra: str = "") -> Path:
    """A copy at ``dest`` of the VM harness's root tree whose init prints the guest's block
    facts (:data:`DUMP_SCRIPT`, then ``extra`` shell lines) before its usual facts."""
    import shutil

    from tests.vm.conftest import REAL_INIT

    shutil.copytree(root_tree, dest, symlinks=True)
    init = dest / "sbin/init"
    init.unlink()
    marker = 'echo "FACT uptime'
    assert marker in REAL_INIT
    init.write_text(REAL_INIT.replace(marker, DUMP_SCRIPT.strip() + "\n" + extra + marker, 1))
    init.chmod(0o755)
    return dest


def facts_from_console(text: str) -> str:
    """The facts between the dump's markers in a console transcript (CR LF endings)."""
    begin = text.rindex("CHECK_FACTS_BEGIN")
    end = text.index("CHECK_FACTS_END", begin)
    body = text[begin + len("CHECK_FACTS_BEGIN"):end]
    return "\n".join(line.strip() for line in body.replace("\r", "").splitlines()
                     if line.strip()) + "\n"


def image_without(src: Path, dest: Path, remove: Callable[[str], bool]) -> Path:
    """A copy of image ``src`` with the members for which ``remove(path)`` is true left out:
    every part's members (the early microcode part included) repacked as one gzip-compressed
    cpio archive, which the kernel and ``cryptboot check`` read alike."""
    import gzip
    import stat

    from cryptboot.check import image as image_mod
    from cryptboot.initramfs import cpio

    keep = image_mod.KEEP_BYTES
    image_mod.KEEP_BYTES = 1 << 40        # keep every member's data for the copy
    try:
        img = image_mod.read_image(str(src))
    finally:
        image_mod.KEEP_BYTES = keep
    entries = []
    for path, m in img.members.items():
        if remove(path):
            continue
        data = m.data or b""
        entries.append(cpio.Entry(path, m.mode, data if not stat.S_ISDIR(m.mode) else b""))
    removed = len(img.members) - len(entries)
    assert removed, f"nothing to remove from {src}"
    import io

    buf = io.BytesIO()
    cpio.write(buf, entries, 1700000000)
    dest.write_bytes(gzip.compress(buf.getvalue(), compresslevel=1, mtime=0))
    dest.chmod(0o600)
    return dest
