"""Run ``systemd-udevd`` in the initramfs: start, trigger, and stop it before the hand-off.

No ``udevadm settle``: waiting is done per device by :mod:`cryptboot.devices`. Stopping cleans
the database (except entries marked ``db_persist``, e.g. device-mapper) so the real system's
udevd processes every device afresh, as systemd's initrd and dracut do. Stopping starts no
process: udevd gets SIGTERM and the database is cleaned in Python (each ``udevadm`` run costs
tens of milliseconds under emulation).
"""

from __future__ import annotations

import os
import time

from cryptboot import log
from cryptboot.errors import CommandError
from cryptboot.paths import UDEV_CONTROL as CONTROL
from cryptboot.run import run, which

UDEVD_PATHS = ("/lib/systemd/systemd-udevd", "/usr/lib/systemd/systemd-udevd",
               "/sbin/udevd", "/usr/sbin/udevd")


def find_udevd() -> str | None:
    for path in UDEVD_PATHS:
        if os.access(path, os.X_OK):
            return path
    return which("systemd-udevd") or which("udevd")


def running() -> bool:
    return os.path.exists(CONTROL)


def start(*, subsystems: tuple[str, ...] = ("block",), trigger_now: bool = True) -> bool:
    """Start udevd as a daemon and trigger ``add`` for ``subsystems``.

    Returns False (after saying so) when there is no udevd in the image: the device wait then
    uses kernel uevents and blkid.
    """
    if running():
        log.info("udev: systemd-udevd already running")
        return True
    udevd = find_udevd()
    if udevd is None:
        log.info("udev: no systemd-udevd in this image; devices are found without udev")
        return False
    run([udevd, "--daemon", "--resolve-names=never"])
    # --daemon returns once the control socket is bound; double-check rather than race.
    for _ in range(200):
        if running():
            break
        time.sleep(0.01)
    else:
        raise CommandError(f"{udevd} started but {CONTROL} never appeared", argv0=udevd)
    if trigger_now:
        trigger(subsystems)
    return True


def trigger(subsystems: tuple[str, ...] = ("block",)) -> int:
    """Replay ``add`` events for the devices of ``subsystems``; returns how many.

    As ``udevadm trigger --action=add --subsystem-match=S`` does, by writing ``add`` to each
    device's ``uevent`` file, without starting a process. Only block devices by default, not
    dracut's "every device": their ``ID_FS_*`` properties and ``/dev/disk`` links are what the
    boot waits for. Drivers need no trigger: every module of the image is loaded by the boot
    itself (:mod:`cryptboot.modload`), and a driver binds to its devices as it registers.
    Replaying the hundreds of other devices makes udevd busy for about a second under emulation,
    stealing the CPU from the cipher modules and cryptsetup; the real system's udevd triggers
    everything again anyway.
    """
    count = 0
    for sub in subsystems:
        for base in (f"/sys/class/{sub}", f"/sys/bus/{sub}/devices"):
            try:
                names = sorted(os.listdir(base))
            except OSError:
                continue
            for name in names:
                try:
                    with open(f"{base}/{name}/uevent", "w") as f:
                        f.write("add\n")
                    count += 1
                except OSError:
                    pass  # gone meanwhile, or no uevent file
    return count


UDEVD_NAMES = ("systemd-udevd", "udevd")
STOP_TIMEOUT = 30.0


def _udevd_pids() -> list[int]:
    """udevd processes that are children of this process (``udevd --daemon`` forks and its
    parent exits, so the daemon becomes a child of PID 1: of ``cryptboot boot``)."""
    me = os.getpid()
    found = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # "PID (COMM) STATE PPID ...": COMM may hold spaces and parentheses, split at the last ")"
        head, _, rest = stat.rpartition(b")")
        comm = head.partition(b"(")[2].decode(errors="replace")
        fields = rest.split()
        if comm in UDEVD_NAMES and len(fields) > 1 and int(fields[1]) == me:
            found.append(int(entry))
    return found


def _gone(pid: int) -> bool:
    """Reap ``pid`` if it exited (it is our child); True when it is no longer running."""
    try:
        done, _status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return not os.path.exists(f"/proc/{pid}")
    return done == pid


def _terminate(pids: list[int]) -> bool:
    """SIGTERM (udevd's own clean exit, as for ``udevadm control --exit``), then wait until
    every one is gone; False on timeout. Saves starting ``udevadm`` (~40 ms under TCG)."""
    import select
    import signal

    fds = {}
    for pid in pids:
        try:
            fds[pid] = os.pidfd_open(pid)  # readable once it exited: no polling delay
        except (OSError, AttributeError):
            pass
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + STOP_TIMEOUT
    delay = 0.001
    try:
        while True:
            pids = [p for p in pids if not _gone(p)]
            if not pids:
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            waiting = [fds[p] for p in pids if p in fds]
            if len(waiting) == len(pids):
                select.select(waiting, [], [], left)
            else:
                time.sleep(min(delay, left))
                delay = min(delay * 2, 0.02)
    finally:
        for fd in fds.values():
            os.close(fd)


def stop() -> None:
    """Stop udevd and clean its database before the real root takes over; best effort.

    The udevd this process started (its child) gets SIGTERM and is waited for; any other
    (started by someone else) is asked with ``udevadm control --exit``.
    """
    if not running():
        return
    pids = _udevd_pids()
    if pids:
        ok = _terminate(pids)
    else:
        ok = run(["udevadm", "control", "--exit"], check=False, timeout=30).returncode == 0
    if not ok:
        log.warning("udev: systemd-udevd did not exit; the real system's udevd may "
                    "fail to start")
        run(["udevadm", "info", "--cleanup-db"], check=False, timeout=30)
        return
    cleanup_db()
    if not listening():  # issue 19: udevd leaves its socket file; nothing answers there now
        try:
            os.unlink(CONTROL)
        except OSError:
            pass


def listening(path: str = CONTROL) -> bool:
    """Whether a socket is bound at ``path`` (``/proc/net/unix``): a socket file left by a
    udevd that is gone is not, and libdevmapper would wait for that udevd forever."""
    try:
        with open("/proc/net/unix", encoding="utf-8", errors="replace") as f:
            return any(line.split()[-1:] == [path] for line in f)
    except OSError:
        return True  # cannot tell: as if it were


DB = "/run/udev"


def cleanup_db(db: str = DB) -> None:
    """What ``udevadm info --cleanup-db`` does, without starting udevadm (~55 ms under TCG).

    Once udevd is gone: every device's database entry is removed except those a rule marked
    ``OPTIONS+="db_persist"`` (udevd sets the sticky bit on them, e.g. device-mapper's in
    dracut), so the real system's udevd processes every device afresh. In the link stacks
    (``links/LINK/DEVICE``) and tags (``tags/TAG/DEVICE``) only the entries of a device whose
    database entry persisted stay; ``static_node-tags/`` goes entirely; ``watch/`` is left for
    the next udevd, which re-reads it on start (all as udevadm 252 does: compared on the same
    tree by tests/root/test_udev_cleanup.py). Never follows a symlink; best effort.
    """
    kept = _clean_dir(f"{db}/data", keep_sticky=True, depth=1)
    _clean_dir(f"{db}/links", depth=2, keep_names=kept)
    _clean_dir(f"{db}/tags", depth=2, keep_names=kept)
    _clean_dir(f"{db}/static_node-tags", depth=2)


def _clean_dir(path: str, *, depth: int, keep_sticky: bool = False,
               keep_names: frozenset[str] = frozenset()) -> frozenset[str]:
    """Remove the entries of ``path`` (directories ``depth - 1`` levels down with their
    contents); return the names kept."""
    import stat

    kept: set[str] = set()
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return frozenset()
    try:
        for name in os.listdir(fd):
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except OSError:
                continue
            if (keep_sticky and st.st_mode & stat.S_ISVTX) or name in keep_names:
                kept.add(name)
                continue
            if stat.S_ISDIR(st.st_mode):
                if depth > 1:
                    _clean_dir(f"{path}/{name}", depth=depth - 1, keep_names=keep_names)
                try:
                    os.rmdir(name, dir_fd=fd)
                except OSError:
                    kept.add(name)  # not empty: it holds a kept tag entry
                continue
            try:
                os.unlink(name, dir_fd=fd)
            except OSError:
                pass
    finally:
        os.close(fd)
    return frozenset(kept)
