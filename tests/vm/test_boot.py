"""Real boots: kernel -> cryptboot initramfs -> prompt -> unlock -> the real init as PID 1."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.vm.conftest import LUKS_UUID, PASSPHRASE, Machine, Vm, luks_args

pytestmark = pytest.mark.vm

PROMPT = r"Please enter passphrase for disk root \(/dev/vda\): "


def test_luks2_root_passphrase_once(machine: Machine, image: Path, luks2_root: Path,
                                    vm_cleanup: list[Vm]) -> None:
    """Scenario 1: one prompt, one passphrase; the real init is PID 1 on /dev/mapper/root."""
    vm = machine.boot("luks2-once", image, [luks2_root],
                      f"root=/dev/mapper/root {luks_args()} rd.emergency=poweroff")
    vm_cleanup.append(vm)
    vm.expect(PROMPT)
    vm.type(PASSPHRASE)
    facts = vm.real_init()
    assert facts["pid"] == "1", vm.transcript
    assert facts["root_dm"] == "root", vm.transcript
    assert facts["mappings"] == "root", vm.transcript
    assert facts["uuids"] == f"CRYPT-LUKS2-{LUKS_UUID.replace('-', '')}-root", vm.transcript
    assert vm.transcript.count("Please enter passphrase") == 1, vm.transcript
