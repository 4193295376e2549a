"""Stacked storage in the image (issue 12): LVM, md RAID and btrfs tooling, rules and modules,
only when asked (``--lvm --md --btrfs``), when the image's command line or crypttab names
them, or when the build host's root sits on them (its ``slaves`` in sysfs, followed down).
The plain LUKS image gets none of it, so it does not grow.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from cryptboot import log

TYPE_CHECKING = False
if TYPE_CHECKING:
    from cryptboot.initramfs.build import Image

LAYER_NAMES = ("lvm", "md", "btrfs")
# A minimal lvm.conf: no devices file (the image has none: every PV is seen), no backups or
# archives (the boot never writes metadata), no monitoring daemons (none in the image).
LVM_CONF = b"""# cryptboot: lvm.conf of the initramfs (activation only)
devices {
    use_devicesfile = 0
    obtain_device_list_from_udev = 0
}
global {
    use_lvmpolld = 0
    event_activation = 1
}
activation {
    monitoring = 0
    udev_sync = 1
    udev_rules = 1
}
backup {
    backup = 0
    archive = 0
}
"""
LVM_RULES = ("56-lvm.rules",)       # /dev/VG/LV links and DM_VG_NAME/DM_LV_NAME
MD_UUID_LINK = "/dev/disk/by-id/md-uuid-"  # an array by its UUID (63-md-raid-arrays.rules)
MD_RULES = ("63-md-raid-arrays.rules",)  # /dev/md/NAME links and MD_* properties
BTRFS_RULES = ("64-btrfs.rules",)
# raid456 is left out unless asked (--module raid456): loading it (raid6 benchmarks, the
# async_tx stack) took 3-4 s of the boot under QEMU TCG
MODULES = {"lvm": ("dm_mod",), "md": ("md_mod", "raid1", "raid0", "raid10"),
           "btrfs": ("btrfs",)}
SYS_DEV = "/sys/dev/block"


def host_layers(root: str = "/") -> set[str]:
    """The layers under this machine's root filesystem: follow its device's ``slaves`` in
    sysfs (dm-N with an ``LVM-`` uuid: lvm; mdN: md) and its filesystem type (btrfs)."""
    found: set[str] = set()
    try:
        st = os.stat(root)
    except OSError:
        return found
    if _fstype(root) == "btrfs":
        found.add("btrfs")
    todo = [f"{SYS_DEV}/{os.major(st.st_dev)}:{os.minor(st.st_dev)}"]
    seen: set[str] = set()
    while todo:
        path = os.path.realpath(todo.pop())
        if path in seen or not os.path.isdir(path):
            continue
        seen.add(path)
        name = os.path.basename(path)
        if name.startswith("md"):
            found.add("md")
        try:
            uuid = Path(path, "dm", "uuid").read_text().strip()
        except OSError:
            uuid = ""
        if uuid.startswith("LVM-"):
            found.add("lvm")
        parent = os.path.dirname(path)  # a partition's disk
        if os.path.exists(os.path.join(path, "partition")):
            todo.append(parent)
        slaves = os.path.join(path, "slaves")
        if os.path.isdir(slaves):
            todo += [os.path.join(slaves, s) for s in os.listdir(slaves)]
    return found


def _fstype(mountpoint: str) -> str:
    try:
        for line in Path("/proc/self/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[1] == mountpoint:
                fstype = parts[2]
        return fstype
    except (OSError, UnboundLocalError):
        return ""


def config_layers(cmdline: str, crypttab: str | None) -> set[str]:
    """Layers the image's own command line and crypttab name: rd.lvm.*, /dev/VG/LV sources,
    rd.md.*, /dev/md* and /dev/disk/by-id/md-uuid-* sources, rootflags=subvol=."""
    from cryptboot.config.stack import lv_of_path

    found: set[str] = set()
    words = cmdline.split()
    for w in words:
        if w.startswith(("rd.lvm.vg=", "rd.lvm.lv=")):
            found.add("lvm")
        elif w.startswith("rd.md.uuid="):
            found.add("md")
        elif w.startswith("rootflags=") and "subvol" in w or w == "rootfstype=btrfs":
            found.add("btrfs")
        elif w.startswith(("root=/dev/", "resume=/dev/")):
            path = w.partition("=")[2]
            if path.startswith(("/dev/md", MD_UUID_LINK)):
                found.add("md")
            elif not path.startswith("/dev/mapper/") and lv_of_path(path):
                found.add("lvm")
    for line in (crypttab or "").splitlines():
        parts = line.split()
        if len(parts) >= 2 and not parts[0].startswith("#"):
            src = parts[1]
            if src.startswith(("/dev/md", MD_UUID_LINK)):
                found.add("md")
            elif src.startswith("/dev/") and not src.startswith("/dev/disk/") and (
                    lv_of_path(src) and (not src.startswith("/dev/mapper/") or "-" in src)):
                found.add("lvm")
    return found


def wanted(asked: Iterable[str], cmdline: str, crypttab: str | None,
           host_only: bool = True) -> tuple[str, ...]:
    """The layers the image takes, and why (logged)."""
    out = set(asked)
    why = {n: "asked" for n in out}
    for n in config_layers(cmdline, crypttab) - out:
        why[n] = "named by the image's command line or crypttab"
        out.add(n)
    if host_only:
        for n in host_layers() - out:
            why[n] = "under this machine's root"
            out.add(n)
    for n in sorted(out):
        log.info(f"storage layer {n}: {why[n]}")
    return tuple(n for n in LAYER_NAMES if n in out)


def add_layers(img: Image, layers: Iterable[str]) -> None:
    """The tools, udev rules and configuration of each layer."""
    from cryptboot.initramfs.build import RULES_DIR, add_tool
    from cryptboot.initramfs.cpio import Entry

    def rules(names: Iterable[str]) -> None:
        for name in names:
            src = os.path.join(RULES_DIR, name)
            if os.path.exists(src):
                img.add_file(src, src, 0o644)

    for name in layers:
        if name == "lvm":
            add_tool(img, "lvm")
            img.add(Entry.file("etc/lvm/lvm.conf", LVM_CONF, 0o644))
            for d in ("run/lvm", "run/lock/lvm"):
                img.add(Entry.directory(d, 0o700))
            rules(LVM_RULES)
        elif name == "md":
            add_tool(img, "mdadm")
            img.add(Entry.directory("run/mdadm", 0o700))
            rules(MD_RULES)
            conf = "/etc/mdadm/mdadm.conf"
            if os.path.exists(conf):
                arrays = [ln for ln in Path(conf).read_text().splitlines()
                          if ln.startswith(("ARRAY", "DEVICE", "HOMEHOST"))]
                img.add(Entry.file("etc/mdadm/mdadm.conf",
                                   ("\n".join(arrays) + "\n").encode(), 0o644))
        elif name == "btrfs":
            add_tool(img, "btrfs")
            rules(BTRFS_RULES)


def modules(layers: Iterable[str]) -> list[str]:
    out: list[str] = []
    for name in layers:
        out += [m for m in MODULES.get(name, ()) if m not in out]
    return out
