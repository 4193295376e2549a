"""A real boot from an lz4-compressed image (mkinitramfs --compress lz4): the kernel unpacks
it, and the boot reaches the real init as PID 1 on the unlocked root."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.vm.conftest import PASSPHRASE, Machine, Vm, luks_args, mkinitramfs

pytestmark = pytest.mark.vm

LZ4_LEGACY_MAGIC = bytes.fromhex("02214c18")


def test_lz4_image_boots(machine: Machine, vmdir: Path, kver: str, pyc_cache: Path,
                         luks2_root: Path, vm_cleanup: list[Vm]) -> None:
    img = mkinitramfs(vmdir / "cryptboot-lz4.img", kver, "--compress", "lz4",
                      "--crypttab", "none", cache=pyc_cache)
    assert img.read_bytes()[:4] == LZ4_LEGACY_MAGIC
    vm = machine.boot("lz4", img, [luks2_root],
                      f"root=/dev/mapper/root {luks_args()} rd.emergency=poweroff")
    vm_cleanup.append(vm)
    vm.expect(r"Please enter passphrase for disk root \(/dev/vda\): ")
    vm.type(PASSPHRASE)
    facts = vm.real_init()
    assert facts["pid"] == "1", vm.transcript
    assert facts["root_dm"] == "root", vm.transcript
