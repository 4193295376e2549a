"""Find the block device a :class:`DeviceSpec` names, as soon as it appears.

Event-driven, never a global settle: a pyudev ``Monitor`` on ``block`` is started *before* the
existing devices are enumerated, so a device that appears in between is not missed, and each wait
returns the moment its device is there.

Two modes, chosen once per watcher and logged:

- ``udev``: ``systemd-udevd`` runs (``/run/udev/control`` exists). Events and the database carry
  ``ID_FS_UUID``, ``ID_FS_LABEL``, ``ID_PART_ENTRY_*`` and the ``/dev/disk/by-*`` links.
- ``kernel``: no udevd (a bare initramfs, a test host). The kernel's own uevents say *that* a
  device appeared or changed; ``blkid -p -o udev`` on it supplies the same ``ID_*`` properties.

Timeouts are :class:`cryptboot.clock.Deadline` values that do not run while a passphrase prompt
is open, so a slow typist never turns into "device not found".
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence

from cryptboot import log
from cryptboot.blkid import probe as blkid_probe
from cryptboot.clock import Deadline
from cryptboot.config.model import DeviceSpec, SpecKind
from cryptboot.config.values import udev_unescape
from cryptboot.errors import Cancelled, DeviceTimeout
from cryptboot.paths import UDEV_CONTROL

TYPE_CHECKING = False
if TYPE_CHECKING:  # not imported at run time: typing is slow to import
    from typing import Any, Protocol

    class Layer(Protocol):  # what cryptboot.layers.Layer offers the watcher
        name: str

        def offer(self, dev: BlockDevice) -> None: ...
        def tick(self, waited: float, timeout: float | None) -> None: ...
        def seen(self) -> str: ...

TICK = 0.5  # seconds: how often a wait lets the layers look at the time (md: degraded start)

SYS_BLOCK = "/sys/class/block"

# ---------------------------------------------------------------------------------------------
# Devices and matching


class BlockDevice:
    """A block device as seen at one moment: its node, name, number and ``ID_*`` properties.

    (A plain class with slots: one is made per device event, and a dataclass costs at import.)
    """

    __slots__ = ("node", "name", "devnum", "props", "links", "size")

    def __init__(self, node: str, name: str, devnum: tuple[int, int] | None = None,
                 props: Mapping[str, str] | None = None, links: tuple[str, ...] = (),
                 size: int = -1) -> None:
        self.node = node
        self.name = name
        self.devnum = devnum
        self.props: Mapping[str, str] = props if props is not None else {}
        self.links = links
        self.size = size  # 512-byte sectors from sysfs; 0 = no medium (an unattached loop)

    def __repr__(self) -> str:
        return f"BlockDevice({self.describe()})"

    def get(self, key: str) -> str:
        return self.props.get(key, "")

    def describe(self) -> str:
        """``/dev/vda2 (crypto_LUKS, UUID=…, LABEL=…)`` for messages."""
        parts = [self.get("ID_FS_TYPE") or "no filesystem signature"]
        for key, tag in (("ID_FS_UUID", "UUID"), ("ID_FS_LABEL", "LABEL"),
                         ("ID_PART_ENTRY_UUID", "PARTUUID"), ("ID_PART_ENTRY_NAME", "PARTLABEL")):
            value = udev_unescape(self.get(key + "_ENC") or self.get(key))
            if value:
                parts.append(f"{tag}={value}")
        return f"{self.node} ({', '.join(parts)})"


def _norm_uuid(text: str) -> str:
    return text.replace("-", "").lower()


_BY_DIRS = {
    "/dev/disk/by-uuid/": SpecKind.UUID,
    "/dev/disk/by-label/": SpecKind.LABEL,
    "/dev/disk/by-partuuid/": SpecKind.PARTUUID,
    "/dev/disk/by-partlabel/": SpecKind.PARTLABEL,
    "/dev/disk/by-id/": SpecKind.ID,
}


def canonical(spec: DeviceSpec) -> DeviceSpec:
    """``/dev/disk/by-uuid/X`` becomes ``UUID=X`` (and so on), so it matches without udev links."""
    if spec.kind is SpecKind.PATH:
        for prefix, kind in _BY_DIRS.items():
            if spec.value.startswith(prefix) and "/" not in spec.value[len(prefix):]:
                value = udev_unescape(spec.value[len(prefix):])
                if kind in (SpecKind.UUID, SpecKind.PARTUUID):
                    value = value.lower()
                return DeviceSpec(kind, value)
    return spec


def _path_devnum(path: str) -> tuple[int, int] | None:
    import stat

    try:
        st = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISBLK(st.st_mode):
        return None
    return (os.major(st.st_rdev), os.minor(st.st_rdev))


def matches(spec: DeviceSpec, dev: BlockDevice) -> bool:
    """Whether ``dev`` is the device ``spec`` names (``spec`` already :func:`canonical`).

    A device without a medium (size 0: an unattached loop device) is never a match: it exists
    but cannot be opened, so it has not "appeared" yet.
    """
    if dev.size == 0:
        return False
    kind, value = spec.kind, spec.value
    if kind is SpecKind.UUID:
        have = _norm_uuid(dev.get("ID_FS_UUID"))
        if not have:
            return False
        if spec.prefix:
            return dev.get("ID_FS_TYPE") == "crypto_LUKS" and have.startswith(_norm_uuid(value))
        return have == _norm_uuid(value)
    if kind is SpecKind.PARTUUID:
        have = dev.get("ID_PART_ENTRY_UUID").lower()
        return bool(have) and have == value.lower()
    if kind is SpecKind.LABEL:
        return value in (dev.get("ID_FS_LABEL"), udev_unescape(dev.get("ID_FS_LABEL_ENC")))
    if kind is SpecKind.PARTLABEL:
        return bool(dev.get("ID_PART_ENTRY_NAME")) and value == udev_unescape(
            dev.get("ID_PART_ENTRY_NAME"))
    if kind is SpecKind.ID:
        return "/dev/disk/by-id/" + value in dev.links
    # PATH: the node itself, one of its links, a /dev/mapper name, or the same device number
    if value in (dev.node, *dev.links):
        return True
    if value.startswith("/dev/mapper/") and dev.get("DM_NAME"):
        return value[len("/dev/mapper/"):] == dev.get("DM_NAME")
    if dev.get("DM_NAME") and value.count("/") == 3 and dev.get("DM_UUID").startswith("LVM-"):
        # /dev/VG/LV without udev's link (kernel mode): device-mapper names it VG-LV
        vg, lv = value[5:].split("/")
        return dev.get("DM_NAME") == f"{vg.replace('-', '--')}-{lv.replace('-', '--')}"
    num = _path_devnum(value)
    return num is not None and num == dev.devnum


def describe_seen(devices: Iterable[BlockDevice]) -> str:
    """One line per device with a medium, then the empty ones (unattached loops) in one line."""
    devs = sorted(devices, key=lambda d: d.node)
    lines = [f"  {d.describe()}" for d in devs if d.size != 0]
    empty = [os.path.basename(d.node) for d in devs if d.size == 0]
    if empty:
        lines.append(f"  empty (no medium): {' '.join(empty)}")
    return "\n".join(lines) if lines else "  (none)"


# ---------------------------------------------------------------------------------------------
# Probing (kernel mode) and reading sysfs


def _sysfs_read(name: str, attr: str) -> str:
    try:
        with open(f"{SYS_BLOCK}/{name}/{attr}") as f:
            return f.read().strip()
    except OSError:
        return ""


def _dm_name(name: str) -> str:
    return _sysfs_read(name, "dm/name") if name.startswith("dm-") else ""


# ---------------------------------------------------------------------------------------------
# The watcher


def udevd_running() -> bool:
    """systemd's own test: the udev monitor only delivers when udevd's control socket exists."""
    return os.path.exists(UDEV_CONTROL)


def _import_pyudev() -> Any:
    import pyudev

    return pyudev


class DeviceWatcher:
    """One monitor started before enumerating; answers several waits in a row.

    ``mode`` is ``"udev"`` or ``"kernel"``; by default ``udev`` when udevd runs.
    """

    def __init__(self, mode: str | None = None, *, probe: Callable[[str], dict[str, str]]
                 | None = None, layers: Sequence[Layer] = ()) -> None:
        pyudev = _import_pyudev()
        self.mode = mode or ("udev" if udevd_running() else "kernel")
        self._probe = probe or blkid_probe
        self.layers = list(layers)  # every device seen is offered to each (cryptboot.layers)
        # one thread at a time reads the monitor ("pumps"); the others wait to be told
        self._cond = threading.Condition(threading.RLock())
        self._pumper: int | None = None
        self._depth = 0
        self._context = pyudev.Context()
        self._monitor = pyudev.Monitor.from_netlink(self._context, source=self.mode)
        self._monitor.filter_by("block")
        self._monitor.start()
        self.seen: dict[str, BlockDevice] = {}
        self._offered: dict[str, tuple[str, str]] = {}
        if self.mode == "udev":
            log.info("waiting for devices through udev (systemd-udevd is running)")
        else:
            log.info("waiting for devices through kernel uevents and blkid (no udevd running)")
        found = []
        for dev in self._context.list_devices(subsystem="block"):
            if self.mode == "udev" and not dev.is_initialized:
                continue  # udevd has not finished it yet: its event will come
            bdev = self._record(dev, enumerated=True)
            if bdev is not None:
                found.append(bdev)
        for bdev in found:
            self._offer(bdev)

    def close(self) -> None:
        try:
            self._monitor.stop()
        except Exception:  # noqa: BLE001 - closing is best effort
            pass

    def __enter__(self) -> DeviceWatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- building BlockDevice values

    def _record(self, dev: Any, *, enumerated: bool = False) -> BlockDevice | None:
        node = dev.device_node
        name = dev.sys_name
        if not node:
            return None
        if getattr(dev, "action", None) == "remove":
            self.seen.pop(name, None)
            return None
        props = dict(dev.properties.items())
        try:
            number = dev.device_number
            devnum: tuple[int, int] | None = (os.major(number), os.minor(number))
        except Exception:  # noqa: BLE001
            devnum = None
        if self.mode == "kernel":
            props = self._kernel_props(name, node, props)
            links: tuple[str, ...] = ()
        else:
            links = tuple(dev.device_links)
            if not links and props.get("DEVLINKS"):
                links = tuple(props["DEVLINKS"].split())
        if name.startswith("dm-") and not props.get("DM_NAME"):
            dm_name = _dm_name(name)
            if dm_name:
                props["DM_NAME"] = dm_name
                props.setdefault("DM_UUID", _sysfs_read(name, "dm/uuid"))
        size_text = _sysfs_read(name, "size")
        size = int(size_text) if size_text.isdigit() else -1
        bdev = BlockDevice(node=node, name=name, devnum=devnum, props=props, links=links,
                           size=size)
        self.seen[name] = bdev
        return bdev

    def _kernel_props(self, name: str, node: str, props: dict[str, str]) -> dict[str, str]:
        size = _sysfs_read(name, "size")
        if size in ("", "0"):
            return props  # an unattached loop device, an empty drive: nothing to probe
        # a suspended mapping (no table yet, or being changed) would block the read; its
        # resume sends a change event
        if name.startswith("dm-") and _sysfs_read(name, "dm/suspended") == "1":
            return props
        return {**props, **self._probe(node)}

    # -- waiting

    def find(self, spec: DeviceSpec) -> BlockDevice | None:
        """A device seen so far that matches ``spec``."""
        spec = canonical(spec)
        with self._cond:
            for dev in self.seen.values():
                if matches(spec, dev):
                    return dev
        return None

    def _tick(self, deadline: Deadline) -> None:
        for layer in self.layers:
            layer.tick(deadline.waited(), deadline.seconds)

    def _claim(self) -> bool:
        """Become the thread that reads the monitor (again, when nested in this thread)."""
        me = threading.get_ident()
        with self._cond:
            if self._pumper not in (None, me):
                return False
            self._pumper = me
            self._depth += 1
            return True

    def _release(self) -> None:
        with self._cond:
            self._depth -= 1
            if self._depth == 0:
                self._pumper = None
            self._cond.notify_all()

    def _pump(self, timeout: float | None,
              on_device: Callable[[BlockDevice], None] | None) -> None:
        """Read the events there are (waiting up to ``timeout`` for the first), record them,
        then offer them to the layers and to ``on_device`` (outside the lock: a layer or
        rd.auto may prompt, or wait for another device)."""
        got: list[BlockDevice] = []
        event = self._monitor.poll(timeout=timeout)
        while event is not None:
            with self._cond:
                dev = self._record(event)
                self._cond.notify_all()
            if dev is not None:
                got.append(dev)
            event = self._monitor.poll(timeout=0)
        for dev in got:
            self._offer(dev)
            if on_device is not None:
                on_device(dev)

    def _offer(self, dev: BlockDevice) -> None:
        """Offer ``dev`` to the storage layers, once per signature it shows."""
        if not self.layers:
            return
        key = (dev.get("ID_FS_TYPE"), dev.get("ID_FS_UUID"))
        if self._offered.get(dev.name) == key:
            return
        self._offered[dev.name] = key
        for layer in self.layers:
            layer.offer(dev)

    def wait(self, spec: DeviceSpec, timeout: float | None, *,
             on_device: Callable[[BlockDevice], None] | None = None,
             cancelled: threading.Event | None = None) -> BlockDevice:
        """Return the device ``spec`` names as soon as it is there.

        ``timeout`` in seconds (``None``/0 forever) does not run while a prompt is open.
        ``on_device`` sees every device that appears or changes meanwhile (``rd.auto``);
        the layers in play see them too. Several threads may wait at once (a key device
        racing the prompt): one reads the events, the others are told of each device;
        ``cancelled`` ends such a wait with :class:`Cancelled`.
        Raises :class:`DeviceTimeout` naming the spec, the time waited and the devices seen.
        """
        deadline = Deadline(timeout)
        spec_c = canonical(spec)
        if spec_c.kind is SpecKind.ID and self.mode == "kernel" and self.find(spec_c) is None:
            log.warning(f"{spec}: /dev/disk/by-id names need udev; waiting anyway")
        first = True
        while True:
            pump = self._claim()
            try:
                if pump and first:
                    self._pump(0, on_device)
                first = False
                found = self.find(spec_c)
                if found is not None:
                    log.debug(f"{spec}: found {found.describe()}")
                    return found
                left = deadline.remaining()
                if cancelled is not None and cancelled.is_set():
                    raise Cancelled(f"the wait for {spec} was called off")
                if left is not None and left <= 0:
                    raise DeviceTimeout(self.timeout_message(spec, deadline.waited()),
                                        hint=self.timeout_hint(spec))
                slice_ = TICK if left is None else min(left, TICK)
                if pump:
                    self._pump(slice_, on_device)
                    self._tick(deadline)
                else:  # another thread reads the events: it tells us of each new device
                    with self._cond:
                        self._cond.wait(slice_)
            finally:
                if pump:
                    self._release()

    def timeout_message(self, spec: DeviceSpec, waited: float) -> str:
        what = str(spec)
        if spec.kind is SpecKind.PATH and any(layer.name == "lvm" for layer in self.layers):
            from cryptboot.layers.lvm import describe_spec

            what += describe_spec(spec.value)
        layers = "".join(f"\n{text}" for text in (layer.seen() for layer in self.layers) if text)
        return (f"device {what} did not appear (waited {waited:.1f} s, {self.mode} mode); "
                f"block devices seen:\n{describe_seen(self.seen.values())}{layers}")

    def timeout_hint(self, spec: DeviceSpec) -> str:
        return ("check the device named on the kernel command line or in crypttab, and that the "
                "storage driver is in the image; rd.retry=SECONDS waits longer")


def wait_for(spec: DeviceSpec, timeout: float | None, mode: str | None = None) -> BlockDevice:
    """One-shot wait (a fresh watcher)."""
    with DeviceWatcher(mode) as watcher:
        return watcher.wait(spec, timeout)
