"""btrfs on LUKS (issue 12, proof 5) with the root in subvolume ``@``, and a multi-device
btrfs: one filesystem (RAID1) across two LUKS mappings named in crypttab. The boot waits
until the kernel has both devices (BTRFS_IOC_DEVICES_READY) before it mounts."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.vm.conftest import PASSPHRASE, Machine, Vm, mkinitramfs, write_crypttab
from tests.vm.stack_helpers import BTRFS_LUKS_UUIDS, BTRFS_UUID, btrfs_two_luks

pytestmark = pytest.mark.vm

PROMPT = r"Please enter passphrase for disk (btra|btrb) \(/dev/vd[ab]\): "


@pytest.fixture(scope="session")
def btrfs_image(vmdir: Path, kver: str, pyc_cache: Path) -> Path:
    """Its crypttab names both LUKS volumes; btrfs in from the image's command line
    (rootflags=subvol=)."""
    crypttab = write_crypttab(vmdir, "btrfs", f"btra UUID={BTRFS_LUKS_UUIDS[0]} none luks\n"
                                              f"btrb UUID={BTRFS_LUKS_UUIDS[1]} none luks\n")
    return mkinitramfs(vmdir / "cryptboot-btrfs.img", kver, "--crypttab", str(crypttab),
                       "--cmdline", f"root=UUID={BTRFS_UUID} rootflags=subvol=@",
                       "--compress", "gzip", cache=pyc_cache)


@pytest.fixture(scope="session")
def btrfs_disks(machine: Machine, btrfs_image: Path, vmdir: Path, root_tree: Path
                ) -> tuple[Path, Path]:
    return btrfs_two_luks(machine, btrfs_image, vmdir / "btrfs", root_tree)


def test_btrfs_two_luks_subvol(machine: Machine, btrfs_image: Path,
                               btrfs_disks: tuple[Path, Path], vm_cleanup: list[Vm]) -> None:
    """One passphrase (the second volume takes the cached one), both mappings open, the root
    mounted from subvolume @ of the two-device filesystem."""
    vm = machine.boot("stack-btrfs-raid1", btrfs_image, list(btrfs_disks),
                      f"root=UUID={BTRFS_UUID} rootflags=subvol=@ rd.emergency=poweroff")
    vm_cleanup.append(vm)
    assert vm.expect([PROMPT, "the boot failed"]) == 0, vm.transcript
    vm.type(PASSPHRASE)
    facts = vm.real_init()
    assert facts["pid"] == "1", vm.transcript
    assert facts["mappings"] == "btra btrb", vm.transcript
    assert "subvol=/@" in facts["root_options"], vm.transcript
