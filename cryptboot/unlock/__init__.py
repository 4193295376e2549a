"""Turn (volume, device, key) into an open mapping: dm-crypt through cryptsetup, or NetBSD cgd.

One volume at a time: the flow calls :func:`unlock_volume` for each volume in turn, never in
parallel, so two memory-hard key derivations never run at once.
"""

from __future__ import annotations

from cryptboot import log
from cryptboot.config.model import CryptType, Volume
from cryptboot.errors import CryptbootError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from cryptboot.unlock.dmcrypt import Prepared


def is_active(name: str) -> bool:
    """Whether a device-mapper device ``name`` exists (sysfs: no process, and no import of the
    dm-crypt code before the prompt)."""
    import os

    if os.path.exists(f"/dev/mapper/{name}"):
        return True
    try:
        entries = os.listdir("/sys/block")
    except OSError:
        return False
    for entry in entries:
        if entry.startswith("dm-"):
            try:
                with open(f"/sys/block/{entry}/dm/name") as f:
                    if f.read().strip() == name:
                        return True
            except OSError:
                continue
    return False


def prepare(volume: Volume) -> None:
    """Checks made before any key is asked for (so nobody types a passphrase for nothing)."""
    if volume.options.type is CryptType.CGD:
        if not volume.options.cgd_params:
            raise CryptbootError(f"cgd volume {volume.name}: no params file (cgd=PARAMSFILE)")
        from cryptboot.unlock.cgd import ensure_openable

        ensure_openable(volume.options.cgd_params)


def needs_key(volume: Volume) -> bool:
    """False for a cgd volume whose params file makes the key without a passphrase."""
    if volume.options.type is CryptType.CGD and volume.options.cgd_params:
        from cryptboot.unlock.cgd import needs_passphrase

        return needs_passphrase(volume.options.cgd_params)
    return True


def unlock_volume(volume: Volume, device: str, key: bytes | None, *, binary: bool = False,
                  prepared: Prepared | None = None, token: int | None = None) -> bool:
    """Open ``volume`` on ``device`` with ``key``. False when it was already active.

    ``token``: open through that LUKS2 token (cryptsetup's plugin; ``key`` is its PIN or empty).

    Raises :class:`~cryptboot.errors.WrongKey` for a key that does not fit, other
    :class:`~cryptboot.errors.CryptbootError` for everything else.
    """
    opts = volume.options
    if opts.type is CryptType.CGD:
        if is_active(volume.name):
            log.info(f"{volume.name} is already active; left alone")
            return False
        from cryptboot.unlock.cgd import open_cgd

        assert opts.cgd_params is not None
        open_cgd(volume.name, device, opts.cgd_params, key)
        return True
    from cryptboot.unlock.dmcrypt import open_volume

    if key is None:
        raise CryptbootError(f"no key for {volume.name}")
    return open_volume(volume.name, device, key, opts, binary=binary, prepared=prepared,
                       token=token)
