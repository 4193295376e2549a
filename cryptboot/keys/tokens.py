"""LUKS2 tokens in a volume's header become key sources (issue 13).

Once a LUKS volume's device is found, its header is read once more (the same few KiB
cryptsetup and the Argon2 memory check read; the page cache has them): only when
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


def _luks2_area(header: str) -> bytes | None:
    """The JSON area of the LUKS2 header at ``header``; None for anything else (LUKS1: after
    a look for luksmeta)."""
    try:
        with open(header, "rb") as f:
            head = f.read(4096)
            if len(head) < 4096 or head[:6] != b"LUKS\xba\xbe":
                return None
            version, hdr_size = struct.unpack(">HQ", head[6:16])
            if version == 1:
                _luks1_luksmeta(f, head)
                return None
            if version != 2 or not 4096 < hdr_size <= 4 * 1024 * 1024:
                return None
            return f.read(hdr_size - 4096)
    except OSError:
        return None


def _parse(area: bytes) -> dict[int, dict[str, Any]]:
    import json

    try:
        meta = json.loads(area.rstrip(b"\0").decode())
    except (ValueError, UnicodeDecodeError):
        return {}
    tokens = meta.get("tokens") if isinstance(meta, dict) else None
    out: dict[int, dict[str, Any]] = {}
    for tid, token in (tokens if isinstance(tokens, dict) else {}).items():
        if isinstance(token, dict) and str(tid).isdigit():
            out[int(tid)] = token
    return out


def read_tokens(header: str) -> dict[int, dict[str, Any]]:
    """``{token number: token}`` of the LUKS2 header at ``header``; {} for anything else."""
    area = _luks2_area(header)
    return _parse(area) if area else {}


def _luks1_luksmeta(f: Any, head: bytes) -> None:
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


def token_sources(volume: Volume, device: str) -> Volume:
    """``volume`` with a key source added for each clevis / systemd-tpm2 token in its header
    (before the cache and the prompt)."""
    opts = volume.options
    if opts.type is not CryptType.LUKS:
        return volume
    header = opts.header or device
    area = _luks2_area(header)
    if not area or not any(n in area for n in NEEDLES):
        return volume  # a plain LUKS volume: one small read, no JSON parsed
    added: list[KeySource] = []
    for tid, token in sorted(_parse(area).items()):
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
