"""Deleting the old root's files through a file descriptor, never leaving its filesystem.

This is the code that must never delete a user's data. The rules (see docs/switch.md):

- start from a directory fd opened on the old root before the switch (the old root is no
  longer reachable by path afterwards);
- refuse unless that fd is on tmpfs or ramfs (statfs magic, not device numbers);
- never follow a symlink: directories are opened with ``O_NOFOLLOW | O_DIRECTORY`` relative to
  their parent's fd, symlinks are unlinked as names;
- never cross into another filesystem or mount: a directory whose ``st_dev`` differs from the
  root's, or that is the root of a mount (STATX_ATTR_MOUNT_ROOT, which also catches bind mounts
  of the same filesystem), is skipped with its contents;
- an entry whose type the directory listing does not give (DT_UNKNOWN) is stat'ed
  (``os.DirEntry.is_dir(follow_symlinks=False)`` does an ``fstatat``);
- only names are unlinked: unlinking a non-directory never touches another filesystem.

The walk is iterative, so a deep tree cannot exhaust Python's recursion limit.
"""

from __future__ import annotations

import os

from cryptboot import syscalls as sc

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class Counts:
    """What a removal did; ``skipped`` counts directories left alone (other fs or a mount).
    A plain class: ``dataclasses`` is too slow to import on the boot path."""

    __slots__ = ("files", "dirs", "skipped", "errors")

    def __init__(self) -> None:
        self.files = 0
        self.dirs = 0
        self.skipped = 0
        self.errors = 0


class NotRamFs(Exception):
    """The tree is not on tmpfs/ramfs: nothing was deleted."""


def _scan(fd: int, counts: Counts) -> list[str]:
    """Unlink every non-directory in ``fd``; return the names of its subdirectories."""
    subdirs = []
    with os.scandir(fd) as it:
        for entry in it:
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
            except OSError:
                counts.errors += 1
                continue
            if is_dir:
                subdirs.append(entry.name)
                continue
            try:
                os.unlink(entry.name, dir_fd=fd)
                counts.files += 1
            except OSError:
                counts.errors += 1
    return subdirs


def remove_contents(root_fd: int) -> Counts:
    """Delete everything below the directory ``root_fd`` on the same tmpfs/ramfs mount.

    Raises :class:`NotRamFs` (deleting nothing) when ``root_fd`` is on another filesystem.
    The directory of ``root_fd`` itself and any mount point in the tree are kept.
    """
    magic = sc.fstatfs_magic(root_fd)
    if not sc.is_ram_fs(magic):
        raise NotRamFs(f"the old root is {sc.fs_name(magic)}, not tmpfs/ramfs")
    dev = os.fstat(root_fd).st_dev
    counts = Counts()
    # frames: (directory fd, subdirectories still to visit, name in the parent or None)
    frames: list[tuple[int, list[str], str | None]] = [(root_fd, _scan(root_fd, counts), None)]
    while frames:
        fd, pending, name = frames[-1]
        if pending:
            sub = pending.pop()
            try:
                cfd = os.open(sub, _DIR_FLAGS, dir_fd=fd)
            except OSError:
                # ELOOP: it became a symlink; ENOENT: gone; either way, not ours to follow
                counts.errors += 1
                continue
            try:
                other_fs = os.fstat(cfd).st_dev != dev
                mount_root = (not other_fs) and sc.statx_mount_root("", cfd) is True
                if other_fs or mount_root:
                    counts.skipped += 1
                    os.close(cfd)
                    continue
                frames.append((cfd, _scan(cfd, counts), sub))
            except OSError:
                counts.errors += 1
                os.close(cfd)
            continue
        frames.pop()
        if name is None:
            continue
        os.close(fd)
        try:
            os.rmdir(name, dir_fd=frames[-1][0])
            counts.dirs += 1
        except OSError:
            counts.errors += 1
    return counts
