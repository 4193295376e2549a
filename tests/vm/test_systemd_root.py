"""A real Debian 12 with systemd boots through cryptboot, and shuts down cleanly.

The root is Debian's own (``mmdebstrap --variant=minbase --include=systemd-sysv,udev,kmod,
iproute2 bookworm``, cached under build/, see tests/vm/debian_root.py) on LUKS2, with
``/dev/mapper/root`` in its fstab (fsck pass 1). Its report unit prints what systemd made of
the boot (``SDREPORT ...`` lines) and powers off.

1. Through ``cryptboot mkinitramfs --crypttab none --shutdown`` with ``rd.luks.uuid=`` /
   ``rd.luks.name=``: state ``running``, no failed unit, ``systemd-fsck-root`` succeeded, the
   root read-write after the remount, ``dev-mapper-root.device`` active, no job or device left
   waiting, ``systemd-analyze`` with an "(initrd)" figure (cryptboot's hand-off passed the
   timestamp). At power-off systemd-shutdown pivots into ``/run/initramfs``; from there on the
   transcript shows the old root unmounted, the mapping closed, no device-mapper device left,
   and ``reboot: Power down``. (systemd 252 logs "Not all DM devices detached, 1 left" before
   it pivots, since the root's mapping cannot be closed while it is the root: the assertion is
   on what follows the pivot.)
2. The same disk booted again: ``systemd-fsck-root`` found the filesystem clean (no journal
   recovery).
3. The same root through the dracut module and through the initramfs-tools hooks.
4. Debian's guided encrypted-LVM layout (LUKS2 on vda5 -> VG debian-vg -> LVs root, swap_1,
   made with tests/vm/stack_helpers.py) with this root in LV root, through cryptboot's image
   with the crypttab line, LVM and the shutdown initramfs: the same checks as boot 1 on
   ``/dev/mapper/debian--vg-root``; at power-off the LVs on the LUKS PV are removed (their
   dm devices: no LVM metadata written), then the LUKS mapping is closed.
5. The root on LUKS2 on an md RAID1 with the shutdown initramfs: at power-off the mapping is
   closed, then the array is stopped.

Every boot must end with state ``running`` and no failed unit. The root carries autofs4
(tests/vm/debian_root.py ROOT_MODULES): without it, the dracut boot failed
``proc-sys-fs-binfmt_misc.automount`` (dracut leaves /dev/autofs, systemd could not load the
module from a root without modules), which a real install with its modules does not.

Shared: the Debian tree (cached under build/), its LUKS2 disk and LVM disk, cryptboot's images
(session fixtures); the dracut and initramfs-tools images are built by the one test using each.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pexpect
import pytest

from tests.conftest import REPO
from tests.vm.conftest import (
    BOOT_TIMEOUT,
    FS_UUID,
    LUKS_UUID,
    PASSPHRASE,
    Machine,
    Vm,
    luks_args,
    mkinitramfs,
)
from tests.vm.debian_root import ArchiveUnreachable, build_root, make_disk
from tests.vm.hooks_helpers import PROMPT, assert_cryptboot_opened, make_install
from tests.vm.test_stack_md import md_image  # noqa: F401  (a fixture: the md helper's base)

pytestmark = pytest.mark.vm

# systemd needs more time than the busybox root: at least 10 minutes under a loaded host
TIMEOUT = max(BOOT_TIMEOUT, 600)
PIVOT = "Returning to initrd..."  # systemd-shutdown, after the pivot into /run/initramfs


SPAN = r"(?:\d+min )?[0-9.]+m?s"  # a systemd timespan: "812ms", "3.059s", "1min 7.6s"


def seconds(span: str) -> float:
    return sum(float(n) * {"min": 60.0, "s": 1.0, "ms": 0.001}[u]
               for n, u in re.findall(r"([0-9.]+)(min|ms|s)", span))


@dataclass
class Report:
    """The report unit's ``SDREPORT`` lines, parsed."""

    text: str

    def one(self, pattern: str) -> str:
        m = re.search(r"SDREPORT " + pattern, self.text)
        assert m, f"no SDREPORT {pattern!r} in the report:\n{self.text}"
        return m.group(1)

    def all(self, what: str) -> list[str]:
        return re.findall(rf"SDREPORT {what} ([^\r\n]*)", self.text)

    @property
    def failed(self) -> list[str]:
        return [line.split()[0] for line in self.all("failed") if line.split()]


def report_of(vm: Vm) -> Report:
    vm.expect(r"SDREPORT state=")
    vm.expect("SDREPORT_DONE")
    return Report("SDREPORT state=" + vm.child.before.decode(errors="replace"))


def assert_systemd_booted(report: Report, console: str, *, root_dm: str = "root",
                          root_unit: str = "dev-mapper-root.device") -> None:
    state = report.one(r"state=(\S+)")
    # no unit may fail: the root carries autofs4 (debian_root.ROOT_MODULES), without which a
    # dracut boot failed proc-sys-fs-binfmt_misc.automount
    assert report.failed == [], f"failed units {report.failed}:\n{console[-8000:]}"
    assert state == "running", report.text
    assert report.one(r"fsck result=(\S+)") == "success", report.text
    assert report.one(r"fsck result=\S+ active=\S+ status=(\S+)") == "0", report.text
    assert report.one(r"rootdm (\S+)") == root_dm, report.text
    assert report.one(r"root source=\S+ options=(\S+)").split(",")[0] == "rw", report.text
    assert report.one(r"rootdev \S+ (\S+)") == root_unit, report.text
    assert report.one(r"rootdev (\S+)") == "active", report.text
    assert report.all("job") == [], report.text
    assert report.all("waiting") == [], report.text
    assert report.all("fsckout"), report.text  # systemd-fsck-root ran fsck
    assert re.search(r"SDREPORT analyze Startup finished in .*\(userspace\)", report.text)


def type_passphrase(vm: Vm) -> None:
    vm.expect(PROMPT)
    vm.type(PASSPHRASE)


def boot_writable(machine: Machine, name: str, initrd: Path, disk: Path, append: str) -> Vm:
    """Like :meth:`Machine.boot`, but the disk keeps what the guest writes (two boots in a
    row see the same filesystem)."""
    argv = [a.replace(",snapshot=on", "") for a in machine.argv(initrd, [disk], append)]
    log = machine.logdir / f"{name}.log"
    child = pexpect.spawn(argv[0], argv[1:], timeout=TIMEOUT, maxread=65536,
                          searchwindowsize=None)
    child.logfile_read = open(log, "wb")  # noqa: SIM115 (closed with the child)
    return Vm(child, time.monotonic() + TIMEOUT, log)


# ---------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="session")
def debian_tree() -> Path:
    try:
        return build_root(REPO / "build/debian-root")
    except ArchiveUnreachable as e:
        pytest.skip(f"Debian's archive cannot be reached, no Debian root: {e}")


@pytest.fixture(scope="session")
def debian_disk(vmdir: Path, debian_tree: Path) -> Path:
    """The Debian root on LUKS2 (written by the cryptboot boots, read-only for the rest)."""
    return make_disk(debian_tree, vmdir / "debian-root.img", uuid=LUKS_UUID, fs_uuid=FS_UUID,
                     passphrase=PASSPHRASE)


@pytest.fixture(scope="session")
def shutdown_image(vmdir: Path, kver: str, pyc_cache: Path) -> Path:
    return mkinitramfs(vmdir / "cryptboot-shutdown.img", kver, "--crypttab", "none",
                       "--shutdown", cache=pyc_cache)


APPEND = f"root=/dev/mapper/root ro {luks_args()}"


@pytest.fixture(scope="module")
def first_boot(machine: Machine, shutdown_image: Path, debian_disk: Path) -> tuple[str, Report]:
    """Boot 1 through cryptboot (with the shutdown initramfs), to the power-off."""
    vm = boot_writable(machine, "systemd-cryptboot", shutdown_image, debian_disk, APPEND)
    try:
        type_passphrase(vm)
        report = report_of(vm)
        vm.expect("reboot: Power down", 300)
        vm.wait_exit()
        return vm.transcript, report
    finally:
        vm.close()


# ---------------------------------------------------------------------------------------------
# Tests


def test_cryptboot_boots_debian_systemd(first_boot: tuple[str, Report]) -> None:
    console, report = first_boot
    assert_systemd_booted(report, console)
    assert_cryptboot_opened(console, "root")
    assert "/sbin/init is systemd: handing it the initramfs start" in console, console[-8000:]
    m = re.search(rf"Startup finished in ({SPAN}) \(kernel\) \+ ({SPAN}) \(initrd\)",
                  report.text)
    assert m, f"no (initrd) figure in systemd-analyze:\n{report.text}"
    kernel, initrd = seconds(m.group(1)), seconds(m.group(2))
    assert initrd > 0, report.text
    # the kernel's part ends where the kernel ran /init: before cryptboot's own first step
    m = re.search(r"\[\s*([0-9.]+)\] cryptboot: mount API filesystems", console)
    assert m and kernel <= float(m.group(1)), console[-8000:]


def test_shutdown_initramfs_closes_the_root(first_boot: tuple[str, Report]) -> None:
    console, report = first_boot
    assert "prepare the shutdown initramfs" in console
    assert int(report.one(r"initramfs (\d+) KiB")) > 0, report.text
    assert PIVOT in console, console[-8000:]
    after = console[console.index(PIVOT):]
    for line in ("cryptboot-shutdown: running for 'poweroff'",
                 "cryptboot-shutdown: unmounted the old root",
                 "cryptboot-shutdown: closed root",
                 "cryptboot-shutdown: no device-mapper devices left",
                 "reboot: Power down"):
        assert line in after, f"{line!r} not in the power-off transcript:\n{after}"
    assert after.index("closed root") < after.index("reboot: Power down")
    assert "Not all DM devices detached" not in after, after
    assert "could not" not in after and "Failed to finalize" not in after, after


def test_filesystem_clean_at_the_next_boot(first_boot: tuple[str, Report], machine: Machine,
                                           image: Path, debian_disk: Path) -> None:
    vm = boot_writable(machine, "systemd-cryptboot-again", image, debian_disk, APPEND)
    try:
        type_passphrase(vm)
        report = report_of(vm)
        vm.expect("reboot: Power down", 300)
    finally:
        vm.close()
    fsck = "\n".join(report.all("fsckout"))
    assert re.search(r": clean, \d+/\d+ files", fsck), report.text
    assert "recovering journal" not in fsck and "was not cleanly unmounted" not in fsck, fsck
    assert_systemd_booted(report, vm.transcript)


# ---------------------------------------------------------------------------------------------
# The same root through the dracut module and the initramfs-tools hooks


HOOK_CRYPTTAB = f"root UUID={LUKS_UUID} none luks,{{flag}}\n"


def test_dracut_module_boots_debian_systemd(machine: Machine, kver: str, debian_disk: Path,
                                            tmp_path_factory: pytest.TempPathFactory) -> None:
    from tests.vm.hooks_helpers import CRYPTBOOT, dracut_base

    work = tmp_path_factory.mktemp("systemd-dracut")
    tab = work / "crypttab"
    tab.write_text(HOOK_CRYPTTAB.format(flag="force"))
    image = work / "dracut.img"
    env = dict(os.environ, dracutbasedir=str(dracut_base(work)), CRYPTBOOT=CRYPTBOOT,
               CRYPTBOOT_CRYPTTAB=str(tab))
    subprocess.run(["dracut", "-q", "--no-hostonly", "--kver", kver, "--add", "cryptboot",
                    "--omit", "crypt systemd systemd-initrd dracut-systemd", "-f", str(image)],
                   env=env, check=True, capture_output=True)
    vm = machine.boot("systemd-dracut", image, [debian_disk],
                      "root=/dev/mapper/root ro rd.shell=0 rd.emergency=poweroff rd.retry=60",
                      timeout=TIMEOUT)
    try:
        type_passphrase(vm)
        report = report_of(vm)
        vm.expect("reboot: Power down", 300)
    finally:
        vm.close()
    assert_cryptboot_opened(vm.transcript, "root")
    assert_systemd_booted(report, vm.transcript)
    # dracut leaves /dev/autofs (a static node from modules.devname); systemd opened it and
    # autofs4 came from the root's modules, so the binfmt_misc automount did not fail
    assert "autofs4" in report.one(r"modules ([^\r\n]*)").split(), report.text


def test_initramfs_tools_hooks_boot_debian_systemd(machine: Machine, kver: str,
                                                   debian_disk: Path,
                                                   tmp_path_factory: pytest.TempPathFactory
                                                   ) -> None:

    from tests.vm.hooks_helpers import CRYPTBOOT, itools_confdir

    work = tmp_path_factory.mktemp("systemd-itools")
    conf = itools_confdir(make_install(work / "destdir"), work / "initramfs-tools")
    tab = work / "crypttab"
    tab.write_text(HOOK_CRYPTTAB.format(flag="initramfs"))
    image = work / "itools.img"
    subprocess.run(["mkinitramfs", "-d", str(conf), "-o", str(image), kver],
                   env=dict(os.environ, CRYPTBOOT=CRYPTBOOT, CRYPTBOOT_CRYPTTAB=str(tab)),
                   check=True, capture_output=True)
    vm = machine.boot("systemd-itools", image, [debian_disk], "root=/dev/mapper/root ro",
                      timeout=TIMEOUT)
    try:
        type_passphrase(vm)
        report = report_of(vm)
        vm.expect("reboot: Power down", 300)
    finally:
        vm.close()
    assert_cryptboot_opened(vm.transcript, "root")
    assert_systemd_booted(report, vm.transcript)


# ---------------------------------------------------------------------------------------------
# Debian's default encrypted install: LVM on LUKS


@pytest.fixture(scope="session")
def debian_lvm_disk(vmdir: Path, debian_tree: Path) -> Path:
    from tests.vm.debian_root import make_lvm_disk

    return make_lvm_disk(debian_tree, vmdir / "debian-lvm")


def test_cryptboot_boots_debian_systemd_on_lvm(machine: Machine, kver: str, pyc_cache: Path,
                                               vmdir: Path, debian_lvm_disk: Path) -> None:
    """The guided "encrypted LVM" layout (LUKS2 on vda5 -> VG debian-vg -> root, swap_1) with
    the real Debian root in LV root: one passphrase, the VG activated, systemd up on
    /dev/mapper/debian--vg-root with the same checks as the plain boot."""
    from tests.vm.conftest import write_crypttab
    from tests.vm.stack_helpers import DEBIAN_CRYPTTAB, ROOT_LV

    crypttab = write_crypttab(vmdir, "systemd-debian-lvm", DEBIAN_CRYPTTAB)
    image = mkinitramfs(vmdir / "cryptboot-systemd-lvm.img", kver, "--crypttab", str(crypttab),
                        "--lvm", "--shutdown", cache=pyc_cache)
    vm = machine.boot("systemd-cryptboot-lvm", image, [debian_lvm_disk],
                      f"root={ROOT_LV} ro rd.shell=0 rd.emergency=poweroff", timeout=TIMEOUT)
    try:
        type_passphrase(vm)
        vm.expect(r"lvm: /dev/dm-0: the last PV of VG debian-vg: activated")
        report = report_of(vm)
        vm.expect("reboot: Power down", 300)
    finally:
        vm.close()
    assert_cryptboot_opened(vm.transcript, "vda5_crypt")
    assert vm.transcript.count("Please enter passphrase") == 1, vm.transcript
    assert_systemd_booted(report, vm.transcript, root_dm="debian--vg-root",
                          root_unit=r"dev-mapper-debian\x2d\x2dvg\x2droot.device")
    assert re.search(r"Startup finished in .* \(initrd\)", report.text), report.text
    # at power-off the shutdown initramfs deactivates the LVs on the LUKS PV, then closes it
    after = vm.transcript[vm.transcript.index(PIVOT):]
    for line in ("cryptboot-shutdown: unmounted the old root",
                 "cryptboot-shutdown: closed vda5_crypt",
                 "cryptboot-shutdown: no device-mapper devices left", "reboot: Power down"):
        assert line in after, f"{line!r} not in the power-off transcript:\n{after}"
    assert "cryptboot-shutdown: closed debian--vg-root" in after, after  # the root LV, busy before
    assert after.index("closed vda5_crypt") < after.index("reboot: Power down")
    assert "could not" not in after, after


MD_LUKS_UUID = "5e1f0000-aaaa-4bbb-8ccc-0000000000d2"


def test_debian_systemd_on_md_raid1_stops_the_array_at_shutdown(
        machine: Machine, kver: str, pyc_cache: Path, vmdir: Path, debian_tree: Path,
        md_image: Path) -> None:  # noqa: F811  (the fixture imported above)
    """The Debian root on LUKS2 on an md RAID1 (two disks, metadata 1.2), through cryptboot's
    image with md and the shutdown initramfs: systemd up as on the plain disk; at power-off the
    LUKS mapping is closed, then the array nothing holds any more is stopped."""
    from tests.vm.stack_helpers import MiB, md_raid1

    work = vmdir / "debian-md"
    work.mkdir(exist_ok=True)
    payload = make_disk(debian_tree, work / "luks.img", uuid=MD_LUKS_UUID, fs_uuid=FS_UUID,
                        passphrase=PASSPHRASE)
    a, b, _uuid = md_raid1(machine, md_image, work, payload,
                           member_mb=payload.stat().st_size // MiB + 8)
    payload.unlink()
    image = mkinitramfs(vmdir / "cryptboot-systemd-md.img", kver, "--crypttab", "none", "--md",
                        "--shutdown", cache=pyc_cache)
    u = MD_LUKS_UUID
    vm = machine.boot("systemd-cryptboot-md", image, [a, b],
                      f"root=/dev/mapper/root ro rd.luks.uuid={u} rd.luks.name={u}=root "
                      "rd.shell=0 rd.emergency=poweroff", timeout=TIMEOUT)
    try:
        vm.expect(r"Please enter passphrase for disk root \(/dev/md\S+\): ")
        vm.type(PASSPHRASE)
        report = report_of(vm)
        vm.expect("reboot: Power down", 300)
    finally:
        vm.close()
    assert_systemd_booted(report, vm.transcript)
    after = vm.transcript[vm.transcript.index(PIVOT):]
    for line in ("cryptboot-shutdown: unmounted the old root", "cryptboot-shutdown: closed root",
                 "cryptboot-shutdown: no device-mapper devices left", "reboot: Power down"):
        assert line in after, f"{line!r} not in the power-off transcript:\n{after}"
    m = re.search(r"cryptboot-shutdown: stopped (md\d+)", after)
    assert m, after
    assert after.index("closed root") < m.start() < after.index("reboot: Power down")
    assert "could not" not in after, after
