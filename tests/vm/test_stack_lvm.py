"""Stacked storage boots (issue 12): the Debian guided encrypted-LVM layout through
cryptboot's own image, LUKS on an LV, a VG that never appears."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.vm.conftest import PASSPHRASE, Machine, Vm, mkinitramfs, write_crypttab
from tests.vm.stack_helpers import DEBIAN_CRYPTTAB, ROOT_LV, debian_lvm_disk, luks_on_lv_disk

pytestmark = pytest.mark.vm

DEBIAN_PROMPT = r"Please enter passphrase for disk vda5_crypt \(/dev/vda5\): "


@pytest.fixture(scope="session")
def debian_disk(vmdir: Path, root_tree: Path) -> Path:
    return debian_lvm_disk(vmdir / "debian", root_tree)


@pytest.fixture(scope="session")
def lvm_image(vmdir: Path, kver: str, pyc_cache: Path) -> Path:
    """cryptboot's image for the Debian layout: its crypttab line, LVM in."""
    crypttab = write_crypttab(vmdir, "debian", DEBIAN_CRYPTTAB)
    return mkinitramfs(vmdir / "cryptboot-lvm.img", kver, "--crypttab", str(crypttab),
                       "--lvm", "--compress", "gzip", cache=pyc_cache)


def test_debian_encrypted_lvm(machine: Machine, lvm_image: Path, debian_disk: Path,
                              vm_cleanup: list[Vm]) -> None:
    """Proof 1: MBR, /boot ext2, LUKS2 -> VG debian-vg -> root + swap_1; one passphrase, the
    VG activates when its PV (the LUKS mapping) appears, the real init runs on the root LV."""
    vm = machine.boot("stack-debian-lvm", lvm_image, [debian_disk],
                      f"root={ROOT_LV} rd.emergency=poweroff")
    vm_cleanup.append(vm)
    assert vm.expect([DEBIAN_PROMPT, "the boot failed"]) == 0, vm.transcript
    vm.type(PASSPHRASE)
    vm.expect(r"lvm: /dev/dm-0: the last PV of VG debian-vg: activated")
    facts = vm.real_init()
    assert facts["pid"] == "1", vm.transcript
    assert facts["root_dm"] == "debian--vg-root", vm.transcript
    assert facts["mappings"] == "debian--vg-root debian--vg-swap_1 vda5_crypt", vm.transcript
    assert vm.transcript.count("Please enter passphrase") == 1, vm.transcript


def test_vg_that_never_appears(machine: Machine, lvm_image: Path, debian_disk: Path,
                               vm_cleanup: list[Vm]) -> None:
    """Proof 7: the root names a VG that is not there; after rd.retry the message names it,
    lists the PVs and LVs that were seen and how long was waited; the failure action runs."""
    vm = machine.boot("stack-vg-missing", lvm_image, [debian_disk],
                      "root=/dev/mapper/nope--vg-root rd.retry=8 rd.shell=0 "
                      "rd.emergency=poweroff")
    vm_cleanup.append(vm)
    assert vm.expect([DEBIAN_PROMPT, "the boot failed"]) == 0, vm.transcript
    vm.type(PASSPHRASE)
    vm.expect(r"device /dev/mapper/nope--vg-root \(LV root of VG nope-vg\) did not appear "
              r"\(waited 8\.\d s")
    vm.expect(r"LVM: PVs seen: /dev/dm-0 \(VG debian-vg \(complete\)\); LVs: debian-vg/root "
              r"\(active\), debian-vg/swap_1 \(active\)")
    vm.expect(r"poweroff in 2 seconds")
    vm.expect(r"reboot: Power down")
    assert "REAL_INIT_REACHED" not in vm.transcript


@pytest.fixture(scope="session")
def lv_luks(vmdir: Path, kver: str, pyc_cache: Path, root_tree: Path) -> tuple[Path, Path]:
    """LUKS on an LV, named from crypttab by its /dev/VG/LV path; the image's LVM support is
    found from that crypttab line (no --lvm)."""
    disk = luks_on_lv_disk(vmdir / "lvluks", root_tree)
    crypttab = write_crypttab(vmdir, "lvluks", "root /dev/vg0/cryptroot none luks\n")
    image = mkinitramfs(vmdir / "cryptboot-lvluks.img", kver, "--crypttab", str(crypttab),
                        "--compress", "gzip", cache=pyc_cache)
    return disk, image


def test_luks_on_lv_from_crypttab(machine: Machine, lv_luks: tuple[Path, Path],
                                  vm_cleanup: list[Vm]) -> None:
    """Proof 4: the PV (the whole disk) activates VG vg0; its LV is the LUKS volume's source."""
    disk, image = lv_luks
    vm = machine.boot("stack-luks-on-lv", image, [disk], "root=/dev/mapper/root "
                      "rd.emergency=poweroff")
    vm_cleanup.append(vm)
    assert vm.expect([r"Please enter passphrase for disk root \(/dev/dm-0\): ",
                      "the boot failed"]) == 0, vm.transcript
    vm.type(PASSPHRASE)
    facts = vm.real_init()
    assert facts["pid"] == "1" and facts["root_dm"] == "root", vm.transcript
    assert facts["mappings"] == "root vg0-cryptroot", vm.transcript
    assert "lvm: /dev/vda: the last PV of VG vg0: activated" in vm.transcript
