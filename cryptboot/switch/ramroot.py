"""ramroot: run from a RAM copy of the root so the real root can be unmounted, checked or
upgraded without a reboot, then return to it.

``enter()``: mount a tmpfs, copy the root (or a given tree) into it without crossing mount
points, make propagation private (pivot_root refuses shared parents), ``pivot_root`` into it
with the old root at PUT_OLD, and move ``/dev /proc /sys /run`` from the old root into the
copy. A state file (``/.cryptboot-ramroot``) in the copy records where everything went.

``leave()``: move the API mounts back, ``pivot_root`` back onto the old root with the copy at
its original mount point, detach and so free the copy.

Like on the BSDs (FreeBSD ``reboot -r``), processes that still hold files on the old root keep
it busy: both directions print them, so they can be restarted.
"""

from __future__ import annotations

import errno
import os
import stat

from cryptboot import log
from cryptboot import syscalls as sc
from cryptboot.errors import SwitchError
from cryptboot.switch import mounts as mnt
from cryptboot.switch.pivot_root import explain

DEFAULT_MOUNTPOINT = "/run/cryptboot/ramroot"
DEFAULT_PUT_OLD = "/oldroot"
STATE_FILE = "/.cryptboot-ramroot"
API_MOUNTS = ("/dev", "/proc", "/sys", "/run")


def copy_tree(src: str, dst: str) -> int:
    """Copy ``src`` into the existing directory ``dst`` without leaving ``src``'s filesystem.

    Keeps modes, owners, times, symlinks, hard links, device nodes and FIFOs (sockets are
    skipped: they are meaningless without their server). A mount point inside ``src`` becomes
    an empty directory. Returns the number of entries copied.
    """
    import shutil

    dev = os.lstat(src).st_dev
    links: dict[tuple[int, int], str] = {}
    count = 0
    stack = [(src, dst)]
    while stack:
        s, d = stack.pop()
        with os.scandir(s) as it:
            entries = list(it)
        for e in entries:
            sp, dp = e.path, os.path.join(d, e.name)
            st = e.stat(follow_symlinks=False)
            mode = st.st_mode
            if stat.S_ISDIR(mode):
                os.mkdir(dp, stat.S_IMODE(mode))
                if st.st_dev == dev and not sc.is_mount_point(sp):
                    stack.append((sp, dp))
            elif stat.S_ISLNK(mode):
                os.symlink(os.readlink(sp), dp)
            elif stat.S_ISREG(mode):
                key = (st.st_dev, st.st_ino)
                if st.st_nlink > 1 and key in links:
                    os.link(links[key], dp)
                    count += 1
                    continue
                shutil.copyfile(sp, dp, follow_symlinks=False)
                if st.st_nlink > 1:
                    links[key] = dp
            elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode):
                os.mknod(dp, mode, st.st_rdev)
            else:
                continue
            os.lchown(dp, st.st_uid, st.st_gid)
            if not stat.S_ISLNK(mode):
                os.chmod(dp, stat.S_IMODE(mode))
            os.utime(dp, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
            count += 1
    return count


def _devs_under(top: str) -> set[str]:
    """major:minor of every filesystem mounted at or below ``top``."""
    st = os.stat(top)
    devs = {f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"}
    for m in mnt.read() or []:
        if mnt.is_under(m.mount_point, top):
            devs.add(m.major_minor)
    return devs


def holders(top: str) -> list[str]:
    """Processes holding files (root, cwd, exe, open files, mappings) on the filesystems at or
    below ``top``, one line each: ``PID COMM: what``. Our own process is left out."""
    devs = _devs_under(top)
    me = os.getpid()
    lines = []
    try:
        pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
    except OSError:
        return ["(no /proc: cannot list the processes that hold files there)"]
    for pid in pids:
        if pid == me:
            continue
        base = f"/proc/{pid}"
        what: list[str] = []
        for link in ("root", "cwd", "exe"):
            try:
                st = os.stat(f"{base}/{link}")
            except OSError:
                continue
            if f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}" in devs:
                what.append(link)
        try:
            fds = os.listdir(f"{base}/fd")
        except OSError:
            fds = []
        for fd in fds:
            try:
                st = os.stat(f"{base}/fd/{fd}")
                target = os.readlink(f"{base}/fd/{fd}")
            except OSError:
                continue
            if f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}" in devs:
                what.append(f"fd {fd} ({target})")
        try:
            with open(f"{base}/maps", encoding="utf-8", errors="replace") as f:
                for line in f:
                    parts = line.split(None, 5)
                    if len(parts) >= 6 and parts[4] != "0":
                        major, minor = (int(x, 16) for x in parts[3].split(":"))
                        if f"{major}:{minor}" in devs:
                            what.append(f"maps {parts[5].strip()}")
                            break
        except (OSError, ValueError):
            pass
        if what:
            try:
                with open(f"{base}/comm", encoding="utf-8", errors="replace") as f:
                    comm = f.read().strip()
            except OSError:
                comm = "?"
            lines.append(f"{pid} {comm}: {', '.join(what)}")
    return lines


def _read_state() -> dict[str, str]:
    try:
        with open(STATE_FILE, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise SwitchError(
            f"not running from a ramroot: {STATE_FILE} not found",
            hint="`cryptboot ramroot` first, then `cryptboot ramroot --return`",
        ) from None
    state = {}
    for line in text.splitlines():
        key, _, value = line.partition("=")
        state[key.strip()] = value.strip()
    return state


def _move(src: str, dst: str) -> bool:
    try:
        sc.mount(src, dst, None, sc.MS_MOVE)
        return True
    except OSError as e:
        log.warning(f"could not move {src} to {dst}: {e.strerror}")
        return False


def _mem_available() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _check_memory(src: str) -> None:
    """Refuse to copy a whole filesystem that cannot fit in the available memory."""
    if not sc.is_mount_point(src):
        return  # a subtree: its filesystem's usage says nothing about its own size
    sv = os.statvfs(src)
    used = (sv.f_blocks - sv.f_bfree) * sv.f_frsize
    avail = _mem_available()
    if avail is not None and used > avail * 0.8:
        raise SwitchError(
            f"{src} uses {used >> 20} MiB but only {avail >> 20} MiB of memory is available: "
            f"the RAM copy would not fit",
            hint="copy a smaller tree with --source (what is needed to run the upgrade)",
        )


def enter(source: str = "/", *, mountpoint: str = DEFAULT_MOUNTPOINT,
          put_old: str = DEFAULT_PUT_OLD, size: str | None = None) -> list[str]:
    """Pivot into a tmpfs copy of ``source``. Returns report lines (processes still holding
    files on the old root). Raises :class:`SwitchError`; on failure the tmpfs is removed."""
    if os.path.exists(STATE_FILE):
        raise SwitchError(f"already running from a ramroot ({STATE_FILE} exists)",
                          hint="`cryptboot ramroot --return` first")
    if not put_old.startswith("/") or os.path.normpath(put_old) == "/":
        raise SwitchError(f"--put-old {put_old}: expected an absolute path other than /")
    put_old = os.path.normpath(put_old)
    src = mnt.realpath_abs(source)
    if not os.path.isdir(src):
        raise SwitchError(f"--source {source}: expected a directory to copy")
    _check_memory(src)
    mountpoint = mnt.realpath_abs(mountpoint)
    os.makedirs(mountpoint, exist_ok=True)
    if sc.is_mount_point(mountpoint):
        raise SwitchError(f"{mountpoint} is already a mount point: expected an empty directory",
                          hint="a previous ramroot may still be mounted there; unmount it")
    data = "mode=0755" + (f",size={size}" if size else "")
    try:
        sc.mount("cryptboot-ramroot", mountpoint, "tmpfs", 0, data)
    except OSError as e:
        raise SwitchError(f"cannot mount a tmpfs on {mountpoint}: {e.strerror}",
                          errno=e.errno) from None
    try:
        with log.step(f"copying {src} into RAM"):
            n = copy_tree(src, mountpoint)
        log.info(f"copied {n} entries")
        for d in (*API_MOUNTS, put_old):
            os.makedirs(mountpoint + d, exist_ok=True)
        with open(mountpoint + STATE_FILE, "w", encoding="utf-8") as f:
            f.write(f"mountpoint={mountpoint}\nput_old={put_old}\n")
        sc.make_private("/")
        sc.pivot_root(mountpoint, mountpoint + put_old)
    except OSError as e:
        err = e.errno or errno.EIO
        why = (explain(mountpoint, mountpoint + put_old, err) if e.filename == mountpoint
               else e.strerror)
        try:
            sc.umount2(mountpoint, sc.MNT_DETACH)
        except OSError:
            pass
        raise SwitchError(f"ramroot failed, nothing changed: {why}", errno=err) from None
    os.chdir("/")
    moved = [m for m in API_MOUNTS
             if os.path.isdir(put_old + m) and sc.is_mount_point(put_old + m)
             and _move(put_old + m, m)]
    with open(STATE_FILE, "a", encoding="utf-8") as f:
        f.write(f"moved={','.join(moved)}\n")
    log.info(f"running from RAM; the old root is at {put_old}")
    busy = holders(put_old)
    if busy:
        return [f"processes still using the old root at {put_old} (restart them):", *busy]
    return [f"no process holds files on the old root at {put_old}"]


def leave() -> list[str]:
    """Move the API mounts back, pivot back onto the old root, free the RAM copy."""
    state = _read_state()
    mountpoint, put_old = state["mountpoint"], state["put_old"]
    moved = [m for m in state.get("moved", "").split(",") if m]
    back = [m for m in moved if _move(m, put_old + m)]
    try:
        if not os.path.isdir(put_old + mountpoint):
            raise OSError(errno.ENOENT, f"{put_old}{mountpoint} (where the RAM copy goes) is "
                          f"missing on the old root")
        sc.pivot_root(put_old, put_old + mountpoint)
    except OSError as e:
        err = e.errno or errno.EIO
        for m in reversed(back):
            _move(put_old + m, m)
        why = (e.strerror if e.filename is None
               else explain(put_old, put_old + mountpoint, err))
        raise SwitchError(f"cannot return to the old root: {why}", errno=err) from None
    os.chdir("/")
    busy = holders(mountpoint)
    try:
        sc.umount2(mountpoint, sc.MNT_DETACH)
    except OSError as e:
        log.warning(f"back on the old root, but the RAM copy at {mountpoint} stays mounted: "
                    f"{e.strerror}")
    log.info("back on the old root; the RAM copy is detached")
    if busy:
        return ["processes still using the RAM copy (it is freed when they exit):", *busy]
    return []
