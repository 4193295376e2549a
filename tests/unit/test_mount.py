"""Mounting the root: options split as mount(8) does, a refusal in words (the order fsck ->
mount(2) is in test_boot.py). The real mount(2) of a real root is the VM tier's:
tests/vm/test_scenarios.py checks the real root's options in /proc/mounts."""

from __future__ import annotations

from pathlib import Path

import pytest

from cryptboot import mount
from cryptboot.config.model import DeviceSpec, Root, SpecKind
from cryptboot.errors import CryptbootError

MS_RDONLY, MS_NOSUID, MS_NOATIME, MS_RELATIME = 0x1, 0x2, 0x400, 1 << 21


@pytest.mark.parametrize(("options", "flags", "data"), [
    ("ro", MS_RDONLY, ""),
    ("rw", 0, ""),
    ("ro,rw", 0, ""),                                   # the last word wins
    ("rw,noatime,commit=7", MS_NOATIME, "commit=7"),
    ("ro,nosuid,relatime,data=ordered,errors=remount-ro", MS_RDONLY | MS_NOSUID | MS_RELATIME,
     "data=ordered,errors=remount-ro"),
    ("rw,defaults,nofail,x-systemd.device-timeout=5,noauto,subvol=@", 0, "subvol=@"),
    ("ro,,atime,noatime,atime", MS_RDONLY, ""),
])
def test_options_split_into_flags_and_data(options: str, flags: int, data: str) -> None:
    assert mount.mount_options(options) == (flags, data)


def _root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
          err: int = 0) -> list[tuple[object, ...]]:
    calls: list[tuple[object, ...]] = []

    def fake_mount(source: str, target: str, fstype: str, flags: int, data: str | None) -> None:
        calls.append((source, target, fstype, flags, data))
        if err:
            raise OSError(err, "mount: refused", target)

    monkeypatch.setattr("cryptboot.syscalls.mount", fake_mount)
    monkeypatch.setattr(mount, "fsck", lambda device, fstype: calls.append(("fsck", device)))
    return calls


def test_refused_mount_says_what_and_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _root(tmp_path, monkeypatch, err=22)
    root = Root(DeviceSpec(SpecKind.PATH, "/dev/mapper/r"), flags="bogus=1")
    with pytest.raises(CryptbootError) as e:
        mount.mount_root(root, "/dev/dm-0", str(tmp_path / "sysroot"), "ext4")
    assert e.value.message == (f"cannot mount /dev/dm-0 (ext4, ro,bogus=1) on "
                               f"{tmp_path / 'sysroot'}: Invalid argument")
    assert e.value.hint and "rootflags=" in e.value.hint
