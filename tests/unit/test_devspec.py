"""Device specs: every spelling of a device reaches one normal form; garbage is refused."""

from __future__ import annotations

import pytest

from cryptboot.config.devspec import (
    mapper_name,
    parse_devspec,
    split_file_device,
    uuid_matches,
)
from cryptboot.config.model import DeviceSpec, SpecKind
from cryptboot.config.values import Where
from cryptboot.errors import ConfigError

U = "3f5ad593-4546-4a94-a374-bcfb68aa11f7"


@pytest.mark.parametrize(("text", "kind", "value"), [
    (f"UUID={U}", SpecKind.UUID, U),
    (f"UUID={U.upper()}", SpecKind.UUID, U),                     # case folded
    (f"UUID={U.replace('-', '')}", SpecKind.UUID, U),            # LUKS UUID without dashes
    (f"uuid={U}", SpecKind.UUID, U),                             # keyword in any case
    (f"/dev/disk/by-uuid/{U}", SpecKind.UUID, U),                # link becomes the property
    (f"PARTUUID={U}", SpecKind.PARTUUID, U),
    ("PARTUUID=1234ABCD-02", SpecKind.PARTUUID, "1234abcd-02"),  # MBR partition id
    ("/dev/disk/by-partuuid/1234abcd-02", SpecKind.PARTUUID, "1234abcd-02"),
    ("UUID=1234-ABCD", SpecKind.UUID, "1234-abcd"),              # FAT serial, kept short
    ("LABEL=Root", SpecKind.LABEL, "Root"),                      # labels keep their case
    ('LABEL="KEYFILE FS"', SpecKind.LABEL, "KEYFILE FS"),        # quoted (systemd)
    ("/dev/disk/by-label/Root", SpecKind.LABEL, "Root"),
    ("/dev/disk/by-label/my\\x20key", SpecKind.LABEL, "my key"),  # udev link escape
    ("PARTLABEL=cryptroot", SpecKind.PARTLABEL, "cryptroot"),
    ("/dev/disk/by-partlabel/cryptroot", SpecKind.PARTLABEL, "cryptroot"),
    ("ID=ata-QEMU_HARDDISK_QM00001-part2", SpecKind.ID, "ata-QEMU_HARDDISK_QM00001-part2"),
    ("/dev/disk/by-id/usb-Generic_Flash-0:0", SpecKind.ID, "usb-Generic_Flash-0:0"),
    ("/dev/sda1", SpecKind.PATH, "/dev/sda1"),
    ("/dev/mapper/cryptroot", SpecKind.PATH, "/dev/mapper/cryptroot"),
    ("/dev/disk/by-path/pci-0000:00:1f.1-scsi-0:0:1:0-part1", SpecKind.PATH,
     "/dev/disk/by-path/pci-0000:00:1f.1-scsi-0:0:1:0-part1"),
    ("/var/lib/disk.img", SpecKind.PATH, "/var/lib/disk.img"),   # crypttab allows a file
])
def test_parse_devspec(text: str, kind: SpecKind, value: str) -> None:
    assert parse_devspec(text) == DeviceSpec(kind, value)


@pytest.mark.parametrize("text", [
    "", "sda1", "foo", "UUID=", "UUID=not-a-uuid", "UUID=12g4", "LABEL=", "FOO=bar", "/",
    " /dev/sda1", "/dev/sd\x00a", "ID=a/b", "PARTUUID=xyz", "live:LABEL=x", "UUID=--",
])
def test_garbage_is_refused(text: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_devspec(text)
    assert "expected UUID=, PARTUUID=, LABEL=, PARTLABEL=, ID= or an absolute path" in str(e.value)
    assert repr(text) in str(e.value)


def test_error_is_located_and_hints_at_dev() -> None:
    with pytest.raises(ConfigError) as e:
        parse_devspec("sda2", Where("/etc/crypttab", 7))
    assert str(e.value).startswith("/etc/crypttab:7: expected UUID=")
    assert e.value.hint == "a kernel device name is written as a path: /dev/sda2"


def test_prefix_only_where_allowed() -> None:
    assert parse_devspec("UUID=cccc") == DeviceSpec(SpecKind.UUID, "cccc", prefix=False)
    assert parse_devspec("UUID=CCCC", allow_prefix=True) == DeviceSpec(SpecKind.UUID, "cccc",
                                                                       prefix=True)
    assert parse_devspec(f"UUID={U}", allow_prefix=True).prefix is False


def test_uuid_matching_ignores_dashes_and_case() -> None:
    assert uuid_matches(U.replace("-", ""), False, U.upper())
    assert uuid_matches("3f5ad5934546", True, U)
    assert not uuid_matches("3f5ad5934546", False, U)
    assert not uuid_matches("aaaa", True, U)


def test_mapper_name() -> None:
    assert mapper_name(parse_devspec("/dev/mapper/root")) == "root"
    assert mapper_name(parse_devspec("/dev/disk/by-id/dm-name-root")) == "root"
    assert mapper_name(parse_devspec("/dev/sda1")) is None


@pytest.mark.parametrize(("text", "path", "dev"), [
    ("/etc/key", "/etc/key", None),
    ("keyfile:LABEL=keydev", "keyfile", DeviceSpec(SpecKind.LABEL, "keydev")),
    ("/keys/a:b", "/keys/a:b", None),                                  # colon in a file name
    ("/k:/dev/disk/by-path/pci-0000:00:1f.2-ata-1",
     "/k", DeviceSpec(SpecKind.PATH, "/dev/disk/by-path/pci-0000:00:1f.2-ata-1")),
    ("/keys/a:b:UUID=1234-ABCD", "/keys/a:b", DeviceSpec(SpecKind.UUID, "1234-abcd")),
])
def test_split_file_device(text: str, path: str, dev: DeviceSpec | None) -> None:
    assert split_file_device(text) == (path, dev)


@pytest.mark.parametrize(("enc", "plain"), [
    (r"my\x20disk", "my disk"), (r"\x2fboot", "/boot"), (r"caf\xc3\xa9", "café"),
    (r"a\x2", r"a\x2"), (r"x\xZZ", r"x\xZZ"), ("plain", "plain"),
    (r"\x5cx41", r"\x41"),  # one pass, left to right: the decoded backslash is not re-read
])
def test_udev_hex_escapes_are_undone(enc: str, plain: str) -> None:
    from cryptboot.config.values import udev_unescape as unescape

    assert unescape(enc) == plain
