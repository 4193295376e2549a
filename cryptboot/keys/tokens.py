"""LUKS2 tokens in a volume's header become key sources (issue 13).

Once a LUKS volume's device is found, its header is read once more (the same few KiB
:func:`cryptboot.unlock.dmcrypt.check_argon2_memory` reads; the page cache has them): only when
the metadata text names a ``clevis`` or ``systemd-tpm2`` token is it parsed as JSON, so a plain
LUKS boot pays one small read and a substring search, nothing more. Each such token adds a
background key source (:class:`KeyKind.CLEVIS`, :class:`KeyKind.TPM2`) that races the prompt.

LUKS1 has no tokens; clevis keeps its JWE there in luksmeta slots, which cryptboot does not
read: a LUKS1 volume with a luksmeta area gets one line saying so (convert the volume to LUKS2
and bind again), and the other key sources go on.
"""

from __future__ import annotations

import struct

from cryptboot import log
from cryptboot.config.model import CryptType, KeyKind, KeySource, Volume

TYPE_CHECKING = False
if TYPE_CHECKING:  # not imported at run time: typing is slow to import
    from typing import Any

TOKEN_KINDS = {"clevis": KeyKind.CLEVIS, "systemd-tpm2": KeyKind.TPM2}
NEEDLES = (b'"clevis"', b'"systemd-tpm2"')
LUKSMETA_MAGIC = b"LUKSMETA"


def read_tokens(header: str) -> dict[int, dict[str, Any]]:
    """``{token number: token}`` of the LUKS2 header at ``header``; {} for anything else."""
    from cryptboot.unlock.dmcrypt import luks2_metadata

    meta = luks2_metadata(header)
    out: dict[int, dict[str, Any]] = {}
    for tid, token in ((meta or {}).get("tokens") or {}).items():
        try:
            if isinstance(token, dict):
                out[int(tid)] = token
        except ValueError:
            continue
    return out


def _has_token_text(header: str) -> bool | None:
    """Whether the LUKS2 metadata names a token type we handle; None: not LUKS2."""
    try:
        with open(header, "rb") as f:
            head = f.read(4096)
            if len(head) < 4096 or head[:6] != b"LUKS\xba\xbe":
                return None
            version, hdr_size = struct.unpack(">HQ", head[6:16])
            if version == 1:
                return _luks1_luksmeta(f, head)
            if version != 2 or not 4096 < hdr_size <= 4 * 1024 * 1024:
                return None
            area = f.read(hdr_size - 4096)
    except OSError:
        return None
    return any(n in area for n in NEEDLES)


def _luks1_luksmeta(f: Any, head: bytes) -> bool:
    """LUKS1: is there a luksmeta area (where clevis keeps its JWEs) after the key slots?"""
    ends = []
    for i in range(8):
        off = 208 + 48 * i
        _active, _iters, _salt, material, stripes = struct.unpack(">II32sII", head[off:off + 48])
        ends.append(material * 512 + stripes * struct.unpack(">I", head[108:112])[0])
    start = (max(ends) + 4095) // 4096 * 4096
    f.seek(start)
    if f.read(len(LUKSMETA_MAGIC)) == LUKSMETA_MAGIC:
        log.warning(f"{f.name}: LUKS1 volume with luksmeta (a clevis binding?): cryptboot reads "
                    "clevis tokens of LUKS2 only; convert it (cryptsetup convert --type luks2) "
                    "and bind again (clevis luks bind)")
    return False


def token_sources(volume: Volume, device: str) -> Volume:
    """``volume`` with a key source added for each clevis / systemd-tpm2 token in its header
    (before the cache and the prompt)."""
    opts = volume.options
    if opts.type is not CryptType.LUKS:
        return volume
    header = opts.header or device
    if not _has_token_text(header):
        return volume
    added: list[KeySource] = []
    for tid, token in sorted(read_tokens(header).items()):
        kind = TOKEN_KINDS.get(str(token.get("type")))
        if kind is None:
            continue
        if kind is KeyKind.TPM2 and opts.tpm2_device == "off":
            continue
        if kind is KeyKind.TPM2 and token.get("tpm2-pin") is True:
            kind = KeyKind.TPM2_PIN  # asked at the prompt, not raced
        added.append(KeySource(kind, token=tid))
    if not added:
        return volume
    log.info(f"{volume.name}: LUKS2 token(s) " +
             ", ".join(f"{s.token} ({s.kind.value})" for s in added))
    keys = list(volume.keys)
    at = next((i for i, k in enumerate(keys) if k.kind in (KeyKind.CACHED, KeyKind.PROMPT)),
              len(keys))
    return volume._replace(keys=tuple(keys[:at] + added + keys[at:]))
