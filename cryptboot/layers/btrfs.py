"""The btrfs layer: a multi-device btrfs is mountable only once all its devices are known to
the kernel. Each device whose signature is ``btrfs`` is registered as it appears (the
``BTRFS_IOC_DEVICES_READY`` ioctl on ``/dev/btrfs-control``, the call ``btrfs device ready``
makes), which also tells whether the filesystem is complete. udev's ``64-btrfs.rules`` in the
image does the same; this layer keeps kernel mode (no udevd) working and says in a timeout
message which filesystems were still missing devices.
"""

from __future__ import annotations

import os

from cryptboot import log

TYPE_CHECKING = False
if TYPE_CHECKING:
    from cryptboot.config.model import Plan
    from cryptboot.devices import BlockDevice

CONTROL = "/dev/btrfs-control"
# _IOR(0x94, 39, struct btrfs_ioctl_vol_args): 4096 bytes (8-byte fd + 4088-byte name)
DEVICES_READY = 0x90009427
VOL_ARGS = 4096


def devices_ready(node: str, control: str = CONTROL) -> bool | None:
    """True when every device of the btrfs on ``node`` is registered (registering it);
    None when the kernel cannot say (no btrfs module, no control device)."""
    import fcntl

    try:
        fd = os.open(control, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        arg = bytearray(VOL_ARGS)
        name = node.encode()[:VOL_ARGS - 9]
        arg[8:8 + len(name)] = name
        try:
            rc = fcntl.ioctl(fd, DEVICES_READY, arg)
        except OSError as e:
            log.debug(f"btrfs: DEVICES_READY {node}: {e.strerror}")
            return None
        return bool(rc == 0)
    finally:
        os.close(fd)


class BtrfsLayer:
    name = "btrfs"

    def __init__(self, plan: Plan, prog: str) -> None:
        self.prog = prog
        self.filesystems: dict[str, dict[str, bool | None]] = {}  # fs UUID -> node -> ready

    def offer(self, dev: BlockDevice) -> None:
        if dev.get("ID_FS_TYPE") != "btrfs":
            return
        uuid = dev.get("ID_FS_UUID")
        nodes = self.filesystems.setdefault(uuid, {})
        if dev.node in nodes:
            return
        ready = devices_ready(dev.node)
        nodes[dev.node] = ready
        if ready is False:
            log.info(f"btrfs: {dev.node}: a device of filesystem {uuid}; waiting for the others")

    def complete(self, dev: BlockDevice) -> bool | None:
        """Whether the btrfs on ``dev`` has all its devices registered (asking the kernel
        again: a member another wait offered counts); None when the kernel cannot say."""
        ready = devices_ready(dev.node)
        self.filesystems.setdefault(dev.get("ID_FS_UUID"), {})[dev.node] = ready
        return ready

    def tick(self, waited: float, timeout: float | None) -> None:
        pass

    def seen(self) -> str:
        if not self.filesystems:
            return "btrfs: no btrfs device seen"
        parts = []
        for uuid, nodes in self.filesystems.items():
            complete = any(r is True for r in nodes.values())
            parts.append(f"{uuid} on {' '.join(sorted(nodes))} "
                         f"({'complete' if complete else 'devices missing'})")
        return "btrfs: " + "; ".join(parts)

    def close(self) -> None:
        pass


def layer(plan: Plan, prog: str) -> BtrfsLayer:
    return BtrfsLayer(plan, prog)
