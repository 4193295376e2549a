"""Letting the old root go after ``ramroot``, and opening it again for ``ramroot --return``.

What holds a filesystem (:func:`blockers`): processes (root, cwd, exe, open files, mappings,
the block device node itself; a file open for writing is marked), swap on it or on its
mappings, loop devices backed by its files, the same filesystem mounted elsewhere in this
namespace or in another process's mount namespace.

:func:`release` refuses, naming every holder, while anything holds the old root: it never
force-unmounts (``MNT_FORCE``) or lazily detaches (``MNT_DETACH``) a root that may have writers,
which is where data is lost. Otherwise it unmounts everything at and below PUT_OLD (deepest
first, plain ``umount2``), then closes the dm-crypt mappings under the root, top down, reading
the holders chain in sysfs (``/sys/block/dm-N/{slaves,holders}``); a mapping that something else
still stacks on (an LV beside the root's, a swap mapping) stays open and is named. What was
closed is recorded in the ramroot state file, so :func:`reopen` can open it again through the
boot's own unlocking (the plan's key sources, the prompt).
"""

from __future__ import annotations

import os
import stat
import sys

from cryptboot import log
from cryptboot import syscalls as sc
from cryptboot.errors import CryptbootError, SwitchError
from cryptboot.switch import mounts as mnt

SYS_BLOCK = "/sys/block"


def devnum(dev: int) -> str:
    return f"{os.major(dev)}:{os.minor(dev)}"


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return ""


def _comm(pid: int) -> str:
    return _read(f"/proc/{pid}/comm") or "?"


def _writing(pid: int, fd: str) -> bool:
    """Whether ``fd`` of ``pid`` is open for writing (fdinfo ``flags``: O_WRONLY or O_RDWR)."""
    for line in _read(f"/proc/{pid}/fdinfo/{fd}").splitlines():
        if line.startswith("flags:"):
            try:
                return int(line.split()[1], 8) & os.O_ACCMODE in (os.O_WRONLY, os.O_RDWR)
            except (IndexError, ValueError):
                return False
    return False


def _pids() -> list[int]:
    try:
        return sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
    except OSError:
        return []


def process_holders(devs: set[str], blockdevs: frozenset[str] = frozenset(), *,
                    skip_self: bool = True) -> list[str]:
    """Processes holding files on the filesystems ``devs`` (major:minor), or the block devices
    ``blockdevs`` open: ``PID COMM: what, what``, one line each."""
    me = os.getpid()
    lines = []
    pids = _pids()
    if not pids:
        return ["(no /proc: cannot list the processes that hold files there)"]
    for pid in pids:
        if pid == me and skip_self:
            continue
        base = f"/proc/{pid}"
        what: list[str] = []
        for link in ("root", "cwd", "exe"):
            try:
                st = os.stat(f"{base}/{link}")
            except OSError:
                continue
            if devnum(st.st_dev) in devs:
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
            if devnum(st.st_dev) in devs or (
                    stat.S_ISBLK(st.st_mode) and devnum(st.st_rdev) in blockdevs):
                writing = ", open for writing" if _writing(pid, fd) else ""
                what.append(f"fd {fd} ({target}{writing})")
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
            lines.append(f"{pid} {_comm(pid)}: {', '.join(what)}")
    return lines


def swap_holders(devs: set[str], blockdevs: frozenset[str], put_old: str) -> list[str]:
    """Swap files on ``devs`` and swap on the ``blockdevs`` (``/proc/swaps``)."""
    lines = []
    for line in _read("/proc/swaps").splitlines()[1:]:
        parts = line.split()
        if len(parts) < 2:
            continue
        path = mnt._unescape(parts[0])
        for cand in (path, put_old + path):
            try:
                st = os.stat(cand)
            except OSError:
                continue
            if (stat.S_ISBLK(st.st_mode) and devnum(st.st_rdev) in blockdevs) or (
                    stat.S_ISREG(st.st_mode) and devnum(st.st_dev) in devs):
                lines.append(f"swap {path} ({parts[1]}; swapoff {path})")
                break
    return lines


def loop_holders(devs: set[str], put_old: str) -> list[str]:
    """Loop devices whose backing file is on ``devs`` (the path as set up, or below PUT_OLD,
    since it was set up before the pivot)."""
    lines = []
    try:
        names = sorted(n for n in os.listdir(SYS_BLOCK) if n.startswith("loop"))
    except OSError:
        return []
    for name in names:
        backing = _read(f"{SYS_BLOCK}/{name}/loop/backing_file")
        if not backing:
            continue
        for cand in (put_old + backing, backing):
            try:
                if devnum(os.stat(cand).st_dev) in devs:
                    lines.append(f"/dev/{name} (loop device on {backing}; losetup -d)")
                    break
            except OSError:
                continue
    return lines


def mount_holders(devs: set[str], put_old: str) -> list[str]:
    """The filesystems ``devs`` mounted outside PUT_OLD here, or in another mount namespace."""
    lines = []
    for m in mnt.read() or []:
        if m.major_minor in devs and not mnt.is_under(m.mount_point, put_old):
            lines.append(f"mount {m.mount_point} (the same filesystem, {m.source})")
    try:
        mine = os.readlink("/proc/self/ns/mnt")
    except OSError:
        return lines
    seen = {mine}
    for pid in _pids():
        try:
            ns = os.readlink(f"/proc/{pid}/ns/mnt")
        except OSError:
            continue
        if ns in seen:
            continue
        seen.add(ns)
        for m in mnt.read(f"/proc/{pid}/mountinfo") or []:
            if m.major_minor in devs:
                lines.append(f"mount {m.mount_point} in the mount namespace of {pid} "
                             f"{_comm(pid)}")
    return lines


# ---------------------------------------------------------------------------------------------
# The device-mapper chain under the root, from sysfs


class Mapping:
    """A device-mapper device: kernel name (``dm-0``), dm name, ``major:minor``, dm uuid."""

    __slots__ = ("kname", "name", "devnum", "uuid")

    def __init__(self, kname: str, name: str, devnum: str, uuid: str) -> None:
        self.kname, self.name, self.devnum, self.uuid = kname, name, devnum, uuid

    @property
    def crypt(self) -> bool:
        return self.uuid.startswith("CRYPT-")

    @property
    def luks_uuid(self) -> str | None:
        """``CRYPT-LUKS2-<32 hex>-NAME`` -> the LUKS header's UUID, dashed."""
        parts = self.uuid.split("-")
        if len(parts) >= 3 and parts[1].startswith("LUKS") and len(parts[2]) == 32:
            h = parts[2]
            return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
        return None

    def slaves(self) -> list[str]:
        return _listdir(f"{SYS_BLOCK}/{self.kname}/slaves")

    def holders(self) -> list[str]:
        return _listdir(f"{SYS_BLOCK}/{self.kname}/holders")


def _listdir(path: str) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []


def mapping_of(num: str) -> Mapping | None:
    """The dm device with ``major:minor`` ``num``, None when it is not device-mapper."""
    kname = os.path.basename(os.path.realpath(f"/sys/dev/block/{num}"))
    return _mapping(kname)


def _mapping(kname: str) -> Mapping | None:
    name = _read(f"{SYS_BLOCK}/{kname}/dm/name")
    if not name:
        return None
    return Mapping(kname, name, _read(f"{SYS_BLOCK}/{kname}/dev"),
                   _read(f"{SYS_BLOCK}/{kname}/dm/uuid"))


def chain(num: str) -> list[Mapping]:
    """The dm devices at and under ``num``, top down (breadth first through ``slaves``)."""
    top = mapping_of(num)
    out: list[Mapping] = []
    todo = [top] if top else []
    while todo:
        m = todo.pop(0)
        if any(x.kname == m.kname for x in out):
            continue
        out.append(m)
        todo.extend(s for s in (_mapping(k) for k in m.slaves()) if s is not None)
    return out


def close_chain(maps: list[Mapping]) -> tuple[list[Mapping], list[str]]:
    """Close the crypt mappings of ``maps`` top down while nothing else stacks on them.
    Returns (closed, lines saying what stays open and why)."""
    from cryptboot.run import run
    from cryptboot.unlock.dmcrypt import dm_env

    closed: list[Mapping] = []
    stays: list[str] = []
    for m in maps:
        held = m.holders()
        if held:
            names = ", ".join(f"{k} ({_read(f'{SYS_BLOCK}/{k}/dm/name') or k})" for k in held)
            stays.append(f"mapping {m.name} ({m.kname}) stays open: {names} stacked on it")
            break
        if not m.crypt:
            stays.append(f"mapping {m.name} ({m.kname}) stays open: not a crypt mapping "
                         f"({m.uuid.split('-')[0] or 'no dm uuid'}; deactivate it with its "
                         f"own tool, e.g. vgchange -an)")
            break
        run(["cryptsetup", "close", m.name], env=dm_env(), timeout=60)
        closed.append(m)
    return closed, stays


# ---------------------------------------------------------------------------------------------
# Release and reopen


def root_devnum(state: dict[str, str], put_old: str) -> str | None:
    """The old root's ``major:minor``: as recorded by ``ramroot``, else what is at PUT_OLD."""
    if state.get("root_dev"):
        return state["root_dev"]
    if sc.is_mount_point(put_old):
        return devnum(os.stat(put_old).st_dev)
    return None


def blockers(put_old: str, root_dev: str | None, *, skip_self: bool = True) -> list[str]:
    """Everything that holds the old root (mounted at PUT_OLD, or ``root_dev``) or the
    mappings under it, one line each."""
    below = [m for m in mnt.read() or [] if mnt.is_under(m.mount_point, put_old)]
    devs = {m.major_minor for m in below}
    if root_dev:
        devs.add(root_dev)
    maps = chain(root_dev) if root_dev else []
    blockdevs = frozenset({*(m.devnum for m in maps), *devs})
    return (process_holders(devs, blockdevs, skip_self=skip_self)
            + swap_holders(devs, blockdevs, put_old) + loop_holders(devs, put_old)
            + mount_holders(devs, put_old))


def release(state: dict[str, str], state_file: str) -> list[str]:
    """Unmount everything at and below PUT_OLD, close the crypt mappings under the old root.

    Refuses, changing nothing, while anything holds it. Appends what was closed to
    ``state_file`` (``closed=NAME,DM_UUID`` lines, top down) and ``released=1``.
    """
    put_old = state["put_old"]
    os.chdir("/")
    root_dev = root_devnum(state, put_old)
    held = blockers(put_old, root_dev, skip_self=False)
    if held:
        raise SwitchError(
            f"cannot release the old root at {put_old}: still held by " + "; ".join(held),
            hint="stop or restart them first (a process started before `ramroot` still runs "
                 "from the old root); a root with writers is never force-unmounted")
    below = sorted({m.mount_point for m in mnt.read() or []
                    if mnt.is_under(m.mount_point, put_old)},
                   key=lambda p: (-p.count("/"), p))
    lines: list[str] = []
    for point in below:
        try:
            sc.umount2(point)
        except OSError as e:
            done = f" (unmounted before it: {', '.join(lines)})" if lines else ""
            raise SwitchError(f"cannot unmount {point}: {e.strerror}{done}",
                              errno=e.errno) from None
        lines.append(point)
    report = [f"unmounted {', '.join(lines)}"] if lines else [
        f"nothing was mounted at {put_old} (unmounted already)"]
    maps = chain(root_dev) if root_dev else []
    closed, stays = close_chain(maps)
    with open(state_file, "a", encoding="utf-8") as f:
        for m in closed:
            f.write(f"closed={m.name},{m.uuid}\n")
        f.write("released=1\n")
    for m in closed:
        report.append(f"closed mapping {m.name} ({m.kname})")
    if not maps:
        report.append("no device-mapper device under the old root: nothing to close")
    return report + stays


def closed_records(state_text: str) -> list[tuple[str, str]]:
    """``(name, dm uuid)`` of the mappings ``release`` closed, top down."""
    out = []
    for line in state_text.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "closed":
            name, _, uuid = value.strip().partition(",")
            out.append((name, uuid))
    return out


def reopen(records: list[tuple[str, str]]) -> list[str]:
    """Open again the mappings ``release`` closed (bottom up) through the boot's unlocking:
    the plan's volume of that name (``/proc/cmdline``, ``/etc/crypttab``: its keyfiles, then
    the prompt), or for a LUKS mapping the plan does not name, the prompt."""
    from cryptboot.config.model import DeviceSpec, KeyKind, KeySource, SpecKind, Volume
    from cryptboot.config.plan import load_plan
    from cryptboot.layers.crypt import Unlocker
    from cryptboot.paths import CMDLINE_DEFAULTS
    from cryptboot.unlock import is_active

    todo = [(n, u) for n, u in reversed(records) if not is_active(n)]
    if not todo:
        return []
    plan = load_plan("/proc/cmdline", "/etc/crypttab", CMDLINE_DEFAULTS)
    by_name = {v.name: v for v in plan.volumes}
    volumes = []
    for name, uuid in todo:
        vol = by_name.get(name)
        if vol is None:
            luks = Mapping("", name, "", uuid).luks_uuid
            if luks is None:
                raise CryptbootError(
                    f"cannot open {name} again: it is not in the plan (/proc/cmdline, "
                    f"/etc/crypttab) and not LUKS ({uuid or 'no dm uuid'}), so its cipher and "
                    f"key are not known", hint=f"open it by hand, then --return --device "
                    f"/dev/mapper/{name}")
            vol = Volume(name, DeviceSpec(SpecKind.UUID, luks),
                         (KeySource(KeyKind.CACHED), KeySource(KeyKind.PROMPT)),
                         origin="ramroot --release")
        volumes.append(vol)
    consoles = [os.ttyname(0)] if sys.stdin.isatty() else None
    unlocker = Unlocker(plan, consoles=consoles)
    try:
        unlocker.unlock_all(volumes)
    finally:
        unlocker.close()
    log.info("opened again: " + ", ".join(v.name for v in volumes))
    return [f"opened mapping {v.name} again" for v in volumes]
