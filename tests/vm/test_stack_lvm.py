"""Stacked storage boots (issue 12): the Debian guided encrypted-LVM layout through
cryptboot's own image, LUKS on an LV, a VG that never appears."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.vm.conftest import PASSPHRASE, Machine, Vm, mkinitramfs, write_crypttab
from tests.vm.stack_helpers import DEBIAN_CRYPTTAB, ROOT_LV, debian_lvm_disk

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
