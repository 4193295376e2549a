"""A real Debian 12 root with systemd as init, for the VM tier and the systemd benchmark.

Built with the real ``mmdebstrap --variant=minbase --include=systemd-sysv,udev,kmod,iproute2
bookworm`` from the mirror apt is configured with on this machine (never another address), then
given what a test needs: an fstab line for ``/dev/mapper/root`` (fsck pass 1), a fixed
machine-id (no first-boot units), ``multi-user.target`` as the default target, autofs4 from
the host's kernel (:data:`ROOT_MODULES`), and a report unit. The bootstrap is cached under
``<repo>/build/debian-root/<key>/`` (``build/`` is gitignored; other keys' roots are removed),
the key being a hash of what mmdebstrap is asked for (suite, variant, package list, excluded
paths, mirror); the test's files are written again on every use, so changing them needs no new
bootstrap. Where the archive cannot be reached,
:class:`ArchiveUnreachable` says why (the tests skip with it; under ``CI=true`` that fails).

The report: ``cryptboot-report.service`` is a oneshot ordered after ``multi-user.target``. It
must not wait for the boot to finish itself (``systemctl is-system-running --wait`` inside a
unit that is part of the boot waits for its own start job), so it hands the report to a
transient service (``systemd-run --no-block``, type ``exec``: its start job ends when the
program runs), which waits for the boot to finish, prints the facts on the console as
``SDREPORT ...`` lines, then ``SDREPORT_DONE`` and powers off. Before that, the oneshot itself
writes ``CRYPTBOOT_MULTI_USER_REACHED`` on the console as it starts (right after
``multi-user.target`` is reached): the benchmark's host-clock mark. systemd's own "Reached
target multi-user.target" status line is no such mark: after dracut's initrd it was not
printed at all (systemd's status output stopped after ``getty.target``).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

SUITE = "bookworm"
VARIANT = "minbase"
PACKAGES = ("systemd-sysv", "udev", "kmod", "iproute2")
# Documentation, manual pages and translations are left out: the disk stays smaller.
DPKG_EXCLUDES = ("/usr/share/doc/*", "/usr/share/man/*", "/usr/share/locale/*",
                 "/usr/share/info/*")
MACHINE_ID = "c7b0075c0ffee0000000000000000018\n"
FSTAB = "/dev/mapper/root / ext4 defaults 0 1\n"

REPORT_UNIT = """\
[Unit]
Description=cryptboot test: report the boot, then power off
After=multi-user.target

[Service]
Type=oneshot
ExecStartPre=/bin/sh -c 'echo CRYPTBOOT_MULTI_USER_REACHED >/dev/console'
ExecStart=/usr/bin/systemd-run --no-block --quiet --unit=cryptboot-facts \
--service-type=exec /usr/local/sbin/cryptboot-report

[Install]
WantedBy=multi-user.target
"""

REPORT_SCRIPT = r"""#!/bin/sh
# cryptboot test: what systemd made of the boot, on the console, then power off.
exec >/dev/console 2>&1
state=$(systemctl is-system-running --wait)
echo "SDREPORT state=$state"
systemctl --failed --no-legend --plain | sed 's/^/SDREPORT failed /'
echo "SDREPORT root source=$(findmnt -n -o SOURCE /) options=$(findmnt -n -o OPTIONS /)"
echo "SDREPORT rootdm $(cat "/sys/dev/block/$(findmnt -n -o MAJ:MIN / | tr -d ' ')/dm/name")"
rootunit=$(systemd-escape -p --suffix=device "$(awk '$2 == "/" { print $1 }' /etc/fstab)")
echo "SDREPORT rootdev $(systemctl show -P ActiveState "$rootunit") $rootunit"
echo "SDREPORT fsck result=$(systemctl show -P Result systemd-fsck-root.service)" \
     "active=$(systemctl show -P ActiveState systemd-fsck-root.service)" \
     "status=$(systemctl show -P ExecMainStatus systemd-fsck-root.service)"
journalctl -b -o cat --no-pager -u systemd-fsck-root.service | sed 's/^/SDREPORT fsckout /'
systemctl list-jobs --no-legend --plain | sed 's/^/SDREPORT job /'
systemctl list-units --no-legend --plain --all --type=device --state=activating \
    | sed 's/^/SDREPORT waiting /'
systemd-analyze | sed 's/^/SDREPORT analyze /'
echo "SDREPORT multiuser $(systemctl show -P ActiveEnterTimestampMonotonic multi-user.target)"
echo "SDREPORT initramfs $(du -sk /run/initramfs 2>/dev/null | cut -f1) KiB"
echo "SDREPORT modules $(cut -d' ' -f1 /proc/modules | sort | tr '\n' ' ')"
echo "SDREPORT askpassword $(ls -A /run/systemd/ask-password 2>/dev/null | tr '\n' ' ')"
echo "SDREPORT devautofs $(if [ -e /dev/autofs ]; then echo present; else echo absent; fi)"
echo "SDREPORT uptime $(cut -d' ' -f1 /proc/uptime)"
echo SDREPORT_DONE
systemctl poweroff
"""


class ArchiveUnreachable(Exception):
    """Debian's archive (apt's configured mirror) could not be reached: the reason."""


def apt_mirror(suite: str = SUITE) -> str:
    """The Debian mirror apt on this machine uses for ``suite`` (deb822 or one-line format)."""
    files = sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))
    for f in files:
        for stanza in f.read_text().split("\n\n"):
            fields = dict(re.findall(r"^(\w[\w-]*):\s*(.*)$", stanza, re.M))
            if suite in fields.get("Suites", "").split() and "deb" in fields.get(
                    "Types", "").split() and "main" in fields.get("Components", "").split():
                uri = fields.get("URIs", "").split()
                if uri and "security" not in uri[0]:
                    return str(uri[0])
    lists = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*.list"))]
    for f in lists:
        if not f.is_file():
            continue
        for line in f.read_text().splitlines():
            words = line.split("#", 1)[0].split()
            if len(words) >= 4 and words[0] == "deb" and suite in words and "security" not in line:
                return str(next(w for w in words[1:] if "://" in w))
    raise ArchiveUnreachable(f"apt has no source for Debian {suite} in /etc/apt/sources.list*")


def cache_key(mirror: str) -> str:
    """The bootstrap's identity: what mmdebstrap is asked for (the files :func:`customize`
    adds are written again on every use, so changing them needs no new bootstrap)."""
    h = hashlib.sha256()
    for part in (SUITE, VARIANT, ",".join(PACKAGES), ",".join(DPKG_EXCLUDES), mirror):
        h.update(part.encode() + b"\0")
    return h.hexdigest()[:16]


def _symlink(link: Path, target: str) -> None:
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(target)


# Kernel modules the root carries (the host kernel's 92 MiB are left out to keep the disk
# small): autofs4, which systemd loads at start for its automount units. Without it in the root,
# a boot whose initramfs leaves /dev/autofs behind (dracut makes the static node from
# modules.devname) fails proc-sys-fs-binfmt_misc.automount ("Failed to open /dev/autofs: No
# such device"), as a real install, which has all its modules, never would.
ROOT_MODULES = ("kernel/fs/autofs/autofs4.ko",)


def install_modules(tree: Path) -> None:
    """:data:`ROOT_MODULES` of every kernel installed here, with their ``depmod`` indexes."""
    dest_base = tree / "usr/lib/modules"
    shutil.rmtree(dest_base, ignore_errors=True)
    for kdir in sorted(Path("/lib/modules").iterdir()):
        if not (kdir / "modules.dep").is_file():
            continue
        for rel in ROOT_MODULES:
            src = kdir / rel
            if not src.is_file():
                raise AssertionError(f"{src}: no such module (needed in the Debian root)")
            dest = dest_base / kdir.name / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest)
        for index in ("modules.builtin", "modules.builtin.modinfo"):  # what is built in
            if (kdir / index).is_file():
                shutil.copy2(kdir / index, dest_base / kdir.name / index)
        subprocess.run(["depmod", "-b", str(tree), kdir.name], check=True, capture_output=True)


def customize(tree: Path) -> None:
    """What the tests need on top of the bootstrap (idempotent: run on every use)."""
    install_modules(tree)
    (tree / "etc/fstab").write_text(FSTAB)
    (tree / "etc/machine-id").write_text(MACHINE_ID)
    (tree / "etc/hostname").write_text("cryptboot-vm\n")
    unit = tree / "etc/systemd/system/cryptboot-report.service"
    unit.write_text(REPORT_UNIT)
    # a server's default target (Debian's is graphical.target, the same here without a
    # display manager): systemd-analyze then reports when multi-user.target was reached
    default = tree / "etc/systemd/system/default.target"
    _symlink(default, "/lib/systemd/system/multi-user.target")
    wants = tree / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    _symlink(wants / unit.name, "../cryptboot-report.service")
    script = tree / "usr/local/sbin/cryptboot-report"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(REPORT_SCRIPT)
    script.chmod(0o755)


def build_root(cache: Path) -> Path:
    """The cached tree (built now if missing); raises :class:`ArchiveUnreachable`."""
    mirror = apt_mirror()
    dest = cache / cache_key(mirror)
    tree = dest / "root"
    if (dest / "complete").is_file():
        customize(tree)
        return tree
    if shutil.which("mmdebstrap") is None:
        raise ArchiveUnreachable("mmdebstrap is not installed (apt-get install mmdebstrap)")
    work = cache / f".building-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    argv = ["mmdebstrap", f"--variant={VARIANT}", f"--include={','.join(PACKAGES)}",
            *(f"--dpkgopt=path-exclude={p}" for p in DPKG_EXCLUDES),
            SUITE, str(work / "root"), mirror]
    t0 = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, check=False)
    if proc.returncode != 0:
        shutil.rmtree(work, ignore_errors=True)
        err = proc.stderr.decode(errors="replace")
        m = re.search(r"(?i).*(could not resolve|failed to fetch|temporary failure resolving"
                      r"|unable to connect|connection (refused|timed out)|network is "
                      r"unreachable).*", err)
        if m:
            raise ArchiveUnreachable(f"{mirror} cannot be reached: {m.group(0).strip()}")
        raise AssertionError(f"{' '.join(argv)} failed ({proc.returncode}):\n{err[-4000:]}")
    (work / "built").write_text(f"{' '.join(argv)}\n{time.monotonic() - t0:.1f} s\n")
    shutil.rmtree(dest, ignore_errors=True)
    work.rename(dest)
    (dest / "complete").write_text("")
    for old in cache.iterdir():  # roots of other keys: outdated, and 170 MiB each
        if old != dest and not old.name.startswith(".building-"):
            shutil.rmtree(old, ignore_errors=True)
    customize(tree)
    return tree


def tree_size_mb(tree: Path) -> int:
    out = subprocess.run(["du", "-sm", "--apparent-size", str(tree)], capture_output=True,
                         check=True, text=True).stdout
    return int(out.split()[0])


def make_disk(tree: Path, out: Path, *, uuid: str, fs_uuid: str, passphrase: str) -> Path:
    """ext4 of the tree (a third more than its size, for the journal and the running system),
    encrypted in place as LUKS2 (16 MiB header) by the VM harness's helper."""
    from tests.vm.conftest import luks_encrypt, make_ext4

    fs_mb = tree_size_mb(tree) * 4 // 3 + 32
    make_ext4(out, tree, label="debroot", uuid=fs_uuid, size_mb=fs_mb + 16, fs_mb=fs_mb)
    return luks_encrypt(out, uuid=uuid, passphrase=passphrase)


LVM_FSTAB = "/dev/mapper/debian--vg-root / ext4 defaults 0 1\n"


def make_lvm_disk(tree: Path, work: Path, *, swap_mb: int = 16) -> Path:
    """Debian's guided encrypted-LVM layout (tests/vm/stack_helpers.py: MBR, /boot ext2 on
    partition 1, LUKS2 on logical partition 5 -> VG ``debian-vg`` -> LVs ``root`` and
    ``swap_1``) with this root in LV ``root``, its fstab naming ``/dev/mapper/debian--vg-root``
    (rewritten in the filesystem image with debugfs: the cached tree is shared)."""
    from tests.vm.conftest import luks_encrypt, make_ext4, sh
    from tests.vm.stack_helpers import DEBIAN_LUKS_UUID, MiB, lvm_pv, mbr_disk

    work.mkdir(parents=True, exist_ok=True)
    root_mb = (tree_size_mb(tree) * 4 // 3 + 32 + 3) // 4 * 4  # whole 4 MiB extents
    root = make_ext4(work / "root.img", tree, label="debroot", size_mb=root_mb, fs_mb=root_mb)
    fstab = work / "fstab"
    fstab.write_text(LVM_FSTAB)
    sh(["debugfs", "-w", "-R", "rm /etc/fstab", str(root)])
    sh(["debugfs", "-w", "-R", f"write {fstab} /etc/fstab", str(root)])
    got = subprocess.run(["debugfs", "-R", "cat /etc/fstab", str(root)], capture_output=True,
                         check=True, text=True).stdout
    if got != LVM_FSTAB:
        raise AssertionError(f"{root}: /etc/fstab is {got!r} after debugfs, not {LVM_FSTAB!r}")
    boot = work / "boot.img"
    with open(boot, "wb") as f:
        f.truncate(8 * MiB)
    sh(["mkfs.ext2", "-q", "-F", "-L", "boot", str(boot)])
    pv_mb = 1 + root_mb + swap_mb + 3  # metadata area, LVs, a free extent
    pv = lvm_pv(work, root, root_mb=root_mb, swap_mb=swap_mb, pv_mb=pv_mb)
    with open(pv, "r+b") as f:
        f.truncate((pv_mb + 16) * MiB)  # room for the LUKS2 header (reduce-device-size 16M)
    luks_encrypt(pv, uuid=DEBIAN_LUKS_UUID)
    disk = mbr_disk(work / "debian-lvm.img", boot, pv)
    for tmp in (root, boot, pv, fstab, work / "swap.img"):
        tmp.unlink()
    return disk


def main() -> None:
    """``python -m tests.vm.debian_root``: build (or find) the cached root, print its path."""
    from tests.conftest import REPO

    tree = build_root(REPO / "build/debian-root")
    print(f"{tree} ({tree_size_mb(tree)} MiB)")


if __name__ == "__main__":
    main()
