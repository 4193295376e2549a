"""Find the block device a :class:`DeviceSpec` names, as soon as it appears.

Event-driven, never a global settle: a pyudev ``Monitor`` on ``block`` is started *before* the
existing devices are enumerated, so a device that appears in between is not missed, and each wait
returns the moment its device is there.

Two modes, chosen once per watcher and logged:

- ``udev``: ``systemd-udevd`` runs (``/run/udev/control`` exists). Events and the database carry
  ``ID_FS_UUID``, ``ID_FS_LABEL``, ``ID_PART_ENTRY_*`` and the ``/dev/disk/by-*`` links.
- ``kernel``: no udevd (a bare initramfs, a test host). The kernel's own uevents say *that* a
  device appeared or changed; ``blkid -p -o udev`` on it supplies the same ``ID_*`` properties.

Timeouts are :class:`Deadline` values that do not run while a passphrase prompt is open
(:func:`prompt_open`), so a slow typist never turns into "device not found".
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager

from cryptboot import log
from cryptboot.config.model import DeviceSpec, SpecKind
from cryptboot.errors import DeviceTimeout

TYPE_CHECKING = False
if TYPE_CHECKING:  # not imported at run time: typing is slow to import
    from typing import Any

UDEV_CONTROL = "/run/udev/control"
SYS_BLOCK = "/sys/class/block"

# ---------------------------------------------------------------------------------------------
# Time that does not run while a prompt is open


class _PauseClock:
    """Total time spent with at least one passphrase prompt open (process-wide)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._depth = 0
        self._since = 0.0
        self._total = 0.0

    def enter(self) -> None:
        with self._lock:
            if self._depth == 0:
                self._since = time.monotonic()
            self._depth += 1

    def leave(self) -> None:
        with self._lock:
            self._depth -= 1
            if self._depth == 0:
                self._total += time.monotonic() - self._since

    def total(self) -> float:
        with self._lock:
            extra = time.monotonic() - self._since if self._depth else 0.0
            return self._total + extra

    def is_paused(self) -> bool:
        with self._lock:
            return self._depth > 0


_PAUSE = _PauseClock()


@contextmanager
def prompt_open() -> Iterator[None]:
    """Hold every device-wait deadline while a passphrase prompt is on screen."""
    _PAUSE.enter()
    try:
        yield
    finally:
        _PAUSE.leave()


class Deadline:
    """A timeout that only counts time without a prompt open; ``None`` or 0 s means forever."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds if seconds else None
        self._start = time.monotonic()
        self._paused_at_start = _PAUSE.total()

    def waited(self) -> float:
        """Seconds counted so far (wall time minus time with a prompt open)."""
        paused = _PAUSE.total() - self._paused_at_start
        return max(0.0, time.monotonic() - self._start - paused)

    def remaining(self) -> float | None:
        """Seconds left, ``None`` for forever; while a prompt is open, never below 0.1 s."""
        if self.seconds is None:
            return None
        left = self.seconds - self.waited()
        if _PAUSE.is_paused():
            return max(left, 0.1)
        return left

    def expired(self) -> bool:
        left = self.remaining()
        return left is not None and left <= 0


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
            value = unescape(self.get(key + "_ENC") or self.get(key))
            if value:
                parts.append(f"{tag}={value}")
        return f"{self.node} ({', '.join(parts)})"


_HEXDIGITS = frozenset("0123456789abcdefABCDEF")


def unescape(text: str) -> str:
    r"""Undo udev's ``\xNN`` encoding (``ID_FS_LABEL_ENC``, by-label link names).

    By hand, not with a regular expression: compiling one at import costs every boot."""
    if "\\x" not in text:
        return text
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        if text.startswith("\\x", i) and i + 4 <= n and set(text[i + 2:i + 4]) <= _HEXDIGITS:
            out.append(chr(int(text[i + 2:i + 4], 16)))
            i += 4
        else:
            out.append(text[i])
            i += 1
    raw = "".join(out)
    try:
        return raw.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return raw


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
                value = unescape(spec.value[len(prefix):])
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
        return value in (dev.get("ID_FS_LABEL"), unescape(dev.get("ID_FS_LABEL_ENC")))
    if kind is SpecKind.PARTLABEL:
        return bool(dev.get("ID_PART_ENTRY_NAME")) and value == unescape(
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


def parse_udev_export(text: str) -> dict[str, str]:
    """``KEY=value`` lines (``blkid -o udev``) into a dict."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key:
            out[key.strip()] = value
    return out


def blkid_probe(node: str) -> dict[str, str]:
    """Low-level probe of ``node`` (``blkid -p -o udev``); {} when it has no signature."""
    from cryptboot.run import run

    try:
        proc = run(["blkid", "-p", "-o", "udev", node], check=False, timeout=30)
    except Exception as e:  # noqa: BLE001 - a probe failure only means "unknown"
        log.debug(f"blkid {node}: {e}")
        return {}
    if proc.returncode not in (0, 2):
        err = (proc.stderr or b"").decode(errors="replace").strip()
        log.debug(f"blkid {node}: exit {proc.returncode}: {err}")
    return parse_udev_export((proc.stdout or b"").decode(errors="replace"))


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
                 | None = None) -> None:
        pyudev = _import_pyudev()
        self.mode = mode or ("udev" if udevd_running() else "kernel")
        self._probe = probe or blkid_probe
        self._context = pyudev.Context()
        self._monitor = pyudev.Monitor.from_netlink(self._context, source=self.mode)
        self._monitor.filter_by("block")
        self._monitor.start()
        self.seen: dict[str, BlockDevice] = {}
        # storage layers (issue 12): every device seen is offered to each (cryptboot.layers)
        self.layers: list[Any] = []
        self._offered: dict[str, tuple[str, str]] = {}
        if self.mode == "udev":
            log.info("waiting for devices through udev (systemd-udevd is running)")
        else:
            log.info("waiting for devices through kernel uevents and blkid (no udevd running)")
        for dev in self._context.list_devices(subsystem="block"):
            if self.mode == "udev" and not dev.is_initialized:
                continue  # udevd has not finished it yet: its event will come
            self._record(dev, enumerated=True)

    def close(self) -> None:
        for layer in self.layers:
            layer.close()
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
        for dev in self.seen.values():
            if matches(spec, dev):
                return dev
        return None

    def _drain(self, on_device: Callable[[BlockDevice], None] | None) -> None:
        while True:
            event = self._monitor.poll(timeout=0)
            if event is None:
                return
            dev = self._record(event)
            if dev is not None:
                self._offer(dev)
            if dev is not None and on_device is not None:
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
             on_device: Callable[[BlockDevice], None] | None = None) -> BlockDevice:
        """Return the device ``spec`` names as soon as it is there.

        ``timeout`` in seconds (``None``/0 forever) does not run while a prompt is open.
        ``on_device`` sees every device that appears or changes meanwhile (``rd.auto``).
        Raises :class:`DeviceTimeout` naming the spec, the time waited and the devices seen.
        """
        deadline = Deadline(timeout)
        for known in list(self.seen.values()):
            self._offer(known)
        self._drain(on_device)
        spec_c = canonical(spec)
        found = self.find(spec_c)
        if found is None and spec_c.kind is SpecKind.ID and self.mode == "kernel":
            log.warning(f"{spec}: /dev/disk/by-id names need udev; waiting anyway")
        while found is None:
            left = deadline.remaining()
            if left is not None and left <= 0:
                raise DeviceTimeout(self.timeout_message(spec, deadline.waited()),
                                    hint=self.timeout_hint(spec))
            if self.layers:  # layers tick about twice a second (md: degraded start)
                for layer in self.layers:
                    layer.tick(deadline.waited(), deadline.seconds)
                ticked = self.find(spec_c)
                if ticked is not None:
                    found = ticked
                    break
                left = 0.5 if left is None else min(left, 0.5)
            event = self._monitor.poll(timeout=left)
            if event is None:
                continue
            dev = self._record(event)
            if dev is None:
                continue
            self._offer(dev)
            if on_device is not None:
                on_device(dev)
            if matches(spec_c, dev):
                found = dev
        log.debug(f"{spec}: found {found.describe()}")
        return found

    def timeout_message(self, spec: DeviceSpec, waited: float) -> str:
        what = str(spec)
        layers = ""
        if self.layers:
            from cryptboot.layers.lvm import describe_spec

            what += describe_spec(spec.value) if spec.kind is SpecKind.PATH else ""
            layers = "".join(f"\n{layer.seen()}" for layer in self.layers)
        return (f"device {what} did not appear (waited {waited:.1f} s, {self.mode} mode); "
                f"block devices seen:\n{describe_seen(self.seen.values())}{layers}")

    def timeout_hint(self, spec: DeviceSpec) -> str:
        return ("check the device named on the kernel command line or in crypttab, and that the "
                "storage driver is in the image; rd.retry=SECONDS waits longer")


def wait_for(spec: DeviceSpec, timeout: float | None, mode: str | None = None) -> BlockDevice:
    """One-shot wait (a fresh watcher)."""
    with DeviceWatcher(mode) as watcher:
        return watcher.wait(spec, timeout)
