"""Device specifications: ``UUID=``, ``PARTUUID=``, ``LABEL=``, ``PARTLABEL=``, ``ID=``, paths.

One normal form for all the spellings users bring from fstab, crypttab, dracut and mkinitcpio,
so that matching a device later (by udev properties) needs no knowledge of where the text came
from. ``/dev/disk/by-{uuid,partuuid,label,partlabel,id}/X`` links become the matching kind (the
link's ``\\xNN`` escapes decoded), since the property is there even when udev made no link.
UUIDs are lower-cased; a complete 128-bit UUID is written with dashes in the usual places.
"""

from __future__ import annotations

from cryptboot.config.model import DeviceSpec, SpecKind
from cryptboot.config.values import Where, has_control, udev_unescape
from cryptboot.errors import ConfigError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

_KINDS: dict[str, SpecKind] = {
    "UUID": SpecKind.UUID,
    "PARTUUID": SpecKind.PARTUUID,
    "LABEL": SpecKind.LABEL,
    "PARTLABEL": SpecKind.PARTLABEL,
    "ID": SpecKind.ID,
}
_LINKS: dict[str, SpecKind] = {
    "by-uuid": SpecKind.UUID,
    "by-partuuid": SpecKind.PARTUUID,
    "by-label": SpecKind.LABEL,
    "by-partlabel": SpecKind.PARTLABEL,
    "by-id": SpecKind.ID,
}
_HEXDASH = frozenset("0123456789abcdef-")
_WHAT = "expected UUID=, PARTUUID=, LABEL=, PARTLABEL=, ID= or an absolute path like /dev/sda2"


def is_devspec(text: str) -> bool:
    """Whether ``text`` looks like a device spec at all (used to split ``FILE:DEVICE``)."""
    head = text.split("=", 1)[0].upper() if "=" in text else None
    return text.startswith("/") or (head is not None and head in _KINDS)


def normalize_uuid(text: str) -> tuple[str, bool]:
    """Lower-case ``text``; dash a complete 128-bit UUID. Returns (value, is_complete_128).

    Raises ValueError when ``text`` is not hex digits and dashes.
    """
    low = text.strip().lower()
    if not low.strip("-") or not _HEXDASH.issuperset(low):
        raise ValueError(text)
    digits = low.replace("-", "")
    if len(digits) == 32:
        d = digits
        return f"{d[:8]}-{d[8:12]}-{d[12:16]}-{d[16:20]}-{d[20:]}", True
    return low, False


def uuid_matches(spec_value: str, prefix: bool, uuid: str) -> bool:
    """Does a device ``uuid`` match a spec value? Dashes and case are ignored; ``prefix`` allows
    a leading part only (dracut's ``rd.luks.uuid`` rule)."""
    want = spec_value.replace("-", "").lower()
    have = uuid.replace("-", "").lower()
    return have.startswith(want) if prefix else have == want


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def parse_devspec(
    text: str, where: Where | None = None, *, allow_prefix: bool = False,
) -> DeviceSpec:
    """Parse one device spec; raise :class:`ConfigError` (located at ``where``) on garbage.

    With ``allow_prefix`` (dracut contexts) an incomplete UUID is a prefix to match.
    """

    def fail(found: str) -> ConfigError:
        msg = f"{_WHAT}, found {found!r}"
        hint = None
        if found and "/" not in found and "=" not in found:
            hint = f"a kernel device name is written as a path: /dev/{found}"
        if where is None:
            return ConfigError(msg, hint=hint)
        return where.error(msg, hint)

    if not text or has_control(text) or text != text.strip():
        raise fail(text)
    if text.startswith("/"):
        parts = text.split("/")
        if len(parts) == 5 and parts[1] == "dev" and parts[2] == "disk" and parts[3] in _LINKS \
                and parts[4]:
            name = udev_unescape(parts[4])
            return _kind_value(_LINKS[parts[3]], name, text, fail, allow_prefix)
        if text == "/":
            raise fail(text)
        return DeviceSpec(SpecKind.PATH, text)
    if "=" in text:
        head, value = text.split("=", 1)
        kind = _KINDS.get(head.upper())
        if kind is not None:
            return _kind_value(kind, _unquote(value), text, fail, allow_prefix)
    raise fail(text)


def _kind_value(kind: SpecKind, value: str, text: str, fail: Callable[[str], ConfigError],
                allow_prefix: bool) -> DeviceSpec:
    if not value or has_control(value):
        raise fail(text)
    if kind in (SpecKind.UUID, SpecKind.PARTUUID):
        try:
            norm, complete = normalize_uuid(value)
        except ValueError:
            raise fail(text) from None
        return DeviceSpec(kind, norm, prefix=allow_prefix and kind is SpecKind.UUID
                          and not complete)
    if kind is SpecKind.ID and "/" in value:
        raise fail(text)
    return DeviceSpec(kind, value)


def mapper_name(spec: DeviceSpec) -> str | None:
    """The device-mapper name a spec points at (``/dev/mapper/NAME``, ``ID=dm-name-NAME``)."""
    if spec.kind is SpecKind.PATH and spec.value.startswith("/dev/mapper/"):
        name = spec.value[len("/dev/mapper/"):]
        return name if name and "/" not in name else None
    if spec.kind is SpecKind.ID and spec.value.startswith("dm-name-"):
        return spec.value[len("dm-name-"):] or None
    return None


def split_file_device(
    text: str, where: Where | None = None, *, allow_prefix: bool = False,
) -> tuple[str, DeviceSpec | None]:
    """Split ``PATH[:DEVICE]`` (crypttab key field, ``header=``, ``rd.luks.key``).

    The device starts at the first ``:`` whose remainder is a device spec, so paths may hold
    colons (``/keys/a:b``) and devices too (``/dev/disk/by-path/pci-0000:00:1f.2``).
    """
    pos = text.find(":")
    while pos != -1:
        tail = text[pos + 1:]
        if is_devspec(tail):
            return text[:pos], parse_devspec(tail, where, allow_prefix=allow_prefix)
        pos = text.find(":", pos + 1)
    return text, None
