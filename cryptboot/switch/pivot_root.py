"""pivot-root: pivot_root(2) with the checks and words of the NetBSD pivot_root tool.

Both paths are normalised with realpath; NEW_ROOT must be a mount point distinct from ``/`` and
PUT_OLD must lie under it. Each refusal names the reason in words and carries the errno the
kernel gives for it (the CLI's exit code). ``raw=True`` skips our checks and hands the paths to
the kernel as given, like NetBSD's ``TEST_RAW_INPUT_TO_SYSCALL`` build, so the kernel's own
answers can be seen; its errno is then explained with the same diagnosis.
"""

from __future__ import annotations

import errno
import os
import stat

from cryptboot import log
from cryptboot import syscalls as sc
from cryptboot.errors import SwitchError
from cryptboot.switch import mounts as mnt


def _in_chroot() -> bool:
    """The current root is not the root of a mount: a chroot(2) into a directory."""
    try:
        return not sc.is_mount_point("/")
    except OSError:
        return False


def _shared_mounts(new_root: str, put_old: str) -> list[str]:
    """The mounts pivot_root needs private that are shared (from mountinfo), as words."""
    table = mnt.read()
    if not table:
        return []
    found = []
    root = mnt.mount_of(table, "/")
    new = mnt.mount_of(table, new_root)
    old = mnt.mount_of(table, put_old)
    checks = [
        (mnt.by_id(table, new.parent_id) if new else None, f"the parent mount of {new_root}"),
        (old, f"the mount holding {put_old}"),
        (mnt.by_id(table, root.parent_id) if root else None, "the parent mount of /"),
    ]
    for m, what in checks:
        if m is not None and m.shared:
            found.append(f"{what} ({m.mount_point}, {' '.join(m.optional)})")
    return found


def _root_is_rootfs() -> bool:
    table = mnt.read()
    root = mnt.mount_of(table, "/") if table else None
    return root is not None and (root.parent_id == root.mount_id or root.fstype == "rootfs")


def explain(new_root: str, put_old: str, err: int) -> str:
    """The kernel's refusal ``err`` for pivot_root(new_root, put_old), in words."""
    name = errno.errorcode.get(err, str(err))
    if err == errno.EPERM:
        if os.geteuid() != 0:
            return (f"{name}: pivot_root needs CAP_SYS_ADMIN (run it as root); "
                    f"it is also refused from inside a chroot")
        return (f"{name}: not permitted: inside a chroot, or without CAP_SYS_ADMIN in the "
                f"user namespace that owns this mount namespace")
    if err == errno.EBUSY:
        reasons = []
        try:
            root_dev = os.stat("/").st_dev
            for label, path in (("NEW_ROOT", new_root), ("PUT_OLD", put_old)):
                if mnt.realpath_abs(path) == "/":
                    reasons.append(f"{label} {path} is the current root")
                elif os.stat(path).st_dev == root_dev:
                    reasons.append(f"{label} {path} is on the current root filesystem")
        except OSError:
            pass
        if not reasons:
            reasons.append(f"{new_root} or {put_old} is on the current root filesystem")
        return (f"{name}: " + "; ".join(reasons) + " (NEW_ROOT must be a mount point other "
                "than /, and PUT_OLD must be at or under it)")
    if err == errno.EINVAL:
        reasons = []
        if _in_chroot():
            reasons.append("the current root is not a mount point: this process is inside "
                           "a chroot")
        if os.path.isdir(new_root) and not sc.is_mount_point(new_root):
            reasons.append(f"{new_root} is not a mount point")
        if not mnt.is_under(mnt.realpath_abs(put_old), mnt.realpath_abs(new_root)):
            reasons.append(f"{put_old} is not at or under {new_root}")
        shared = _shared_mounts(mnt.realpath_abs(new_root), mnt.realpath_abs(put_old))
        if shared:
            reasons.append("shared mount propagation: " + "; ".join(shared)
                           + " (make them private: mount --make-rprivate /)")
        if _root_is_rootfs():
            reasons.append("the current root is the initramfs rootfs, which cannot be "
                           "pivoted (use switch-root)")
        if not reasons:
            reasons.append("NEW_ROOT or PUT_OLD is not acceptable to the kernel "
                           "(a locked mount, or a mount of another namespace)")
        return f"{name}: " + "; ".join(reasons)
    if err == errno.ENOTDIR:
        return f"{name}: {new_root} or {put_old} is not a directory"
    if err == errno.ENOENT:
        return f"{name}: {new_root} or {put_old} does not exist"
    return f"{name}: {os.strerror(err)}"


def _refuse(message: str, err: int) -> SwitchError:
    return SwitchError(f"pivot-root refused: {message}", errno=err)


def check(new_root: str, put_old: str) -> tuple[str, str]:
    """Normalise and check the paths; return (NEW_ROOT, PUT_OLD) as real paths.
    Raises :class:`SwitchError` with the errno the kernel would give."""
    paths = []
    for label, path in (("NEW_ROOT", new_root), ("PUT_OLD", put_old)):
        try:
            st = os.stat(path)
        except OSError as e:
            raise _refuse(f"{label} {path}: {e.strerror}", e.errno or errno.ENOENT) from None
        if not stat.S_ISDIR(st.st_mode):
            raise _refuse(f"{label} {path}: expected a directory", errno.ENOTDIR)
        paths.append(mnt.realpath_abs(path))
    real_new, real_old = paths
    if _in_chroot():
        raise _refuse(
            "this process is inside a chroot (the current root is not a mount point); "
            "pivot_root works on the whole mount namespace, run it outside the chroot",
            errno.EPERM,
        )
    if real_new == "/":
        raise _refuse(f"NEW_ROOT {new_root} is the current root /", errno.EBUSY)
    if not sc.is_mount_point(real_new):
        raise _refuse(f"NEW_ROOT {new_root} ({real_new}) is not a mount point; expected the "
                      f"root of a mounted filesystem", errno.EINVAL)
    if not mnt.is_under(real_old, real_new):
        raise _refuse(f"PUT_OLD {put_old} ({real_old}) is not at or under NEW_ROOT "
                      f"{real_new}", errno.EINVAL)
    shared = _shared_mounts(real_new, real_old)
    if shared:
        raise _refuse("shared mount propagation: " + "; ".join(shared)
                      + " (make them private: mount --make-rprivate /)", errno.EINVAL)
    return real_new, real_old


def pivot_root(new_root: str, put_old: str, *, umount_old: bool = False,
               raw: bool = False) -> None:
    """Make NEW_ROOT the root and move the old root to PUT_OLD, then chdir("/").

    ``umount_old`` detaches PUT_OLD afterwards (lazily: MNT_DETACH). Raises
    :class:`SwitchError` whose ``errno`` is the kernel's (or the one it would give).
    """
    if raw:
        real_new, real_old = new_root, put_old
    else:
        real_new, real_old = check(new_root, put_old)
    # where the old root will be, seen from the new root (computed before the root changes)
    inside = os.path.normpath(
        "/" + os.path.relpath(mnt.realpath_abs(real_old), mnt.realpath_abs(real_new))
    )
    try:
        sc.pivot_root(real_new, real_old)
    except OSError as e:
        err = e.errno or errno.EIO
        raise SwitchError(f"pivot_root({new_root}, {put_old}) refused by the kernel: "
                          f"{explain(new_root, put_old, err)}", errno=err) from None
    os.chdir("/")
    log.debug(f"pivoted: new root {real_new}, old root now at {inside}")
    if umount_old:
        try:
            sc.umount2(inside, sc.MNT_DETACH)
        except OSError as e:
            err = e.errno or errno.EIO
            raise SwitchError(f"pivoted, but cannot detach the old root at {inside}: "
                              f"{e.strerror}", errno=err) from None
