"""mountinfo parsing and the syscall wrappers' error reporting (calls that change nothing)."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from cryptboot import syscalls as sc
from cryptboot.switch import mounts as mnt

SAMPLE = """\
1 1 0:2 / / rw - rootfs rootfs rw
27 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
28 27 0:5 / /dev rw shared:2 - devtmpfs udev rw
29 28 0:6 / /dev/pts rw - devpts devpts rw
30 27 0:7 / /mnt/with\\040space rw master:3 - tmpfs tmp\\134fs rw
31 27 0:8 /sub /newroot rw - ext4 /dev/vdb rw
32 31 0:9 / /newroot/boot rw - vfat /dev/vdb1 rw
garbage line
"""


def test_parse() -> None:
    table = mnt.parse(SAMPLE)
    assert len(table) == 7
    m = table[4]
    assert (m.mount_point, m.source, m.optional, m.shared) == (
        "/mnt/with space", "tmp\\fs", ("master:3",), False)
    assert table[1].shared and table[1].fstype == "ext4"
    assert table[5].root == "/sub"


def test_mount_of_and_by_id() -> None:
    table = mnt.parse(SAMPLE)
    found = mnt.mount_of(table, "/newroot/etc/fstab")
    assert found is not None and found.mount_id == 31
    boot = mnt.mount_of(table, "/newroot/boot/x")
    assert boot is not None and boot.mount_id == 32
    assert mnt.by_id(table, 28) is not None and mnt.by_id(table, 99) is None


def test_submounts_outside_deepest_first() -> None:
    table = mnt.parse(SAMPLE)
    assert mnt.submounts_outside(table, ("/newroot",)) == [
        "/dev/pts", "/mnt/with space", "/dev"]


def test_is_under() -> None:
    assert mnt.is_under("/a/b", "/a") and mnt.is_under("/a", "/a") and mnt.is_under("/x", "/")
    assert not mnt.is_under("/ab", "/a")


def test_statfs_magic_and_mount_points(tmp_path: Path) -> None:
    assert sc.statfs_magic("/proc") == sc.PROC_SUPER_MAGIC
    assert sc.fs_name(sc.PROC_SUPER_MAGIC) == "proc"
    assert sc.is_mount_point("/proc") and sc.is_mount_point("/")
    assert not sc.is_mount_point(str(tmp_path))
    assert sc.is_ram_fs(sc.TMPFS_MAGIC) and not sc.is_ram_fs(sc.EXT4_SUPER_MAGIC)


def test_errors_keep_errno(tmp_path: Path) -> None:
    with pytest.raises(OSError) as e:
        sc.statfs_magic(str(tmp_path / "missing"))
    assert e.value.errno == errno.ENOENT
    with pytest.raises(OSError) as e:
        sc.umount2(str(tmp_path / "missing"))
    assert e.value.errno == errno.ENOENT
    with pytest.raises(OSError) as e:
        sc.pivot_root(str(tmp_path / "a"), str(tmp_path / "b"))
    assert e.value.errno == errno.ENOENT and e.value.filename == str(tmp_path / "a")
