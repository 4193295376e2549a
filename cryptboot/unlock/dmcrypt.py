"""Open a dm-crypt volume (LUKS1/2, plain, BitLocker, TrueCrypt) with ``cryptsetup open``.

The key goes to cryptsetup's stdin (``--key-file=-``): every byte counts, no newline is added,
and it never appears in argv or the environment. Exit status 2 ("no permission", i.e. no keyslot
takes this key) becomes :class:`WrongKey`; any other failure shows cryptsetup's own message.

Before a LUKS2 volume is opened, its keyslots' Argon2 memory cost is compared with the memory
available: a keyslot the machine cannot afford is refused with a message instead of letting the
kernel's OOM killer end the boot.
"""

from __future__ import annotations

import os
import struct

from cryptboot import log
from cryptboot.config.model import CryptType, VolumeOptions
from cryptboot.errors import CommandError, CryptbootError, WrongKey
from cryptboot.paths import UDEV_CONTROL
from cryptboot.run import Started, run
from cryptboot.unlock import is_active as active_name

TYPE_CHECKING = False
if TYPE_CHECKING:  # not imported at run time: typing is slow to import
    from typing import Any

EXIT_WRONG_KEY = 2
EXIT_EXISTS = 5
DEFAULT_PLAIN_KEY_BITS = 256


def open_argv(name: str, device: str, opts: VolumeOptions, *, binary: bool) -> list[str]:
    """The ``cryptsetup open`` argv (no key in it: the key goes to stdin)."""
    argv = ["cryptsetup", "open", "--type", opts.type.value]
    if opts.type is CryptType.PLAIN:
        if opts.cipher:
            argv += ["--cipher", opts.cipher]
        argv += ["--key-size", str(opts.key_size or DEFAULT_PLAIN_KEY_BITS)]
        # a keyfile is a raw key (as cryptsetup treats --key-file=FILE); a typed passphrase
        # is hashed with hash= (or cryptsetup's default)
        if binary:
            argv += ["--hash", "plain"]
        elif opts.hash:
            argv += ["--hash", opts.hash]
        if opts.offset is not None:
            argv += ["--offset", str(opts.offset)]
        if opts.skip is not None:
            argv += ["--skip", str(opts.skip)]
        if opts.sector_size:
            argv += ["--sector-size", str(opts.sector_size)]
    elif opts.cipher and opts.type is not CryptType.LUKS:
        argv += ["--cipher", opts.cipher]
    if opts.header:
        argv += ["--header", opts.header]
    if opts.key_slot is not None:
        argv += ["--key-slot", str(opts.key_slot)]
    if opts.discard:
        argv.append("--allow-discards")
    if opts.readonly:
        argv.append("--readonly")
    argv += ["--key-file=-", device, name]
    return argv


# ---------------------------------------------------------------------------------------------
# LUKS2 Argon2 memory check


def luks2_metadata(path: str, *, needle: bytes | None = None) -> dict[str, Any] | None:
    """The JSON metadata of a LUKS2 header at the start of ``path``; None for anything else.

    ``needle``: None as well when the metadata text does not contain these bytes, without
    parsing it (importing ``json`` costs tens of milliseconds at boot under emulation).
    """
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
            if len(head) < 4096 or head[:6] != b"LUKS\xba\xbe":
                return None
            version, hdr_size = struct.unpack(">HQ", head[6:16])
            if version != 2 or not 4096 < hdr_size <= 4 * 1024 * 1024:
                return None
            area = f.read(hdr_size - 4096)
    except OSError:
        return None
    if needle is not None and needle not in area:
        return None
    import json

    try:
        meta = json.loads(area.rstrip(b"\0").decode())
    except (ValueError, UnicodeDecodeError):
        return None
    return meta if isinstance(meta, dict) else None


def luks2_argon2_slots(meta: dict[str, Any]) -> dict[int, int]:
    """Keyslot -> Argon2 memory cost in KiB."""
    slots: dict[int, int] = {}
    for sid, slot in (meta.get("keyslots") or {}).items():
        kdf = slot.get("kdf") or {}
        if str(kdf.get("type", "")).startswith("argon2"):
            try:
                slots[int(sid)] = int(kdf.get("memory", 0))
            except (TypeError, ValueError):
                continue
    return slots


def mem_available_kib(meminfo: str = "/proc/meminfo") -> int | None:
    try:
        with open(meminfo) as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def check_argon2_memory(name: str, header: str, key_slot: int | None,
                        meminfo: str = "/proc/meminfo") -> None:
    """Refuse when every usable keyslot needs more Argon2 memory than is available."""
    # no keyslot names argon2 (pbkdf2 only): nothing to check, no JSON to parse
    meta = luks2_metadata(header, needle=b"argon2")
    costs = luks2_argon2_slots(meta) if meta else {}
    if not meta or not costs:
        return
    available = mem_available_kib(meminfo)
    if available is None:
        return
    too_big = {s: m for s, m in costs.items() if m > available}
    if not too_big:
        return
    slots = {int(k) for k in meta.get("keyslots") or {}}
    usable = {key_slot} if key_slot is not None else slots
    if usable <= set(too_big):
        worst = min(too_big[s] for s in usable)
        which = f"keyslot {key_slot}" if key_slot is not None else (
            "keyslot " + ", ".join(str(s) for s in sorted(usable)))
        raise CryptbootError(
            f"cannot unlock {name}: its LUKS2 {which} needs {worst // 1024} MiB of memory for "
            f"Argon2 but only {available // 1024} MiB are available; opening it would get the "
            "boot killed by the out-of-memory killer",
            hint="boot with more memory, or add a keyslot with a smaller cost on a bigger "
                 "machine: cryptsetup luksAddKey --pbkdf-memory KIB DEVICE")
    names = ", ".join(f"{s} ({m // 1024} MiB)" for s, m in sorted(too_big.items()))
    log.warning(f"{name}: Argon2 keyslot(s) {names} need more than the {available // 1024} MiB "
                "available; cryptsetup may be killed if it tries them")


# ---------------------------------------------------------------------------------------------


def open_volume(name: str, device: str, key: bytes, opts: VolumeOptions, *,
                binary: bool = False, meminfo: str = "/proc/meminfo",
                prepared: Prepared | None = None, token: int | None = None) -> bool:
    """Map ``device`` as ``/dev/mapper/NAME``. Returns False when it was already active.

    ``binary``: the key is a keyfile's bytes (raw key for plain mode) rather than a typed
    passphrase; ``prepared``: cryptsetup processes started ahead of the key (one for this
    device and name is used when its options fit). Raises :class:`WrongKey` or
    :class:`CommandError` (with cryptsetup's message).
    """
    if active_name(name):
        log.info(f"{name} is already active; left alone")
        return False
    if opts.type is CryptType.LUKS:
        check_argon2_memory(name, opts.header or device, opts.key_slot, meminfo)
    if opts.type is CryptType.PLAIN and binary:
        need = (opts.key_size or DEFAULT_PLAIN_KEY_BITS) // 8
        if len(key) < need:
            raise CryptbootError(f"the keyfile for {name} has {len(key)} bytes; plain mode "
                                 f"with a {need * 8}-bit key needs {need}")
    argv = open_argv(name, device, opts, binary=binary)
    if token is not None:  # issue 13: cryptsetup's token plugin opens it (PIN on stdin)
        at = argv.index("--key-file=-")
        argv[at:at + 1] = ["--token-only", "--token-id", str(token)]
    started = prepared.take(device, name) if prepared is not None else None
    if started is not None and started.argv != argv:
        started.cancel()  # prepared for other options (a keyfile after all): start afresh
        started = None
    if started is not None:
        proc = started.finish(key, check=False)
    else:
        proc = run(argv, input=key, check=False, env=dm_env())
    if proc.returncode == 0:
        if opts.type is CryptType.PLAIN:
            _check_plain_result(name)
        return True
    err = (proc.stderr or b"").decode(errors="replace").strip()
    last = err.splitlines()[-1] if err else ""
    if proc.returncode == EXIT_WRONG_KEY:
        raise WrongKey(f"wrong key for {name}" + (f": {last}" if last else ""))
    if proc.returncode == EXIT_EXISTS and active_name(name):
        log.info(f"{name} is already active; left alone")
        return False
    from cryptboot.run import command_error

    base = command_error(proc)
    hint = None
    if proc.returncode < 0:
        hint = "cryptsetup was killed: too little memory for the key derivation?"
    raise CommandError(f"cannot unlock {name} ({device}): {base.message}", argv0="cryptsetup",
                       returncode=proc.returncode, stderr=err, hint=hint)


class Prepared:
    """``cryptsetup open`` processes started for a passphrase that is still being typed: each
    loads its libraries and reads the LUKS header while the prompt waits, then blocks on stdin;
    :func:`open_volume` given this object hands the key to the one for its device and name.
    Owned by whoever unlocks (the crypt layer), cancelled when it is done."""

    def __init__(self) -> None:
        self._started: dict[str, Started] = {}  # "DEVICE:NAME" -> cryptsetup waiting for a key

    def start(self, name: str, device: str, opts: VolumeOptions) -> bool:
        """Start one for LUKS with the header on the device (a detached header may sit on a
        device mounted later). Returns whether it started."""
        key = f"{device}:{name}"
        if opts.type is not CryptType.LUKS or opts.header or opts.header_device \
                or key in self._started:
            return False
        from cryptboot.run import start

        self._started[key] = start(open_argv(name, device, opts, binary=False), env=dm_env())
        return True

    def take(self, device: str, name: str) -> Started | None:
        return self._started.pop(f"{device}:{name}", None)

    def cancel(self) -> None:
        """Stop every one that was not given a key (the boot went another way)."""
        while self._started:
            self._started.popitem()[1].cancel()


def _check_plain_result(name: str) -> None:
    """Plain dm-crypt cannot tell a wrong key; as Debian does, no filesystem means wrong key."""
    from cryptboot.blkid import probe as blkid_probe

    node = f"/dev/mapper/{name}"
    if not os.path.exists(node):
        return
    if blkid_probe(node).get("ID_FS_TYPE"):
        return
    close(name)
    raise WrongKey(f"no filesystem found on {node} after opening it in plain mode: "
                   "wrong passphrase or options?")


def close(name: str) -> None:
    run(["cryptsetup", "close", name], check=False, env=dm_env())


DM_RULES = ("/etc/udev/rules.d", "/lib/udev/rules.d", "/usr/lib/udev/rules.d")


def dm_env() -> dict[str, str]:
    """``DM_DISABLE_UDEV=1`` when udevd runs without device-mapper's rules.

    With udevd running, libdevmapper waits for udev to confirm each new mapping, which only the
    rule ``95-dm-notify.rules`` does: without it cryptsetup would wait forever. Then libdevmapper
    is told to create /dev/mapper/NAME itself instead.
    """
    if not os.path.exists(UDEV_CONTROL):
        return {}
    from cryptboot.udev import listening

    if not listening():  # issue 19: a socket file left by a udevd that is gone
        return {"DM_DISABLE_UDEV": "1"}
    if any(os.path.exists(os.path.join(d, "95-dm-notify.rules")) for d in DM_RULES):
        return {}
    return {"DM_DISABLE_UDEV": "1"}
