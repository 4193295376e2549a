"""Real boots for keys on other disks, device names, several volumes, other formats, missing
devices and several consoles (scenarios 4-9 of the VM tier)."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pexpect
import pytest
from pexpect import fdpexpect

from tests.vm.conftest import (
    FS_UUID,
    LUKS_UUID,
    LUKS_UUID2,
    PASSPHRASE,
    PLAIN_KEY,
    Machine,
    Vm,
    encrypted_copy,
    luks_args,
    luks_encrypt,
    make_ext4,
    plain_encrypt,
    variant_image,
    write_crypttab,
)

pytestmark = pytest.mark.vm

PROMPT_ROOT = r"Please enter passphrase for disk root \(/dev/vda\): "


# -- 4. keyfile on a second disk found by LABEL ----------------------------------------------


def unlock_root(vm: Vm) -> dict[str, str]:
    """Answer the root's prompt with the right passphrase; the real init must then run as PID 1
    on /dev/mapper/root. Returns the real init's facts."""
    vm.expect(PROMPT_ROOT)
    vm.type(PASSPHRASE)
    facts = vm.real_init()
    assert facts["pid"] == "1" and facts["root_dm"] == "root"
    # device-mapper's coldplug rules need the mapping's udev entry in the real system
    assert facts["udev_db"] == "kept"
    return facts


@pytest.fixture(scope="module")
def keyfile_image(vmdir: Path, kver: str, pyc_cache: Path) -> Path:
    tab = write_crypttab(vmdir, "keyfile",
                         f"root UUID={LUKS_UUID} /keyfile:LABEL=keys luks,keyfile-timeout=5s\n")
    return variant_image(vmdir, kver, pyc_cache, "keyfile", "--crypttab", str(tab))


def test_keyfile_on_labelled_disk_no_prompt(machine: Machine, keyfile_image: Path,
                                            keyed_root: Path, keys_disk: Path,
                                            vm_cleanup: list[Vm]) -> None:
    vm = machine.boot("keyfile-disk", keyfile_image, [keyed_root, keys_disk],
                      "root=/dev/mapper/root rd.emergency=poweroff rd.shell=0")
    vm_cleanup.append(vm)
    facts = vm.real_init()
    assert facts["pid"] == "1" and facts["root_dm"] == "root"
    assert "Please enter passphrase" not in vm.transcript, vm.transcript


def test_keyfile_disk_absent_prompts_after_timeout(machine: Machine, keyfile_image: Path,
                                                   keyed_root: Path,
                                                   vm_cleanup: list[Vm]) -> None:
    vm = machine.boot("keyfile-disk-absent", keyfile_image, [keyed_root],
                      "root=/dev/mapper/root rd.emergency=poweroff rd.shell=0")
    vm_cleanup.append(vm)
    vm.expect(r"waiting for devices")
    t0 = time.monotonic()
    vm.expect(PROMPT_ROOT)
    waited = time.monotonic() - t0
    assert waited >= 4.0, f"prompt after {waited:.1f} s, before keyfile-timeout=5s"
    assert "LABEL=keys" in vm.transcript, vm.transcript
    vm.type(PASSPHRASE)
    facts = vm.real_init()
    assert facts["pid"] == "1" and facts["root_dm"] == "root"


# -- 5. root by UUID, by LABEL, and through crypttab only ------------------------------------


@pytest.mark.parametrize(("root", "mount_args"), [
    (f"UUID={FS_UUID}", ""),                          # read-only, the default
    ("LABEL=realroot", "rw rootflags=noatime,commit=7"),  # fsck, then mount(2) flags and data
])
def test_root_by_uuid_and_label(machine: Machine, image: Path, luks2_root: Path, root: str,
                                mount_args: str, vm_cleanup: list[Vm]) -> None:
    vm = machine.boot(f"root-{root.split('=')[0].lower()}", image, [luks2_root],
                      f"root={root} {luks_args()} {mount_args} rd.emergency=poweroff rd.shell=0")
    vm_cleanup.append(vm)
    opts = unlock_root(vm)["root_options"].split(",")
    if mount_args:
        assert opts[0] == "rw" and "noatime" in opts and "commit=7" in opts, opts
    else:
        assert opts[0] == "ro", opts


@pytest.fixture(scope="module")
def crypttab_image(vmdir: Path, kver: str, pyc_cache: Path) -> Path:
    tab = write_crypttab(vmdir, "plain-entry", f"root UUID={LUKS_UUID} none luks\n")
    return variant_image(vmdir, kver, pyc_cache, "crypttab", "--crypttab", str(tab))


def test_root_through_crypttab_only(machine: Machine, crypttab_image: Path, luks2_root: Path,
                                    vm_cleanup: list[Vm]) -> None:
    vm = machine.boot("crypttab-only", crypttab_image, [luks2_root],
                      "root=/dev/mapper/root rd.emergency=poweroff rd.shell=0")
    vm_cleanup.append(vm)
    unlock_root(vm)


# -- 6. two volumes sharing a passphrase -----------------------------------------------------


def test_two_volumes_one_passphrase(machine: Machine, image: Path, luks2_root: Path,
                                    second_volume: Path, vm_cleanup: list[Vm]) -> None:
    vm = machine.boot("two-volumes", image, [luks2_root, second_volume],
                      f"root=/dev/mapper/root {luks_args()} {luks_args(LUKS_UUID2, 'data')} "
                      "rd.emergency=poweroff rd.shell=0")
    vm_cleanup.append(vm)
    vm.expect(r"Please enter passphrase for disk \w+ \(/dev/vd[ab]\): ")
    vm.type(PASSPHRASE)
    facts = vm.real_init()
    assert facts["root_dm"] == "root"
    assert facts["mappings"] == "data root", vm.transcript
    assert vm.transcript.count("Please enter passphrase") == 1, vm.transcript


# -- 7. LUKS1, argon2id, plain dm-crypt, detached header -------------------------------------


@pytest.mark.parametrize("kind", ["luks1", "argon2id"])
def test_luks1_and_argon2id(machine: Machine, image: Path, plain_root: Path, vmdir: Path,
                            kind: str, vm_cleanup: list[Vm]) -> None:
    disk = vmdir / f"root-{kind}.img"
    if not disk.exists():
        if kind == "luks1":
            encrypted_copy(plain_root, disk, uuid=LUKS_UUID, luks_type="luks1")
        else:
            encrypted_copy(plain_root, disk, uuid=LUKS_UUID, pbkdf="argon2id")
    vm = machine.boot(f"root-{kind}", image, [disk],
                      f"root=/dev/mapper/root {luks_args()} rd.emergency=poweroff rd.shell=0")
    vm_cleanup.append(vm)
    facts = unlock_root(vm)
    want = "CRYPT-LUKS1-" if kind == "luks1" else "CRYPT-LUKS2-"
    assert facts["uuids"].startswith(want + LUKS_UUID.replace("-", "")), facts


# -- 8. a device that never appears ----------------------------------------------------------


def test_device_never_appears(machine: Machine, image: Path, luks2_root: Path,
                              vm_cleanup: list[Vm]) -> None:
    missing = "5e1f0000-dead-4bbb-8ccc-00000000beef"
    vm = machine.boot("device-missing", image, [luks2_root],
                      f"root=/dev/mapper/root {luks_args(missing)} rd.retry=5 rd.shell")
    vm_cleanup.append(vm)
    vm.expect(rf"device UUID={missing} did not appear \(waited [0-9.]+ s")
    vm.expect(r"block devices seen:")
    vm.expect(r"/dev/vda")
    vm.expect(r"cryptboot# ")
    vm.type("echo SHELL_$((6 * 7))")
    vm.expect(r"SHELL_42")
    assert "REAL_INIT_REACHED" not in vm.transcript


# -- 9. two serial consoles --------------------------------------------------------------------


def test_prompt_on_two_consoles_answered_on_second(machine: Machine, image: Path,
                                                   luks2_root: Path,
                                                   vm_cleanup: list[Vm]) -> None:
    vm = machine.boot("two-consoles", image, [luks2_root],
                      f"root=/dev/mapper/root {luks_args()} console=ttyS1 "
                      "rd.emergency=poweroff rd.shell=0", extra=["-serial", "pty"])
    vm_cleanup.append(vm)
    vm.expect(r"char device redirected to (/dev/pts/\d+) \(label serial1\)", 30)
    pts = vm.child.match.group(1).decode()
    fd = os.open(pts, os.O_RDWR | os.O_NOCTTY)
    second = fdpexpect.fdspawn(fd, timeout=120)
    log2 = machine.logdir / "two-consoles-ttyS1.log"
    second.logfile_read = open(log2, "wb")  # noqa: SIM115
    try:
        vm.expect(PROMPT_ROOT)  # ttyS0
        try:
            second.expect(PROMPT_ROOT)
        except (pexpect.TIMEOUT, pexpect.EOF):
            raise vm.fail(f"no prompt on ttyS1; its log: "
                          f"{log2.read_text(errors='replace')}") from None
        time.sleep(0.5)
        second.send(PASSPHRASE + "\r")
        facts = vm.real_init()
        assert facts["pid"] == "1" and facts["root_dm"] == "root"
    finally:
        second.logfile_read.close()
        try:
            second.close()
        except OSError:
            pass


@pytest.fixture(scope="module")
def plain_image(vmdir: Path, kver: str, pyc_cache: Path) -> Path:
    key = vmdir / "plain.key"
    key.write_bytes(PLAIN_KEY)
    tab = write_crypttab(vmdir, "plain",
                         "root /dev/vda /etc/keys/plain.key "
                         "plain,cipher=aes-xts-plain64,size=512\n")
    return variant_image(vmdir, kver, pyc_cache, "plain", "--crypttab", str(tab),
                         "--keyfile", f"{key}:/etc/keys/plain.key")


def test_plain_dm_crypt_with_keyfile_in_image(machine: Machine, plain_image: Path,
                                              plain_root: Path, vmdir: Path,
                                              vm_cleanup: list[Vm]) -> None:
    assert plain_image.stat().st_mode & 0o077 == 0  # it holds a key: 0600
    disk = plain_encrypt(plain_root, vmdir / "root-plain.img", PLAIN_KEY)
    vm = machine.boot("root-plain", plain_image, [disk],
                      "root=/dev/mapper/root rd.emergency=poweroff rd.shell=0")
    vm_cleanup.append(vm)
    facts = vm.real_init()
    assert facts["pid"] == "1" and facts["root_dm"] == "root"
    assert facts["uuids"].startswith("CRYPT-PLAIN-"), facts
    assert "Please enter passphrase" not in vm.transcript


@pytest.fixture(scope="module")
def header_disks(vmdir: Path, plain_root: Path) -> tuple[Path, Path]:
    """Data encrypted with a detached LUKS2 header, and a disk labelled hdrdisk holding it."""
    data = vmdir / "root-detached.img"
    shutil.copyfile(plain_root, data)
    tree = vmdir / "hdrtree"
    tree.mkdir(exist_ok=True)
    hdr = tree / "root.hdr"
    with open(hdr, "wb") as f:
        f.truncate(16 << 20)
    luks_encrypt(data, uuid=LUKS_UUID, header=hdr)
    return data, make_ext4(vmdir / "hdrdisk.img", tree, label="hdrdisk", size_mb=40, fs_mb=40)


@pytest.fixture(scope="module")
def header_image(vmdir: Path, kver: str, pyc_cache: Path) -> Path:
    tab = write_crypttab(vmdir, "header",
                         "root /dev/vda none luks,header=/root.hdr:LABEL=hdrdisk\n")
    return variant_image(vmdir, kver, pyc_cache, "header", "--crypttab", str(tab))


def test_detached_header_on_another_disk(machine: Machine, header_image: Path,
                                         header_disks: tuple[Path, Path],
                                         vm_cleanup: list[Vm]) -> None:
    data, hdrdisk = header_disks
    vm = machine.boot("root-detached-header", header_image, [data, hdrdisk],
                      "root=/dev/mapper/root rd.emergency=poweroff rd.shell=0")
    vm_cleanup.append(vm)
    facts = unlock_root(vm)
    assert facts["uuids"].startswith("CRYPT-LUKS2-" + LUKS_UUID.replace("-", "")), facts


# -- build-time command-line defaults (mkinitramfs --cmdline) --------------------------------


@pytest.fixture(scope="module")
def defaults_image(vmdir: Path, kver: str, pyc_cache: Path) -> Path:
    return variant_image(vmdir, kver, pyc_cache, "cmdline", "--crypttab", "none", "--cmdline",
                         f"root=/dev/mapper/root {luks_args()} rd.shell=0 rd.emergency=halt")


def test_cmdline_defaults_from_the_image(machine: Machine, defaults_image: Path,
                                         luks2_root: Path, vm_cleanup: list[Vm]) -> None:
    """The kernel command line names no volume and no root: the image's defaults do."""
    vm = machine.boot("cmdline-defaults", defaults_image, [luks2_root],
                      "rd.emergency=poweroff")
    vm_cleanup.append(vm)
    unlock_root(vm)
