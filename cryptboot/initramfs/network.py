"""The image's network part (issue 14; tang images of issue 13 use it too): NIC drivers and
busybox ``udhcpc``'s event script. Added only when the image needs the network
(``mkinitramfs --network``, SSH keys, or ``ip=``/``rd.neednet``/``cryptboot.ssh=1`` in
``--cmdline``); ``ip`` and ``udhcpc`` are busybox applets the image has anyway.

Drivers: ``host`` takes the drivers of this machine's network interfaces (from sysfs,
``/sys/class/net/*/device/driver/module``), falling back to the generic list when none is
found; ``generic`` takes the common ones of :data:`GENERIC` that the kernel has.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptboot import log
from cryptboot.errors import CryptbootError
from cryptboot.initramfs import kmod

SCRIPT_SRC = Path(__file__).resolve().parent.parent / "data" / "udhcpc.sh"
SCRIPT_DEST = "usr/share/cryptboot/udhcpc.sh"  # cryptboot.network.UDHCPC_SCRIPT
# virtual machines (virtio, VMware, AWS, QEMU's emulated Intel cards) and the common
# server and desktop chips; Hyper-V (hv_netvsc fails to load elsewhere), Mellanox and other large
# drivers: host-only images (--network host) or --module
GENERIC = ("virtio_net", "e1000", "e1000e", "igb", "igc", "ixgbe", "i40e", "ice", "r8169",
           "tg3", "bnx2", "bnxt_en", "vmxnet3", "ena", "8139cp", "8139too")
NET_WORDS = ("ip=", "rd.neednet", "cryptboot.ssh")


def cmdline_needs_network(cmdline: str) -> bool:
    """Whether the image's default command line asks for the network."""
    for word in cmdline.split():
        if word.startswith(NET_WORDS) and word not in ("ip=off", "ip=none", "rd.neednet=0",
                                                         "cryptboot.ssh=0"):
            return True
    return False


def host_nic_modules(sys_net: str = "/sys/class/net") -> list[str]:
    """Modules driving this machine's network interfaces."""
    out: list[str] = []
    try:
        names = sorted(os.listdir(sys_net))
    except OSError:
        return out
    for name in names:
        link = f"{sys_net}/{name}/device/driver/module"
        if os.path.exists(link):
            mod = os.path.basename(os.path.realpath(link))
            if mod not in out:
                out.append(mod)
    return out


def nic_modules(kver: str, how: str) -> list[str]:
    """The NIC drivers to put in an image for ``kver``: ``host`` or ``generic``."""
    if how not in ("host", "generic"):
        raise CryptbootError(f"--network {how}: expected host or generic")
    wanted = host_nic_modules() if how == "host" else []
    if how == "host" and not wanted:
        log.info("network: no network interface with a driver on this machine; "
                 "taking the generic drivers")
    chosen = []
    for name in wanted or list(GENERIC):
        try:
            kmod.resolve(kver, [name])
        except CryptbootError:
            continue  # built in, or not in this kernel
        chosen.append(name)
    log.info(f"network: drivers ({'this machine' if wanted else 'generic'}): "
             + (" ".join(chosen) or "none as modules (built in?)"))
    return chosen


def script() -> bytes:
    try:
        return SCRIPT_SRC.read_bytes()
    except OSError as e:
        raise CryptbootError(f"{SCRIPT_SRC}: cannot read: {e.strerror}",
                             hint="reinstall cryptboot") from None
