"""Keys on another device (the ``devfile`` and ``devraw`` providers): a keyfile on a USB stick
(mounted read-only, read, unmounted at once; nothing is copied) or raw bytes at an offset.

When the device is already there the key is tried in order; when it is not, the provider waits
for it in a thread, racing the prompt: plugging the stick in while the prompt is open unlocks
the volume and withdraws the prompt. ``keyfile-timeout=`` bounds the wait (time with a prompt
open does not count), then the next source goes on alone.
"""

from __future__ import annotations

import os

from cryptboot.config.model import KeyKind
from cryptboot.errors import CryptbootError, DeviceTimeout
from cryptboot.keys.keyfile import KeyUnavailable, read_keyfile, read_raw
from cryptboot.keys.providers import Provider
from cryptboot.paths import RUN_DIR

TYPE_CHECKING = False
if TYPE_CHECKING:
    from cryptboot.keys import KeyRequest

KEYDEV_MOUNT = f"{RUN_DIR}/keydev"


def read_from_device(node: str, path: str, fstype: str | None, offset: int = 0,
                     size: int | None = None, mountpoint: str = KEYDEV_MOUNT) -> bytes:
    """Mount ``node`` read-only, read the keyfile ``path`` on it, unmount."""
    from cryptboot.syscalls import mounted_readonly

    try:
        with mounted_readonly(node, mountpoint, fstype) as where:
            return read_keyfile(os.path.join(where, path.lstrip("/")), offset, size)
    except OSError as e:
        raise KeyUnavailable(f"cannot mount key device {node}: {e.strerror}") from None


class _Device(Provider):
    name = "key device"
    background = True
    waits_first = True

    def ready(self, req: KeyRequest) -> bool:
        find = req.env.find_device
        dev = req.source.device
        return find is None or dev is None or find(dev) is not None

    def attempt(self, req: KeyRequest) -> str | None:
        from cryptboot.keys import Key

        src, env = req.source, req.env
        if src.device is None or env.wait_device is None:
            raise KeyUnavailable("key device not given")
        timeout = src.timeout if src.timeout is not None else env.device_timeout
        try:
            if env.find_device is None:
                node = env.wait_device(src.device, timeout)
            else:  # racing: as long as the prompt is open; called off when the volume is done
                node = env.wait_device(src.device, None if req.racing else timeout,
                                       cancelled=req.cancelled)
        except DeviceTimeout:
            waited = f" within {timeout:g} s" if timeout else ""
            raise KeyUnavailable(f"key device {src.device} did not appear{waited}",
                                 later=env.find_device is not None) from None
        except CryptbootError as e:
            raise KeyUnavailable(f"key device {src.device}: {e.message.splitlines()[0]}"
                                 ) from None
        if src.kind is KeyKind.DEVRAW:
            key = Key(read_raw(node, src.offset, src.size), src.kind,
                      f"raw key on {src.device}", binary=True)
        else:
            assert src.path is not None
            key = Key(read_from_device(node, src.path, src.fstype, src.offset, src.size),
                      src.kind, f"keyfile {src.path} on {src.device}", binary=True)
        return req.open_with(key)


def provider() -> Provider:
    return _Device()
