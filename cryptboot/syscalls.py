"""Thin ctypes wrappers for the system calls the switch core needs, with errno kept.

Python's ``os`` module has no mount(2), umount2(2), pivot_root(2), statfs(2) or statx(2);
ctypes on the C library is the lean way to reach them from an initramfs (stdlib only).
Every wrapper raises :class:`OSError` carrying the kernel's errno and the path(s) involved, so
callers can explain the refusal in words.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager

# mount(2) flags (linux/mount.h)
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_MOVE = 0x2000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20

# umount2(2) flags
MNT_FORCE = 0x1
MNT_DETACH = 0x2

# statfs f_type magic numbers (linux/magic.h)
TMPFS_MAGIC = 0x01021994
RAMFS_MAGIC = 0x858458F6
EXT4_SUPER_MAGIC = 0xEF53
PROC_SUPER_MAGIC = 0x9FA0
SYSFS_MAGIC = 0x62656572

FS_NAMES = {
    TMPFS_MAGIC: "tmpfs",
    RAMFS_MAGIC: "ramfs",
    EXT4_SUPER_MAGIC: "ext2/3/4",
    PROC_SUPER_MAGIC: "proc",
    SYSFS_MAGIC: "sysfs",
    0x9123683E: "btrfs",
    0x58465342: "xfs",
    0x73717368: "squashfs",
    0x794C7630: "overlayfs",
    0x01021997: "v9fs",
    0x6969: "nfs",
    0x1373: "devfs",
    0x64626720: "debugfs",
    0x27E0EB: "cgroup",
    0x63677270: "cgroup2",
}

# statx(2)
AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100
AT_EMPTY_PATH = 0x1000
STATX_TYPE = 0x1
STATX_MNT_ID = 0x1000
STATX_ATTR_MOUNT_ROOT = 0x2000

SYS_PIVOT_ROOT = 155  # x86_64; also used as a fallback when libc lacks pivot_root()
_PIVOT_ROOT_NR = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "i686": 217, "i386": 217,
                  "armv7l": 218, "ppc64le": 203, "s390x": 217}


class _StatfsBuf(ctypes.Structure):
    # struct statfs on 64-bit Linux (and 32-bit with _FILE_OFFSET_BITS=64 via statfs64)
    _fields_ = [
        ("f_type", ctypes.c_long),
        ("f_bsize", ctypes.c_long),
        ("f_blocks", ctypes.c_uint64),
        ("f_bfree", ctypes.c_uint64),
        ("f_bavail", ctypes.c_uint64),
        ("f_files", ctypes.c_uint64),
        ("f_ffree", ctypes.c_uint64),
        ("f_fsid", ctypes.c_int * 2),
        ("f_namelen", ctypes.c_long),
        ("f_frsize", ctypes.c_long),
        ("f_flags", ctypes.c_long),
        ("f_spare", ctypes.c_long * 4),
    ]


class _StatxTimestamp(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_int64), ("tv_nsec", ctypes.c_uint32),
                ("_reserved", ctypes.c_int32)]


class _StatxBuf(ctypes.Structure):
    _fields_ = [
        ("stx_mask", ctypes.c_uint32),
        ("stx_blksize", ctypes.c_uint32),
        ("stx_attributes", ctypes.c_uint64),
        ("stx_nlink", ctypes.c_uint32),
        ("stx_uid", ctypes.c_uint32),
        ("stx_gid", ctypes.c_uint32),
        ("stx_mode", ctypes.c_uint16),
        ("_spare0", ctypes.c_uint16),
        ("stx_ino", ctypes.c_uint64),
        ("stx_size", ctypes.c_uint64),
        ("stx_blocks", ctypes.c_uint64),
        ("stx_attributes_mask", ctypes.c_uint64),
        ("stx_atime", _StatxTimestamp),
        ("stx_btime", _StatxTimestamp),
        ("stx_ctime", _StatxTimestamp),
        ("stx_mtime", _StatxTimestamp),
        ("stx_rdev_major", ctypes.c_uint32),
        ("stx_rdev_minor", ctypes.c_uint32),
        ("stx_dev_major", ctypes.c_uint32),
        ("stx_dev_minor", ctypes.c_uint32),
        ("stx_mnt_id", ctypes.c_uint64),
        ("_spare2", ctypes.c_uint64 * 13),
    ]


class _Libc:
    """The C library, loaded on first use. The running Python is linked against it, so the
    process's own symbols (``CDLL(None)``) have it; ``ctypes.util.find_library`` is avoided:
    it runs ``ldconfig`` in a subprocess, slow and absent from an initramfs."""

    handle: ctypes.CDLL | None = None

    @classmethod
    def get(cls) -> ctypes.CDLL:
        if cls.handle is None:
            for name in (None, "libc.so.6", "libc.so"):
                try:
                    lib = ctypes.CDLL(name, use_errno=True)
                    lib.mount  # noqa: B018 - raises AttributeError when not the C library
                except (OSError, AttributeError):
                    continue
                cls.handle = lib
                break
            else:
                raise OSError(0, "cannot load the C library through ctypes")
        return cls.handle


def _fs(path: str | None) -> bytes | None:
    return None if path is None else os.fsencode(path)


def _raise(what: str, path: str | None = None, path2: str | None = None) -> None:
    err = ctypes.get_errno()
    raise OSError(err, f"{what}: {os.strerror(err)}", path, None, path2)


def mount(source: str | None, target: str, fstype: str | None = None, flags: int = 0,
          data: str | None = None) -> None:
    """mount(2). Raises OSError with the kernel's errno."""
    libc = _Libc.get()
    rc = libc.mount(_fs(source), _fs(target), _fs(fstype), ctypes.c_ulong(flags), _fs(data))
    if rc != 0:
        _raise("mount", target, source)


def umount2(target: str, flags: int = 0) -> None:
    """umount2(2). Raises OSError with the kernel's errno."""
    if _Libc.get().umount2(_fs(target), ctypes.c_int(flags)) != 0:
        _raise("umount2", target)


def pivot_root(new_root: str, put_old: str) -> None:
    """pivot_root(2) (through syscall(2): glibc has no wrapper). Raises OSError with errno."""
    libc = _Libc.get()
    nr = _PIVOT_ROOT_NR.get(os.uname().machine, SYS_PIVOT_ROOT)
    libc.syscall.restype = ctypes.c_long
    rc = libc.syscall(ctypes.c_long(nr), _fs(new_root), _fs(put_old))
    if rc != 0:
        _raise("pivot_root", new_root, put_old)


def make_private(target: str = "/", recursive: bool = True) -> None:
    """Set mount propagation of ``target`` (and below) to private."""
    mount(None, target, None, MS_PRIVATE | (MS_REC if recursive else 0))


def _statfs_buf(path: str | None = None, fd: int | None = None) -> _StatfsBuf:
    libc = _Libc.get()
    buf = _StatfsBuf()
    if fd is not None:
        rc = libc.fstatfs(ctypes.c_int(fd), ctypes.byref(buf))
    else:
        rc = libc.statfs(_fs(path), ctypes.byref(buf))
    if rc != 0:
        _raise("statfs", path if path is not None else f"fd {fd}")
    return buf


def statfs_magic(path: str) -> int:
    """The filesystem type magic (``f_type``) of the filesystem holding ``path``."""
    return int(_statfs_buf(path).f_type) & 0xFFFFFFFF


def fstatfs_magic(fd: int) -> int:
    """The filesystem type magic of the filesystem an open file descriptor is on."""
    return int(_statfs_buf(fd=fd).f_type) & 0xFFFFFFFF


def fs_name(magic: int) -> str:
    """A readable name for a statfs magic, for messages."""
    return FS_NAMES.get(magic, f"filesystem type 0x{magic:x}")


def is_ram_fs(magic: int) -> bool:
    return magic in (TMPFS_MAGIC, RAMFS_MAGIC)


def statx_mount_root(path: str, dir_fd: int = AT_FDCWD) -> bool | None:
    """True when ``path`` (relative to ``dir_fd``; "" means dir_fd itself) is the root of a
    mount, False when not, None when the kernel cannot say (statx or the attribute missing).

    A bind mount of a directory of the same filesystem has the same ``st_dev``, so device
    numbers alone cannot see it; STATX_ATTR_MOUNT_ROOT (Linux 5.8) can.
    """
    libc = _Libc.get()
    try:
        fn = libc.statx
    except AttributeError:
        return None
    buf = _StatxBuf()
    flags = AT_SYMLINK_NOFOLLOW | (AT_EMPTY_PATH if path == "" else 0)
    rc = fn(ctypes.c_int(dir_fd), os.fsencode(path), ctypes.c_int(flags),
            ctypes.c_uint(STATX_TYPE), ctypes.byref(buf))
    if rc != 0:
        return None
    if not buf.stx_attributes_mask & STATX_ATTR_MOUNT_ROOT:
        return None
    return bool(buf.stx_attributes & STATX_ATTR_MOUNT_ROOT)


def is_mount_point(path: str) -> bool:
    """Whether ``path`` is the root of a mount (statx when available, else st_dev/st_ino)."""
    answer = statx_mount_root(path)
    if answer is not None:
        return answer
    st = os.stat(path, follow_symlinks=False)
    parent = os.stat(os.path.join(path, ".."))
    return st.st_dev != parent.st_dev or st.st_ino == parent.st_ino


# ---------------------------------------------------------------------------------------------
# Read-only mounts of another device (keyfile devices, detached headers)

RO_FLAGS = MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC


@contextmanager
def mounted_readonly(node: str, where: str, fstype: str | None = None) -> Iterator[str]:
    """Mount ``node`` read-only (nosuid, nodev, noexec) on ``where`` for the ``with`` block,
    then unmount it; the type is probed (blkid) when not given. mount(2), no mount(8) process.

    Raises :class:`OSError` (with the node, the type and the kernel's reason) when it cannot
    be mounted."""
    if not fstype:
        from cryptboot.blkid import probe

        fstype = probe(node).get("ID_FS_TYPE") or None
        if fstype is None:
            raise OSError(errno.EINVAL, "no filesystem found on it", node)
    os.makedirs(where, mode=0o700, exist_ok=True)
    try:
        mount(node, where, fstype, RO_FLAGS)
    except OSError as e:
        raise OSError(e.errno, f"{os.strerror(e.errno or 0)} ({fstype}, read-only)",
                      node) from None
    try:
        yield where
    finally:
        try:
            umount2(where)
        except OSError:
            umount2(where, MNT_DETACH)  # read-only, nothing to lose: do not leave it in place
