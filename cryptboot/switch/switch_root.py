"""switch_root: hand the system over from the initramfs to the real root, and free the old one.

Order of operations (each step's reason in docs/switch.md):

1. :func:`preflight` checks everything and changes nothing: PID 1, NEWROOT a mount point of
   another filesystem, ``/`` on tmpfs/ramfs, INIT executable inside NEWROOT.
2. The console is opened once as a test (a failure is only a warning, as in busybox).
3. A directory fd is opened on the old root; propagation of ``/`` is made private
   (MS_MOVE and pivot_root refuse shared parents); ``/dev /proc /sys /run`` are moved under
   NEWROOT. A mount whose target is absent or already a mount is left in place and detached
   with the old root after the switch.
4. The switch: ``pivot_root(".", ".")`` then ``umount2(".", MNT_DETACH)`` where the kernel
   allows it (any mount with a parent), else ``MS_MOVE`` of NEWROOT onto ``/`` + ``chroot(".")``
   (the initramfs rootfs cannot be pivoted before Linux 7.0). If the switch fails, the moved
   mounts are moved back and :class:`SwitchError` is raised: nothing is lost.
5. Point of no return. From here on this function never returns and never exits: on the MS_MOVE
   path the mounts left below the old root are detached through the fd; a forked child deletes
   the old root's files through the fd (see :mod:`cryptboot.switch.rmtree`) while PID 1 reopens
   the console and execs INIT at once. The child is reparented to nobody: it stays a child of
   PID 1, i.e. of the new init, which reaps it like any orphan. Deleting in a child means the
   exec of the real init is never delayed by the size of the initramfs; the child runs at
   SCHED_IDLE, so on one CPU it does not take turns with the real init's first steps either
   (it still completes).
6. If the exec fails: print why, exec an emergency shell if the new root has one, else sleep
   forever repeating the message (PID 1 exiting would panic the kernel).

Every module used after step 4 is imported at the top: the old root's Python library is no
longer reachable by path once the switch is done.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
import time
from collections.abc import Sequence

from cryptboot import log
from cryptboot import syscalls as sc
from cryptboot.errors import SwitchError
from cryptboot.paths import SHELLS
from cryptboot.switch import mounts as mnt
from cryptboot.switch import rmtree

TYPE_CHECKING = False
if TYPE_CHECKING:  # not imported at run time: typing is slow to import
    from typing import NoReturn

API_MOUNTS = ("/dev", "/proc", "/sys", "/run")
EMERGENCY_SHELLS = SHELLS

HANG_INTERVAL = 30.0
_MAX_SYMLINKS = 40


def resolve_in_root(root: str, path: str) -> str:
    """The host path of ``path`` as seen from inside ``root`` (like chroot would see it).

    Symlinks are resolved relative to ``root``: an absolute target starts again at ``root``,
    ``..`` never climbs above it. The last component need not exist. Raises
    :class:`SwitchError` on a symlink loop.
    """
    root = root.rstrip("/") or "/"
    todo = [c for c in path.split("/") if c not in ("", ".")]
    done: list[str] = []
    links = 0
    while todo:
        part = todo.pop(0)
        if part == "..":
            if done:
                done.pop()
            continue
        host = os.path.join(root, *done, part)
        try:
            st = os.lstat(host)
        except OSError:
            done.append(part)
            done.extend(p for p in todo if p not in ("", "."))
            break
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > _MAX_SYMLINKS:
                raise SwitchError(
                    f"INIT {path}: too many levels of symbolic links inside {root}",
                    errno=errno.ELOOP,
                )
            target = os.readlink(host)
            if target.startswith("/"):
                done = []
            todo = [c for c in target.split("/") if c not in ("", ".")] + todo
            continue
        done.append(part)
    return os.path.join(root, *done)


def _check_pid1() -> None:
    pid = os.getpid()
    if pid != 1:
        raise SwitchError(
            f"switch-root must run as PID 1 (the init process); found PID {pid}",
            hint="it is meant to be exec'd by /init of an initramfs; use pivot-root to "
            "change the root of a running system",
        )


def _check_newroot(newroot: str) -> str:
    try:
        st = os.stat(newroot)
    except OSError as e:
        raise SwitchError(
            f"NEWROOT {newroot}: expected a directory with the real root mounted on it, "
            f"found: {e.strerror}"
        ) from None
    if not stat.S_ISDIR(st.st_mode):
        raise SwitchError(f"NEWROOT {newroot}: expected a directory, found another file type")
    real = mnt.realpath_abs(newroot)
    root_st = os.stat("/")
    if real == "/" or (st.st_dev == root_st.st_dev and st.st_ino == root_st.st_ino):
        raise SwitchError(f"NEWROOT {newroot} is the current root /: nothing to switch to")
    if not sc.is_mount_point(real):
        raise SwitchError(
            f"NEWROOT {newroot}: expected a mount point (the real root mounted there), "
            f"found a plain directory of the current root",
            hint=f"mount the root filesystem on {newroot} first",
        )
    if st.st_dev == root_st.st_dev:
        raise SwitchError(
            f"NEWROOT {newroot} is a mount of the same filesystem as / "
            f"(device {os.major(st.st_dev)}:{os.minor(st.st_dev)}): expected a different "
            f"filesystem, since the old root's files will be deleted",
            hint="a bind mount of a directory of the initramfs cannot be the new root",
        )
    return real


def _check_root_is_ram() -> int:
    magic = sc.statfs_magic("/")
    if not sc.is_ram_fs(magic):
        raise SwitchError(
            f"/ is {sc.fs_name(magic)}: expected tmpfs or ramfs (an initramfs), since "
            f"switch-root deletes the old root's files",
            hint="use pivot-root to change the root of a system running from a disk",
        )
    return magic


def _check_init(newroot: str, init: str) -> str:
    host = resolve_in_root(newroot, init)
    try:
        st = os.stat(host)
    except OSError as e:
        raise SwitchError(
            f"INIT {init}: expected an executable inside NEWROOT {newroot}, found nothing "
            f"({e.strerror} at {host})"
        ) from None
    if not stat.S_ISREG(st.st_mode):
        raise SwitchError(
            f"INIT {init}: expected a regular executable file inside {newroot}, found "
            f"{'a directory' if stat.S_ISDIR(st.st_mode) else 'a special file'} at {host}"
        )
    if not st.st_mode & 0o111 or not os.access(host, os.X_OK):
        raise SwitchError(
            f"INIT {init}: expected an executable file inside {newroot}, found mode "
            f"{stat.S_IMODE(st.st_mode):04o} (not executable) at {host}"
        )
    return host


def preflight(newroot: str, init: str) -> None:
    """Check everything switch_root needs; raise :class:`SwitchError` naming what was expected
    and what was found. Changes nothing."""
    _check_pid1()
    real = _check_newroot(newroot)
    _check_root_is_ram()
    _check_init(real, init)


def _try_console(console: str | None) -> None:
    """Open the console once before changing anything; a failure is only a warning."""
    if console is None:
        return
    try:
        os.close(os.open(console, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC))
    except OSError as e:
        log.warning(f"console {console}: cannot open it ({e.strerror}); "
                    f"will keep the current stdin/stdout/stderr if it still fails")


def _reopen_console(console: str | None) -> None:
    if console is None:
        return
    try:
        fd = os.open(console, os.O_RDWR | os.O_NOCTTY)
    except OSError as e:
        log.warning(f"console {console}: cannot open it ({e.strerror}); "
                    f"keeping the current stdin/stdout/stderr")
        return
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    for target in (0, 1, 2):
        if fd != target:
            os.dup2(fd, target)
    if fd > 2:
        os.close(fd)


def _move_api_mounts(newroot: str) -> list[tuple[str, str]]:
    """MS_MOVE /dev /proc /sys /run under NEWROOT; return what moved (for a rollback)."""
    moved: list[tuple[str, str]] = []
    for src in API_MOUNTS:
        if not os.path.isdir(src) or not sc.is_mount_point(src):
            continue
        dst = newroot + src
        why = ""
        if not os.path.isdir(dst) or os.path.islink(dst):
            why = f"{dst} does not exist"
        elif sc.is_mount_point(dst):
            why = f"{dst} is already a mount point"
        else:
            try:
                sc.mount(src, dst, None, sc.MS_MOVE)
                moved.append((src, dst))
                continue
            except OSError as e:
                why = f"moving it there failed: {e.strerror}"
        log.warning(f"{src}: {why}; it stays with the old root and is detached with it")
    return moved


def _rollback(moved: list[tuple[str, str]]) -> None:
    for src, dst in reversed(moved):
        try:
            sc.mount(dst, src, None, sc.MS_MOVE)
        except OSError as e:
            log.error(f"could not move {dst} back to {src}: {e.strerror}")


def _switch(force_move: bool) -> str:
    """Switch the root to the cwd (NEWROOT). Returns "pivot" or "move"; raises OSError."""
    if not force_move:
        try:
            sc.pivot_root(".", ".")
        except OSError as e:
            log.debug(f"pivot_root(\".\", \".\") refused ({e.strerror}); using MS_MOVE + chroot")
        else:
            try:
                sc.umount2(".", sc.MNT_DETACH)
            except OSError as e:
                log.warning(f"could not detach the old root after pivot_root: {e.strerror}")
            os.chdir("/")
            return "pivot"
    sc.mount(".", "/", None, sc.MS_MOVE)
    os.chroot(".")
    os.chdir("/")
    return "move"


def _detach_left_behind(old_fd: int, points: list[str]) -> None:
    """On the MS_MOVE path, detach the mounts left below the old root (reachable only
    through its fd), so they are not kept busy and the deletion has nothing to cross."""
    if not os.path.isdir(f"/proc/self/fd/{old_fd}"):
        log.debug("no /proc in the new root: mounts below the old root stay attached")
        return
    for point in points:
        try:
            sc.umount2(f"/proc/self/fd/{old_fd}{point}", sc.MNT_DETACH)
        except OSError as e:
            log.debug(f"old root {point}: not detached ({e.strerror})")


def _free_old_root(old_fd: int) -> None:
    """Fork a child that deletes the old root's files; the parent goes on to exec at once."""
    try:
        pid = os.fork()
    except OSError as e:
        log.warning(f"cannot fork to free the old root ({e.strerror}); its memory stays in use")
        return
    if pid != 0:
        return
    code = 0
    try:
        _lowest_priority()
        counts = rmtree.remove_contents(old_fd)
        log.debug(f"old root freed: {counts.files} files, {counts.dirs} directories removed, "
                  f"{counts.skipped} mount points kept, {counts.errors} errors")
    except rmtree.NotRamFs as e:
        log.warning(f"not freeing the old root: {e}")
        code = 1
    except BaseException:  # noqa: B036 - the child must never return into PID 1's code
        code = 2
    os._exit(code)


def _lowest_priority() -> None:
    """In the deleting child: run only when the real init does not need the CPU.

    On one CPU the child would otherwise take turns with the real init's first steps (under
    QEMU TCG the deletion of a 27 MiB initramfs delayed the real init by about 0.1 s).
    SCHED_IDLE still gets a small share of the CPU on a busy machine (CFS weight 3), so the
    deletion always completes; if the policy is refused, the lowest nice value does the same.
    """
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (OSError, AttributeError):
        try:
            os.nice(19)
        except OSError:
            pass


def _exec_init(init: str, args: Sequence[str]) -> NoReturn:
    """exec INIT; on failure an emergency shell; else hang with the message repeated."""
    message = f"cannot execute {init}"
    try:
        os.execv(init, [init, *args])
    except OSError as e:
        message = f"cannot execute {init}: {e.strerror}"
    except BaseException as e:  # noqa: B036 - PID 1 must not die here
        message = f"cannot execute {init}: {e}"
    log.error(message)
    for shell in EMERGENCY_SHELLS:
        if os.access(shell, os.X_OK):
            log.error(f"starting the emergency shell {shell}")
            try:
                if shell.endswith("busybox"):
                    os.execv(shell, [shell, "sh"])
                os.execv(shell, [shell])
            except BaseException:  # noqa: B036, S110
                continue
    _hang(message + "; no emergency shell in the new root")


def _hang(message: str) -> NoReturn:
    """PID 1 must never exit: the kernel would panic. Repeat the message forever."""
    while True:
        try:
            log.error(message + " (halted: PID 1 cannot exit)")
            time.sleep(HANG_INTERVAL)
        except BaseException:  # noqa: B036, S110
            continue


def switch_root(
    newroot: str,
    init: str,
    args: Sequence[str] = (),
    console: str | None = None,
    *,
    force_move: bool = False,
) -> NoReturn:
    """Make NEWROOT the root, free the old initramfs, exec INIT as PID 1.

    Raises :class:`SwitchError` only before the point of no return, with nothing lost.
    ``force_move=True`` skips pivot_root and takes the MS_MOVE + chroot path (which a real
    initramfs takes anyway, since its rootfs cannot be pivoted before Linux 7.0).
    """
    preflight(newroot, init)
    real = mnt.realpath_abs(newroot)
    _try_console(console)
    table = mnt.read() or []
    left_behind = mnt.submounts_outside(table, (real,))
    old_fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        sc.make_private("/")
    except OSError as e:
        log.warning(f"could not make / private ({e.strerror}); the switch may be refused")
    moved = _move_api_mounts(real)
    # what moved into the new root (with its submounts, /dev/pts under /dev) is not left behind
    left_behind = [p for p in left_behind
                   if not any(p == src or p.startswith(src + "/") for src, _ in moved)]
    try:
        os.chdir(real)
        how = _switch(force_move)
    except OSError as e:
        try:
            os.chdir("/")
        except OSError:
            pass
        _rollback(moved)
        os.close(old_fd)
        raise SwitchError(
            f"cannot switch to {newroot}: {e.strerror}; the mounts were moved back, "
            f"nothing was changed", errno=e.errno,
        ) from None
    # ---- point of no return: never raise, never return, never exit from here on ----
    try:
        log.debug(f"switched root to {newroot} ({how})")
        if how == "move":
            _detach_left_behind(old_fd, left_behind)
        _free_old_root(old_fd)
        os.close(old_fd)
        _reopen_console(console)
    except BaseException as e:  # noqa: B036 - keep going to the exec whatever happened
        log.error(f"after the switch: {e}")
    _exec_init(init, args)
