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
from cryptboot.switch import release
from cryptboot.switch.pivot_root import explain

DEFAULT_MOUNTPOINT = "/run/cryptboot/ramroot"
DEFAULT_PUT_OLD = "/oldroot"
STATE_FILE = "/.cryptboot-ramroot"
API_MOUNTS = ("/dev", "/proc", "/sys", "/run")
NEXTROOT = "/run/nextroot"  # where systemd's soft-reboot looks for the next root


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
    devs = {release.devnum(os.stat(top).st_dev)}
    for m in mnt.read() or []:
        if mnt.is_under(m.mount_point, top):
            devs.add(m.major_minor)
    return devs


def holders(top: str) -> list[str]:
    """Processes holding files (root, cwd, exe, open files, mappings) on the filesystems at or
    below ``top``, one line each: ``PID COMM: what``. Our own process is left out."""
    return release.process_holders(_devs_under(top))


def _read_state() -> dict[str, str]:
    return _parse_state(_state_text())


def _state_text() -> str:
    try:
        with open(STATE_FILE, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        raise SwitchError(
            f"not running from a ramroot: {STATE_FILE} not found",
            hint="`cryptboot ramroot` first, then `cryptboot ramroot --return`",
        ) from None


def _parse_state(text: str) -> dict[str, str]:
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
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _tree_bytes(src: str) -> int:
    """Bytes the files of ``src`` take, without leaving its filesystem (as the copy does)."""
    dev = os.lstat(src).st_dev
    total = 0
    for top, dirs, files in os.walk(src):
        for name in files:
            try:
                total += os.lstat(os.path.join(top, name)).st_blocks * 512
            except OSError:
                continue
        dirs[:] = [d for d in dirs if os.lstat(os.path.join(top, d)).st_dev == dev
                   and not sc.is_mount_point(os.path.join(top, d))]
    return total


def _check_memory(src: str) -> None:
    """Refuse to copy what cannot fit in 80 % of the available memory, saying the size."""
    if sc.is_mount_point(src):
        sv = os.statvfs(src)
        used = (sv.f_blocks - sv.f_bfree) * sv.f_frsize
    else:  # a subtree: its filesystem's usage says nothing about its own size
        used = _tree_bytes(src)
    avail = _mem_available()
    if avail is not None and used > avail * 0.8:
        raise SwitchError(
            f"the RAM copy of {src} needs about {used >> 20} MiB but only {avail >> 20} MiB "
            f"of memory is available (the copy may take 80 %: {int(avail * 0.8) >> 20} MiB)",
            hint="copy a smaller tree with --source (what is needed to run the upgrade)",
        )


def _root_mount() -> dict[str, str]:
    """The root's device, source, type and mount options, for the state file."""
    table = mnt.read() or []
    root = mnt.mount_of(table, "/")
    if root is None:
        return {}
    options = "rw"
    try:
        with open("/proc/self/mounts", encoding="utf-8", errors="replace") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 4 and parts[1] == "/":
                    options = parts[3]
    except OSError:
        pass
    return {"root_dev": root.major_minor, "root_source": root.source,
            "root_fstype": root.fstype, "root_options": options}


def enter(source: str = "/", *, mountpoint: str = DEFAULT_MOUNTPOINT,
          put_old: str = DEFAULT_PUT_OLD, size: str | None = None) -> list[str]:
    """Pivot into a tmpfs copy of ``source``. Returns report lines (processes, mounts and swap
    still holding the old root). Raises :class:`SwitchError`; on failure the tmpfs is
    removed."""
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
    root = _root_mount()
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
            f.write("".join(f"{k}={v}\n" for k, v in root.items()))
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
    busy = release.blockers(put_old, root.get("root_dev"))
    if busy:
        return [f"processes still using the old root at {put_old} (restart them):", *busy]
    return [f"no process holds files on the old root at {put_old}; "
            f"`cryptboot ramroot --release` lets it go"]


def release_root() -> list[str]:
    """``ramroot --release``: unmount the old root and close the mappings under it."""
    state = _read_state()
    if state.get("released"):
        raise SwitchError(f"the old root was released already (see {STATE_FILE})",
                          hint="`cryptboot ramroot --return` opens and mounts it again")
    return release.release(state, STATE_FILE)


def _root_node(spec: str, state_text: str) -> tuple[str, list[str]]:
    """The device node ``spec`` names, opening the mapping(s) again when it is a mapping
    ``--release`` closed (or a LUKS device, or a volume of the plan)."""
    from cryptboot.config.devspec import parse_devspec
    from cryptboot.config.model import SpecKind

    ds = parse_devspec(spec)
    records = release.closed_records(state_text)
    if ds.kind is SpecKind.PATH:
        path = ds.value
        name = path[len("/dev/mapper/"):] if path.startswith("/dev/mapper/") else None
        lines: list[str] = []
        if name and not os.path.exists(path):
            lines = release.reopen(records if any(r[0] == name for r in records)
                                   else [(name, "")])
        if not os.path.exists(path):
            raise SwitchError(f"--device {spec}: {path} does not exist")
        return path, lines
    from cryptboot.devices import wait_for

    dev = wait_for(ds, 10.0)
    uuid = dev.get("ID_FS_UUID") or ""
    if dev.get("ID_FS_TYPE") != "crypto_LUKS" or not uuid:
        return dev.node, []
    hexid = uuid.replace("-", "")
    name = next((n for n, u in records if hexid in u), f"luks-{uuid}")
    lines = release.reopen([(name, f"CRYPT-LUKS2-{hexid}-{name}")])
    return f"/dev/mapper/{name}", lines


def released_root(state: dict[str, str], state_text: str) -> str | None:
    """What ``--return`` goes back into after ``--release``: the root's own mapping by its
    name (the boot mounts ``/dev/dm-N``, a name that is gone once closed), else the recorded
    source; None when the old root was not released."""
    if not state.get("released"):
        return None
    records = release.closed_records(state_text)
    if records:
        return f"/dev/mapper/{records[0][0]}"
    return state.get("root_source") or None


def _mount_root(node: str, target: str, state: dict[str, str]) -> str:
    from cryptboot.mount import mount_options, probe_type

    fstype = probe_type(node)
    if not fstype:
        raise SwitchError(f"nothing to return to: {node} holds no filesystem (blkid found "
                          f"none); still running from RAM",
                          hint="write the filesystem first (mkfs, then fill it), or name "
                               "another one with --device")
    same = release.devnum(os.stat(node).st_rdev) == state.get("root_dev")
    options = state.get("root_options", "rw") if same else "rw"
    flags, data = mount_options(options)
    os.makedirs(target, exist_ok=True)
    try:
        sc.mount(node, target, fstype, flags, data or None)
    except OSError as e:
        raise SwitchError(f"cannot mount {node} ({fstype}, {options}) on {target}: "
                          f"{e.strerror}; still running from RAM", errno=e.errno) from None
    return f"mounted {node} ({fstype}, {options}) at {target}"


def leave(device: str | None = None, *, nextroot: bool = False) -> list[str]:
    """Return to the root mounted at PUT_OLD, or to ``device`` (mounted there first; opened
    again when ``--release`` closed its mapping), or, with ``nextroot``, only mount it at
    ``/run/nextroot`` for ``systemctl soft-reboot``. Moves the API mounts back, pivots back,
    frees the RAM copy."""
    text = _state_text()
    state = _parse_state(text)
    mountpoint, put_old = state["mountpoint"], state["put_old"]
    os.chdir("/")
    report: list[str] = []
    target = NEXTROOT if nextroot else put_old
    mounted_here = False
    if nextroot or not sc.is_mount_point(put_old):
        if nextroot and os.path.isdir(NEXTROOT) and sc.is_mount_point(NEXTROOT):
            raise SwitchError(f"{NEXTROOT} is already a mount point",
                              hint="`systemctl soft-reboot` switches into it")
        spec = device or released_root(state, text)
        if spec is None:
            raise SwitchError(
                f"nothing is mounted at {put_old} to return to, and no --device names a root "
                f"(the old root was unmounted without `ramroot --release`, which records it); "
                f"still running from RAM",
                hint=f"mount the root at {put_old}, or name it: `cryptboot ramroot --return "
                     f"--device /dev/mapper/NAME`")
        node, opened = _root_node(spec, text)
        report += opened
        report.append(_mount_root(node, target, state))
        mounted_here = True
    elif device:
        try:
            rdev = os.stat(device).st_rdev
        except OSError as e:
            raise SwitchError(f"--device {device}: {e.strerror}") from None
        if rdev != os.stat(put_old).st_dev:
            raise SwitchError(f"--device {device} is not what is mounted at {put_old} "
                              f"({release.devnum(os.stat(put_old).st_dev)}): unmount it first, "
                              f"or leave out --device")
    if nextroot:
        return [*report, f"{NEXTROOT} is ready: `systemctl soft-reboot` switches into it and "
                "starts every service afresh (the RAM copy stays the root until then)"]
    for d in API_MOUNTS:
        if not os.path.isdir(put_old + d):
            os.makedirs(put_old + d, mode=0o755)
            report.append(f"created {d} on the new root")
    moved = [m for m in state.get("moved", "").split(",") if m]
    back = [m for m in moved if _move(m, put_old + m)]
    try:
        os.makedirs(put_old + mountpoint, exist_ok=True)
        sc.pivot_root(put_old, put_old + mountpoint)
    except OSError as e:
        err = e.errno or errno.EIO
        for m in reversed(back):
            _move(put_old + m, m)
        if mounted_here:
            try:
                sc.umount2(put_old)
            except OSError:
                pass
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
        return [*report, "processes still using the RAM copy (it is freed when they exit):",
                *busy]
    return report
