"""Names shared across layers, defined once."""

from __future__ import annotations

SYSROOT = "/sysroot"                 # where the real root is mounted before the hand-off
SHELLS = ("/bin/sh", "/usr/bin/sh", "/bin/bash", "/usr/bin/bash", "/bin/busybox")
UDEV_CONTROL = "/run/udev/control"   # exists while systemd-udevd runs
RUN_DIR = "/run/cryptboot"           # cryptboot's own scratch mounts and sockets
CMDLINE_DEFAULTS = "/etc/cryptboot/cmdline"  # the image's default arguments (mkinitramfs --cmdline)


def module_name(name: str) -> str:
    """A kernel module's canonical name: ``dm-crypt`` and ``dm_crypt`` are one module."""
    return name.replace("-", "_")
