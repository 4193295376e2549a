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


def test_wrong_twice_then_right(machine: Machine, image: Path, luks2_root: Path,
                                vm_cleanup: list[Vm]) -> None:
    """Scenario 2: two wrong passphrases are counted; the third, right one boots."""
    vm = machine.boot("wrong-twice", image, [luks2_root],
                      f"root=/dev/mapper/root {luks_args()} rd.emergency=poweroff")
    vm_cleanup.append(vm)
    vm.expect(PROMPT)
    vm.type("wrong-1")
    vm.expect(r"wrong passphrase for root \(try 1 of 3\)")
    vm.expect(PROMPT)
    vm.type("wrong-2")
    vm.expect(r"wrong passphrase for root \(try 2 of 3\)")
    vm.expect(PROMPT)
    vm.type(PASSPHRASE)
    facts = vm.real_init()
    assert facts["pid"] == "1"
    assert facts["root_dm"] == "root"


def _three_wrong(vm: Vm) -> None:
    for n in (1, 2, 3):
        vm.expect(PROMPT)
        vm.type(f"wrong-{n}")
        vm.expect(rf"wrong passphrase for root \(try {n} of 3\)")
    vm.expect(r"root: maximum number of tries \(3\) exceeded")


def test_three_wrong_emergency_shell(machine: Machine, image: Path, luks2_root: Path,
                                     vm_cleanup: list[Vm]) -> None:
    """Scenario 3a: three wrong tries, the failure message, then a working emergency shell."""
    vm = machine.boot("three-wrong-shell", image, [luks2_root],
                      f"root=/dev/mapper/root {luks_args()} rd.shell")
    vm_cleanup.append(vm)
    _three_wrong(vm)
    vm.expect(r"could not unlock root")
    vm.expect(r"starting a shell")
    vm.expect(r"cryptboot# ")
    vm.type("echo SHELL_$((6 * 7)) pid=$$ ppid=$PPID")
    vm.expect(r"SHELL_42 pid=\d+ ppid=1")
    assert "REAL_INIT_REACHED" not in vm.transcript


def test_three_wrong_poweroff(machine: Machine, image: Path, luks2_root: Path,
                              vm_cleanup: list[Vm]) -> None:
    """Scenario 3b: with rd.emergency=poweroff the machine powers off after the message."""
    vm = machine.boot("three-wrong-poweroff", image, [luks2_root],
                      f"root=/dev/mapper/root {luks_args()} rd.shell=0 rd.emergency=poweroff")
    vm_cleanup.append(vm)
    _three_wrong(vm)
    vm.expect(r"could not unlock root")
    vm.expect(r"reboot: Power down")  # the kernel's own words: not a reboot, not a panic
    vm.wait_exit(60)
    assert "REAL_INIT_REACHED" not in vm.transcript
    assert "cryptboot# " not in vm.transcript
