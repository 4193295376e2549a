"""Mount the real root (and, at boot, the API filesystems the initramfs needs).

The root: ``rootfstype=`` or the type probed on the device, ``ro`` (the default, so the real
system's fsck can run) or ``rw`` with ``rootflags=``. Before a read-write mount, ``fsck -a`` for the
type runs when the image has the tool, as dracut does; an error it could not repair stops the
boot with fsck's own words rather than mounting a damaged filesystem read-write. The mount
itself is mount(2), with the options split into flags and filesystem data as mount(8) does
(no process started: tens of milliseconds under emulation).
"""

from __future__ import annotations

import os

from cryptboot import log
from cryptboot.config.model import Root
from cryptboot.errors import CommandError, CryptbootError
from cryptboot.paths import SYSROOT
from cryptboot.run import run, which

# (source, target, type, flags, data)
API_MOUNTS = (
    ("proc", "/proc", "proc", "nosuid,noexec,nodev"),
    ("sysfs", "/sys", "sysfs", "nosuid,noexec,nodev"),
    ("devtmpfs", "/dev", "devtmpfs", "nosuid,mode=0755"),
    ("devpts", "/dev/pts", "devpts", "nosuid,noexec,gid=5,mode=620,ptmxmode=000"),
    ("tmpfs", "/run", "tmpfs", "nosuid,nodev,mode=0755"),
)


def is_mounted(path: str) -> bool:
    return os.path.ismount(path)


def mount_api_filesystems() -> list[str]:
    """Mount /proc /sys /dev /dev/pts /run where not mounted yet; returns what was mounted."""
    from cryptboot import syscalls

    done = []
    for source, target, fstype, options in API_MOUNTS:
        if is_mounted(target):
            continue
        os.makedirs(target, mode=0o755, exist_ok=True)
        flags, data = mount_options(options)
        try:
            syscalls.mount(source, target, fstype, flags, data or None)
        except OSError as e:
            raise CryptbootError(f"cannot mount {fstype} on {target}: {e.strerror}") from None
        done.append(target)
    return done


def probe_type(device: str) -> str | None:
    """The filesystem type on ``device`` (blkid's low-level probe), None if unknown."""
    from cryptboot.blkid import probe as blkid_probe

    return blkid_probe(device).get("ID_FS_TYPE") or None


FSCK_OK = (0, 1)  # 0 clean, 1 errors corrected


def fsck(device: str, fstype: str) -> None:
    """``fsck.TYPE -a DEVICE`` when the tool is there; raise on errors left uncorrected."""
    tool = which(f"fsck.{fstype}")
    if tool is None:
        log.info(f"no fsck.{fstype} in the image; not checking {device}")
        return
    proc = run([tool, "-a", device], check=False)
    if proc.returncode in FSCK_OK:
        if proc.returncode == 1:
            log.info(f"fsck.{fstype} corrected errors on {device}")
        return
    out = ((proc.stdout or b"") + (proc.stderr or b"")).decode(errors="replace").strip()
    last = out.splitlines()[-1] if out else ""
    if proc.returncode in (2, 3):  # corrected; "reboot" does not apply: nothing is mounted yet
        log.info(f"fsck.{fstype} corrected errors on {device}")
        return
    raise CommandError(f"fsck.{fstype} found errors on {device} it could not correct "
                       f"(exit {proc.returncode})" + (f": {last}" if last else ""),
                       argv0=tool, returncode=proc.returncode,
                       hint=f"run fsck.{fstype} {device} by hand from the shell")


def mount_root(root: Root, device: str, target: str = SYSROOT, probed: str | None = None) -> str:
    """Mount ``device`` on ``target`` as ``root`` says; returns the filesystem type used.

    ``probed``: the type already known from udev's properties (saves a blkid run).
    """
    fstype = root.fstype or probed or probe_type(device)
    if not fstype:
        raise CryptbootError(
            f"no filesystem found on {device} to mount as the root",
            hint="give rootfstype=, or check that root= names the right device")
    if is_mounted(target):
        log.info(f"{target} is already mounted; left as it is")
        return fstype
    if not root.readonly:
        fsck(device, fstype)
    os.makedirs(target, mode=0o755, exist_ok=True)
    options = ",".join(["ro" if root.readonly else "rw"] + ([root.flags] if root.flags else []))
    flags, data = mount_options(options)
    from cryptboot import syscalls

    try:
        syscalls.mount(device, target, fstype, flags, data or None)
    except OSError as e:
        raise CryptbootError(
            f"cannot mount {device} ({fstype}, {options}) on {target}: "
            f"{os.strerror(e.errno) if e.errno else e.strerror}",
            hint="check root= and rootfstype=; rootflags= holds the options "
                 "(dmesg may say more)") from None
    log.info(f"mounted {device} ({fstype}, {options}) on {target}")
    return fstype


# mount(8)'s generic options as mount(2) flags: (set, clear)
_MS = {"ro": (0x1, 0), "rw": (0, 0x1), "nosuid": (0x2, 0), "suid": (0, 0x2),
       "nodev": (0x4, 0), "dev": (0, 0x4), "noexec": (0x8, 0), "exec": (0, 0x8),
       "sync": (0x10, 0), "async": (0, 0x10), "mand": (0x40, 0), "nomand": (0, 0x40),
       "dirsync": (0x80, 0), "noatime": (0x400, 0), "atime": (0, 0x400),
       "nodiratime": (0x800, 0), "diratime": (0, 0x800), "silent": (0x8000, 0),
       "loud": (0, 0x8000), "relatime": (1 << 21, 0), "norelatime": (0, 1 << 21),
       "strictatime": (1 << 24, 0), "lazytime": (1 << 25, 0), "nolazytime": (0, 1 << 25),
       "defaults": (0, 0)}
# options for mount(8) and fstab only, never given to the kernel
_USERSPACE = ("auto", "noauto", "user", "nouser", "users", "owner", "group", "nofail",
              "_netdev")


def mount_options(options: str) -> tuple[int, str]:
    """``ro,noatime,commit=5`` -> (mount(2) flags, filesystem data ``commit=5``), as mount(8)
    splits them; later words win (``ro,rw`` is read-write)."""
    flags = 0
    data: list[str] = []
    for opt in options.split(","):
        if not opt:
            continue
        if opt in _MS:
            set_bits, clear_bits = _MS[opt]
            flags = (flags | set_bits) & ~clear_bits
        elif opt in _USERSPACE or opt.startswith(("x-", "comment=")):
            continue
        else:
            data.append(opt)
    return flags, ",".join(data)
