"""The crypt layer: waits for each volume's device, gets its key, opens it.

It claims the devices the plan's volumes name, one volume at a time in the plan's order (so
prompts come in a predictable order and two memory-hard key derivations never run at once),
and, with ``rd.auto``, any other LUKS device it is offered, as ``luks-UUID``. The mappings it
opens come back through the device stream like any disk, for the layers above (or the root).

Shared by ``cryptboot boot`` and ``cryptboot unlock``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from cryptboot import log
from cryptboot.config.model import DeviceSpec, KeyKind, KeySource, Plan, SpecKind, Volume
from cryptboot.errors import CryptbootError
from cryptboot.layers import Layer

TYPE_CHECKING = False
if TYPE_CHECKING:
    import threading

    from cryptboot.devices import BlockDevice, DeviceWatcher
    from cryptboot.unlock.dmcrypt import Prepared


def volumes_to_unlock(plan: Plan, names: Sequence[str] = ()) -> tuple[Volume, ...]:
    """All volumes but ``noauto`` ones, or exactly those named (noauto too)."""
    if not names:
        return tuple(v for v in plan.volumes if not v.options.noauto)
    by_name = {v.name: v for v in plan.volumes}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        known = ", ".join(by_name) or "none"
        raise CryptbootError(f"no volume named {', '.join(unknown)} in the plan (volumes: {known})",
                             hint="see `cryptboot plan`")
    return tuple(by_name[n] for n in names)


class Unlocker(Layer):
    """The crypt layer, and the device wait it shares with the other layers in play."""

    name = "crypt"

    def __init__(self, plan: Plan, *, consoles: Sequence[str] | None = None,
                 watcher: DeviceWatcher | None = None, use_layers: bool = False) -> None:
        from cryptboot.keys import KeyEnv

        self.plan = plan
        # the other storage layers activate what the devices make up: in `cryptboot boot` only
        # (a running system and the dracut/initramfs-tools images have their own activation)
        self.use_layers = use_layers
        self._watcher = watcher
        self.layers: list[Layer] = [self]
        self.env = KeyEnv(consoles=consoles, device_timeout=plan.device_timeout or None,
                          wait_device=self._wait_node, find_device=self._find_node)
        self.env.plan = plan  # issue 13: a tang token brings the initramfs network up
        self.opened: list[str] = []
        self.failed: list[str] = []
        self._planned: list[DeviceSpec] = []
        self._prepared: Prepared | None = None
        # called once before the first cryptsetup (the background module loading must be done)
        self.before_open: Callable[[], None] | None = None
        # called with a volume and its device node once found (the background may start on
        # the ciphers, and prepare cryptsetup while the prompt waits)
        self.on_found: Callable[[Volume, str], None] | None = None

    def _ready(self) -> None:
        if self.before_open is not None:
            hook, self.before_open = self.before_open, None
            hook()

    # -- devices

    @property
    def watcher(self) -> DeviceWatcher:
        if self._watcher is None:
            from cryptboot.devices import DeviceWatcher
            from cryptboot.layers import load

            if self.use_layers:
                self.layers += load(self.plan)
            self._watcher = DeviceWatcher(layers=self.layers)
        return self._watcher

    def wait(self, spec: DeviceSpec, timeout: float | None, *,
             on_device: Callable[[BlockDevice], None] | None = None,
             cancelled: threading.Event | None = None) -> BlockDevice:
        if cancelled is None:  # keeps fakes with the two-argument wait working
            dev = self.watcher.wait(spec, timeout, on_device=on_device)
        else:
            dev = self.watcher.wait(spec, timeout, on_device=on_device, cancelled=cancelled)
        if dev.get("ID_FS_TYPE") == "btrfs":
            self._wait_complete(dev, timeout, on_device)
        return dev

    def _wait_complete(self, dev: BlockDevice, timeout: float | None,
                       on_device: Callable[[BlockDevice], None] | None) -> None:
        """A device of a multi-device btrfs matched: go on reading device events (the btrfs
        layer registers each member as it appears) until the filesystem is complete, or the
        wait's time is up (then the mount says what is missing; ``rootflags=degraded`` may
        still mount it)."""
        import time

        from cryptboot.errors import DeviceTimeout

        layer = next((la for la in self.layers if la.name == "btrfs"), None)
        complete = getattr(layer, "complete", None)
        if complete is None or complete(dev) is not False:
            return
        start = time.monotonic()
        # a spec nothing matches: each short wait reads and offers the events there are
        never = DeviceSpec(SpecKind.UUID, f"btrfs-members-of-{dev.get('ID_FS_UUID')}")
        while complete(dev) is False:
            waited = time.monotonic() - start
            if timeout and waited >= timeout:
                log.warning(f"btrfs: {dev.node}: filesystem {dev.get('ID_FS_UUID')} still "
                            f"misses devices after {waited:.1f} s; mounting it anyway")
                return
            try:
                self.watcher.wait(never, 0.25, on_device=on_device)
            except DeviceTimeout:
                pass
        log.info(f"btrfs: filesystem {dev.get('ID_FS_UUID')} complete after "
                 f"{time.monotonic() - start:.1f} s more")

    def _wait_node(self, spec: DeviceSpec, timeout: float | None,
                   cancelled: threading.Event | None = None) -> str:
        return self.wait(spec, timeout, cancelled=cancelled).node

    def _find_node(self, spec: DeviceSpec) -> str | None:
        find = getattr(self.watcher, "find", None)
        if find is None:
            return spec.value  # a watcher that cannot tell: treat the device as there
        dev = find(spec)
        return dev.node if dev is not None else None

    def prepare(self, volume: Volume, node: str) -> str:
        """Start cryptsetup for ``volume`` ahead of its key (see
        :class:`cryptboot.unlock.dmcrypt.Prepared`); returns what happened, in words."""
        from cryptboot.unlock import needs_key
        from cryptboot.unlock.dmcrypt import Prepared

        if self._prepared is None:
            self._prepared = Prepared()
        if needs_key(volume) and self._prepared.start(volume.name, node, volume.options):
            return f"cryptsetup for {volume.name} waits for its key"
        return f"not for {volume.name} (not LUKS with its header on {node})"

    def close(self) -> None:
        for layer in self.layers[1:]:
            layer.close()
        if self._watcher is not None:
            self._watcher.close()
            self._watcher = None
        self.env.cache.wipe()
        if self._prepared is not None:
            self._prepared.cancel()

    def seen(self) -> str:
        return ""

    # -- volumes

    def device_timeout(self, volume: Volume) -> float | None:
        t = volume.options.device_timeout
        return self.plan.device_timeout if t is None else t

    def unlock_all(self, volumes: Sequence[Volume]) -> None:
        """Unlock ``volumes`` in order; a ``nofail`` volume that fails is reported and skipped."""
        self._planned = [v.source for v in volumes]
        for volume in volumes:
            with log.step(f"unlock {volume.name}"):
                try:
                    self.unlock(volume)
                except CryptbootError as e:
                    if not volume.options.nofail:
                        raise
                    self.failed.append(volume.name)
                    log.warning(f"{volume.name} (nofail) was not unlocked: {e.message}")

    def unlock(self, volume: Volume, dev: BlockDevice | None = None) -> None:
        """Unlock one volume; ``dev`` when its device is already known (rd.auto)."""
        from cryptboot.keys import unlock_with_keys
        from cryptboot.unlock import is_active, needs_key, prepare, unlock_volume
        from cryptboot.unlock.header import header_for

        if not volume.name_from_device and is_active(volume.name):
            log.info(f"{volume.name} is already active; left alone")
            return
        prepare(volume)
        if dev is None:
            dev = self.wait(volume.source, self.device_timeout(volume))
        if volume.name_from_device:
            fs_uuid = dev.get("ID_FS_UUID")
            if fs_uuid:
                volume = volume._replace(name=f"luks-{fs_uuid}")
            if is_active(volume.name):
                log.info(f"{volume.name} is already active; left alone")
                return
        log.info(f"{volume.name}: found {dev.describe()}")
        if self.on_found is not None:
            self.on_found(volume, dev.node)
        with header_for(volume, self._wait_node, self.device_timeout(volume)) as vol:
            if not needs_key(vol):
                self._ready()
                unlock_volume(vol, dev.node, None)
            else:
                from cryptboot.keys.tokens import token_sources

                node = dev.node
                vol = token_sources(vol, node)  # issue 13: TPM2 / clevis tokens race the prompt
                unlock_with_keys(vol, node, self.env,
                                 lambda key: self._open(vol, node, key.data, key.binary,
                                                        key.token))
        self.opened.append(volume.name)

    def _open(self, volume: Volume, node: str, key: bytes, binary: bool,
              token: int | None = None) -> None:
        from cryptboot.unlock import unlock_volume

        self._ready()
        unlock_volume(volume, node, key, binary=binary, prepared=self._prepared, token=token)

    # -- the device stream (rd.auto)

    def auto_unlock(self, dev: BlockDevice) -> None:
        from cryptboot.devices import canonical, matches
        from cryptboot.unlock import is_active

        fs_uuid = dev.get("ID_FS_UUID")
        if dev.get("ID_FS_TYPE") != "crypto_LUKS" or not fs_uuid:
            return
        if any(matches(canonical(spec), dev) for spec in self._planned):
            return  # a planned volume's: the plan's order and name
        name = f"luks-{fs_uuid}"
        if is_active(name) or name in self.failed:
            return
        vol = Volume(name, DeviceSpec(SpecKind.PATH, dev.node),
                     (KeySource(KeyKind.CACHED), KeySource(KeyKind.PROMPT)), origin="rd.auto")
        try:
            with log.step(f"unlock {name} (rd.auto)"):
                self.unlock(vol, dev)
        except CryptbootError as e:
            self.failed.append(name)
            log.warning(f"rd.auto: {name} was not unlocked: {e.message}")

