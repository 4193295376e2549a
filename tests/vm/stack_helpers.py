"""Disks with stacked storage for the VM tier (issue 12), all made on the host.

The host has no device-mapper or md, but LVM's tools write metadata onto a loop device without
activating anything (``--driverloaded n``, ``lvcreate -an -Zn``): the layout is made that way,
the filesystems are written into the LVs at the offsets LVM reports (linear segments), and the
PV file is then encrypted in place (``cryptsetup reencrypt --encrypt``). LVM runs with
``--devices LOOP`` (it looks at nothing else on this machine) and backups off (nothing is
written under the host's /etc/lvm).

The Debian layout (``debian_lvm_disk``) is what Debian's installer makes with "Guided - use
entire disk and set up encrypted LVM": MBR, ``/boot`` ext2 on partition 1, an extended
partition 2 holding logical partition 5 = LUKS2 -> VG ``debian-vg`` -> LVs ``root`` (ext4) and
``swap_1``; crypttab ``vda5_crypt UUID=... none luks,discard``, root
``/dev/mapper/debian--vg-root``.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from tests.vm.conftest import BOOT_TIMEOUT, Machine, Vm, luks_encrypt, make_ext4, sh

MiB = 1 << 20
VG = "debian-vg"
ROOT_LV = "/dev/mapper/debian--vg-root"
DEBIAN_LUKS_UUID = "5e1f0000-aaaa-4bbb-8ccc-0000000000d5"
SWAP_UUID = "5e1f0000-aaaa-4bbb-8ccc-00000000005a"
LVM_CONFIG = ("devices { use_devicesfile = 0 } backup { backup = 0 archive = 0 } "
              "global { event_activation = 0 }")


def lvm(loop: str, *args: str) -> str:
    """One lvm command on ``loop`` only, without device-mapper, backups or archives."""
    argv = ["lvm", args[0], "--devices", loop, "--config", LVM_CONFIG, "--driverloaded", "n",
            *args[1:]]
    proc = subprocess.run(argv, capture_output=True, check=False,
                          env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
                               "LVM_SUPPRESS_FD_WARNINGS": "1"})
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({proc.returncode}): "
                             f"{proc.stderr.decode(errors='replace')}")
    return proc.stdout.decode()


def make_vg(pv_file: Path, vg: str, lvs: Sequence[tuple[str, int]]) -> dict[str, int]:
    """An LVM PV in ``pv_file`` holding VG ``vg`` with linear LVs ``(name, MiB)``; returns each
    LV's byte offset in the file."""
    loop = sh(["losetup", "-f", "--show", str(pv_file)]).strip()
    try:
        lvm(loop, "pvcreate", "-q", "--dataalignment", "1m", loop)
        lvm(loop, "vgcreate", "-q", "-s", "4m", vg, loop)
        for name, size in lvs:
            lvm(loop, "lvcreate", "-q", "-an", "-Zn", "-L", f"{size}m", "-n", name, vg)
        report = json.loads(lvm(loop, "lvs", "--reportformat", "json", "--units", "b",
                                "-o", "lv_name,seg_pe_ranges,vg_extent_size", vg))
        pvs = json.loads(lvm(loop, "pvs", "--reportformat", "json", "--units", "b",
                             "-o", "pe_start", loop))
    finally:
        sh(["losetup", "-d", loop])
    out: dict[str, int] = {}
    for row in report["report"][0]["lv"]:
        ranges = row["seg_pe_ranges"]  # "/dev/loop3:0-7"
        first = int(ranges.rsplit(":", 1)[1].split("-")[0])
        extent = int(row["vg_extent_size"].rstrip("B"))
        pe_start = int(pvs["report"][0]["pv"][0]["pe_start"].rstrip("B"))
        out[row["lv_name"]] = pe_start + first * extent
    return out


def write_at(dest: Path, src: Path, offset: int) -> None:
    with open(dest, "r+b") as out, open(src, "rb") as f:
        out.seek(offset)
        shutil.copyfileobj(f, out, 1 << 20)


def make_swap(out: Path, size_mb: int, uuid: str = SWAP_UUID, label: str = "swap") -> Path:
    with open(out, "wb") as f:
        f.truncate(size_mb * MiB)
    sh(["mkswap", "-U", uuid, "-L", label, str(out)])
    return out


def lvm_pv(work: Path, root_img: Path, *, root_mb: int, swap_mb: int,
           pv_mb: int, vg: str = VG) -> Path:
    """A PV file with ``vg``: LV root holding ``root_img``, LV swap_1 a swap area."""
    pv = work / "pv.img"
    with open(pv, "wb") as f:
        f.truncate(pv_mb * MiB)
    offsets = make_vg(pv, vg, [("root", root_mb), ("swap_1", swap_mb)])
    write_at(pv, root_img, offsets["root"])
    write_at(pv, make_swap(work / "swap.img", swap_mb), offsets["swap_1"])
    return pv


def mbr_disk(out: Path, boot: Path, data: Path) -> Path:
    """MBR: partition 1 = ``boot`` (type 83), extended 2, logical 5 = ``data``."""
    boot_mb = boot.stat().st_size // MiB
    data_mb = -(-data.stat().st_size // MiB)
    total = 1 + boot_mb + 1 + data_mb + 1
    with open(out, "wb") as f:
        f.truncate(total * MiB)
    script = (f"label: dos\nstart=1MiB, size={boot_mb}MiB, type=83, bootable\n"
              f"start={1 + boot_mb}MiB, type=5\n"
              f"start={2 + boot_mb}MiB, size={data_mb}MiB, type=83\n")
    sh(["sfdisk", "-q", str(out)], input=script.encode())
    parts = json.loads(sh(["sfdisk", "--json", str(out)]))["partitiontable"]["partitions"]
    starts = {p["node"][len(str(out)):]: p["start"] * 512 for p in parts}
    write_at(out, boot, starts["1"])
    write_at(out, data, starts["5"])
    return out


def debian_lvm_disk(work: Path, root_tree: Path, *, swap_mb: int = 40) -> Path:
    """The Debian guided encrypted-LVM disk (see the module docstring)."""
    work.mkdir(parents=True, exist_ok=True)
    root = make_ext4(work / "root.img", root_tree, label="debroot", size_mb=32, fs_mb=32)
    boot = work / "boot.img"
    with open(boot, "wb") as f:
        f.truncate(8 * MiB)
    sh(["mkfs.ext2", "-q", "-F", "-L", "boot", str(boot)])
    pv_mb = 1 + 32 + swap_mb + 3  # metadata area, LVs, a free extent
    pv = lvm_pv(work, root, root_mb=32, swap_mb=swap_mb, pv_mb=pv_mb)
    with open(pv, "r+b") as f:
        f.truncate((pv_mb + 16) * MiB)  # room for the LUKS2 header (reduce-device-size 16M)
    luks_encrypt(pv, uuid=DEBIAN_LUKS_UUID)
    disk = mbr_disk(work / "debian-lvm.img", boot, pv)
    for tmp in (root, boot, pv, work / "swap.img"):
        tmp.unlink()
    return disk


DEBIAN_CRYPTTAB = f"vda5_crypt UUID={DEBIAN_LUKS_UUID} none luks,discard\n"


# ---------------------------------------------------------------------------------------------
# The helper VM: what needs the kernel's md driver (creating an array's metadata) runs in one
# boot of the VM tier's kernel, with a helper script as rdinit and the disks writable.

HELPER_DONE = "STACK_HELPER_DONE"


def helper_initrd(base: Path, out: Path, script: str, tools: Sequence[str] = ()) -> Path:
    """``base`` (a cryptboot image: busybox, modules) preceded by an uncompressed cpio holding
    ``/helper.sh`` and ``tools`` with their libraries (the kernel unpacks both archives)."""
    import io

    from cryptboot.initramfs import cpio
    from cryptboot.initramfs.build import Image, add_tool
    from cryptboot.initramfs.cpio import Entry

    img = Image()
    for tool in tools:
        add_tool(img, tool)
    img.add(Entry.file("helper.sh", script.encode(), 0o755))
    buf = io.BytesIO()
    cpio.write(buf, img.entries.values(), 0)
    out.write_bytes(buf.getvalue() + base.read_bytes())
    return out


def run_helper(machine: Machine, base: Path, disks: Sequence[Path], script: str,
               name: str, tools: Sequence[str] = ()) -> str:
    """Boot the helper with ``disks`` writable; returns its console output up to the end
    marker (the script prints :data:`HELPER_DONE` last and powers off)."""
    initrd = helper_initrd(base, machine.logdir / f"{name}.initrd", script, tools)
    argv = machine.argv(initrd, disks, "rdinit=/helper.sh")
    argv = [a.replace("snapshot=on", "snapshot=off") for a in argv]
    log = machine.logdir / f"{name}.log"
    proc = subprocess.run(argv, capture_output=True, timeout=BOOT_TIMEOUT, check=False)
    text = proc.stdout.decode(errors="replace")
    log.write_text(text)
    if HELPER_DONE not in text:
        raise AssertionError(f"helper VM {name} failed (log {log}):\n{text[-4000:]}")
    return text


HELPER_HEAD = """#!/bin/sh
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev
exec >/dev/console 2>&1
for m in virtio_pci virtio_blk md_mod raid1 btrfs; do modprobe $m 2>/dev/null; done
n=0; while [ ! -b /dev/vda ] && [ $n -lt 100 ]; do sleep 0.1; n=$((n + 1)); done
"""
HELPER_TAIL = f"""sync
echo {HELPER_DONE}
poweroff -f
"""


def md_raid1(machine: Machine, base: Path, work: Path, payload: Path, *,
             member_mb: int = 40) -> tuple[Path, Path, str]:
    """Two member files of an md RAID1 (metadata 1.2, made by the real kernel and mdadm in
    the helper VM, ``--assume-clean``: nothing to resync), then ``payload`` written into both
    at the data offset. Returns the members and the array UUID."""
    members = (work / "md-a.img", work / "md-b.img")
    for m in members:
        with open(m, "wb") as f:
            f.truncate(member_mb * MiB)
    script = HELPER_HEAD + """mdadm --create /dev/md0 --run --assume-clean --level=1 \
    --metadata=1.2 --raid-devices=2 --homehost=cryptboot --name=root /dev/vda /dev/vdb
echo "FACT uuid $(mdadm --detail --export /dev/md0 | sed -n 's/^MD_UUID=//p')"
echo "FACT offset $(cat /sys/block/md0/md/dev-vda/offset)"
echo "FACT size $(cat /sys/block/md0/size)"
mdadm --stop /dev/md0
""" + HELPER_TAIL
    text = run_helper(machine, base, members, script, "helper-md-raid1", ["mdadm"])
    facts = dict(re.findall(r"FACT (\w+) (\S+)", text))
    size = int(facts["size"]) * 512
    if payload.stat().st_size > size:
        raise AssertionError(f"{payload} is larger than the array ({size} bytes)")
    for m in members:
        write_at(m, payload, int(facts["offset"]) * 512)
    return members[0], members[1], facts["uuid"]


def boot_writable(machine: Machine, name: str, initrd: Path, disks: Sequence[Path],
                  append: str, timeout: float = BOOT_TIMEOUT) -> Vm:
    """:meth:`Machine.boot` with the disks written for real (no snapshot): boots that must
    see what an earlier boot wrote (a hibernation image)."""
    import time

    import pexpect

    argv = [a.replace("snapshot=on", "snapshot=off")
            for a in machine.argv(initrd, disks, append)]
    log = machine.logdir / f"{name}.log"
    child = pexpect.spawn(argv[0], argv[1:], timeout=timeout, maxread=65536,
                          searchwindowsize=None)
    child.logfile_read = open(log, "wb")  # noqa: SIM115 (closed with the child)
    return Vm(child, time.monotonic() + timeout, log)


# The hibernation disk's init: swap on the encrypted swap LV, a marker process, hibernate; after
# a resume the write to /sys/power/state returns, and the marker says it is still running.
HIBERNATE_INIT = r"""#!/bin/sh
export PATH=/bin:/sbin
[ -c /dev/console ] || mount -t devtmpfs devtmpfs /dev 2>/dev/null
exec </dev/console >/dev/console 2>&1
[ -r /proc/uptime ] || mount -t proc proc /proc 2>/dev/null
[ -d /sys/power ] || mount -t sysfs sysfs /sys 2>/dev/null
echo "REAL_INIT_REACHED pid=$$"
if grep -qw noresume /proc/cmdline; then
    echo "FRESH_BOOT_NORESUME"
    poweroff -f
fi
swap=""
for d in /sys/block/dm-*; do
    [ "$(cat $d/dm/name)" = "debian--vg-swap_1" ] && swap=/dev/${d##*/}
done
swapon "$swap" && echo "SWAP_ON $swap"
sh -c 'trap "echo MARKER_STILL_RUNNING pid=\$\$" USR1
       echo "MARKER_STARTED pid=$$"
       while :; do sleep 1 & wait $!; done' &
marker=$!
sleep 1
echo shutdown > /sys/power/disk
echo 0 > /sys/power/image_size
echo "HIBERNATING"
if echo disk > /sys/power/state; then
    echo "RESUMED_FROM_HIBERNATION"
    kill -USR1 $marker
    sleep 2
else
    echo "HIBERNATE_FAILED"
fi
poweroff -f
"""


LV_LUKS_UUID = "5e1f0000-aaaa-4bbb-8ccc-0000000000c4"


def luks_on_lv_disk(work: Path, root_tree: Path) -> Path:
    """LVM first, then LUKS: a whole-disk PV with VG ``vg0``, LV ``cryptroot`` holding a LUKS2
    volume (ext4 inside)."""
    work.mkdir(parents=True, exist_ok=True)
    payload = make_ext4(work / "luks.img", root_tree, label="lvroot", size_mb=36, fs_mb=20)
    luks_encrypt(payload, uuid=LV_LUKS_UUID)
    disk = work / "lv-luks.img"
    with open(disk, "wb") as f:
        f.truncate(48 * MiB)
    offsets = make_vg(disk, "vg0", [("cryptroot", 36)])
    write_at(disk, payload, offsets["cryptroot"])
    payload.unlink()
    return disk


BTRFS_UUID = "5e1f0000-aaaa-4bbb-8ccc-0000000000bf"
BTRFS_LUKS_UUIDS = ("5e1f0000-aaaa-4bbb-8ccc-0000000000ba", "5e1f0000-aaaa-4bbb-8ccc-0000000000bb")
BTRFS_MB = 128  # per device (mkfs.btrfs's smallest for these profiles is about 114 MiB)


def btrfs_two_luks(machine: Machine, base: Path, work: Path, root_tree: Path) -> tuple[Path, Path]:
    """One btrfs across two LUKS2 volumes, data and metadata RAID1, the root in subvolume
    ``@`` (the top level has no ``/sbin/init``: a boot that ignored ``subvol=@`` finds no init).

    The host's mkfs.btrfs fills a single device (``--rootdir`` takes one device only); the
    helper VM (the real kernel's btrfs and ``btrfs`` from ``base``) adds the second device,
    converts both profiles to RAID1, snapshots the top level into ``@``; then each member file
    is encrypted in place on the host."""
    work.mkdir(parents=True, exist_ok=True)
    members = (work / "btrfs-a.img", work / "btrfs-b.img")
    for m in members:
        with open(m, "wb") as f:
            f.truncate(BTRFS_MB * MiB)
    sh(["mkfs.btrfs", "-q", "-f", "-U", BTRFS_UUID, "-L", "btrroot", "-r", str(root_tree),
        str(members[0])])
    script = HELPER_HEAD + """mkdir -p /mnt
mount -t btrfs /dev/vda /mnt || echo HELPER_FAILED mount
btrfs device add -f /dev/vdb /mnt || echo HELPER_FAILED add
btrfs balance start -f -dconvert=raid1 -mconvert=raid1 -sconvert=raid1 /mnt \
    || echo HELPER_FAILED balance
btrfs subvolume snapshot /mnt /mnt/@ || echo HELPER_FAILED snapshot
rm /mnt/sbin/init
btrfs filesystem show /mnt
umount /mnt
""" + HELPER_TAIL
    text = run_helper(machine, base, members, script, "helper-btrfs-raid1")
    if "HELPER_FAILED" in text:
        raise AssertionError(f"helper VM btrfs failed:\n{text[-4000:]}")
    for m, uuid in zip(members, BTRFS_LUKS_UUIDS, strict=True):
        with open(m, "r+b") as f:
            f.truncate((BTRFS_MB + 16) * MiB)  # room for the LUKS2 header
        luks_encrypt(m, uuid=uuid)
    return members
