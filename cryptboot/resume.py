"""Resume from hibernation (issue 12): ``resume=`` and ``resume_offset=``, ``noresume``.

Once the volumes are unlocked and before anything is mounted read-write, the resume device is
waited for (it may be an LV or a mapping that the unlock just made; a device, ``UUID=``,
``LABEL=``, ``PARTUUID=`` or ``MAJ:MIN``), then ``resume_offset`` (pages into a swap file) and
the device's ``MAJ:MIN`` are written to ``/sys/power/``. If the swap holds a hibernation image
the kernel restores it there and then, and this boot ends; otherwise the write returns and the
boot goes on. A resume device that never appears is a warning, not a failure (the machine still
boots, fresh). systemd's ``HibernateLocation`` EFI variable is not read.
"""

from __future__ import annotations

import os

from cryptboot import log

TYPE_CHECKING = False
if TYPE_CHECKING:
    from cryptboot.config.model import Plan
    from cryptboot.devices import BlockDevice

SYS_POWER = "/sys/power"
IMAGE_TYPE = "swsuspend"   # blkid's name for a swap area holding a hibernation image


def resume(plan: Plan, wait: object, timeout: float | None, sys_power: str = SYS_POWER
           ) -> str:
    """Wait for ``plan.resume`` with ``wait(spec, timeout)`` and hand it to the kernel;
    returns what happened, in words (when it returns at all)."""
    from cryptboot.errors import DeviceTimeout

    spec = plan.resume
    if spec is None:
        return "no resume= (or noresume)"
    devnum = _devnum_of(spec.value) if spec.value.startswith("/dev/block/") else None
    node = spec.value
    kind = ""
    if devnum is None:
        try:
            dev: BlockDevice = wait(spec, timeout)  # type: ignore[operator]
        except DeviceTimeout as e:
            log.warning(f"resume device {spec} did not appear: booting without resuming "
                        f"({e.message.splitlines()[0]})")
            return "resume device not found"
        devnum = dev.devnum
        node = dev.node
        kind = dev.get("ID_FS_TYPE")
    if devnum is None:
        return f"{node}: no device number; not resuming"
    if plan.resume_offset:
        _write(f"{sys_power}/resume_offset", str(plan.resume_offset))
    what = "a hibernation image" if kind == IMAGE_TYPE else (
        f"no hibernation image signature ({kind or 'unknown'})" if kind else "not probed")
    log.info(f"resume from {node} ({devnum[0]}:{devnum[1]}, {what}) ...")
    _write(f"{sys_power}/resume", f"{devnum[0]}:{devnum[1]}")
    # still here: the kernel found no image to restore
    return f"no hibernation image on {node}: booting fresh"


def _devnum_of(path: str) -> tuple[int, int] | None:
    head, _, tail = path[len("/dev/block/"):].partition(":")
    return (int(head), int(tail)) if head.isdigit() and tail.isdigit() else None


def _write(path: str, text: str) -> None:
    from cryptboot.errors import CryptbootError

    try:
        with open(path, "w") as f:
            f.write(text + "\n")
    except OSError as e:
        # EINVAL and the like: the kernel read the device and found no valid image
        if not os.path.exists(path):
            raise CryptbootError(f"{path}: the kernel has no hibernation support "
                                 f"(CONFIG_HIBERNATION): cannot resume") from None
        log.debug(f"{path}: {e.strerror}")
