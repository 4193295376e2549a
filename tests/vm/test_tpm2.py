"""TPM2 tokens in real boots: swtpm + QEMU tpm-tis, disks enrolled by systemd-cryptenroll.

Proof 1: a TPM2-enrolled root boots with no prompt; the same kind of disk sealed to a PCR value
the boot does not have gets the reason line, then the prompt, and the passphrase boots it.
Proof 2: TPM2 + PIN: the PIN prompt, a wrong PIN counts as a try, the right PIN boots.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.vm.conftest import (
    PASSPHRASE,
    Machine,
    Vm,
    encrypted_copy,
    luks_args,
    variant_image,
)
from tests.vm.tpm2_helpers import PCR, GuestTpm, HostTpm, tpm2_missing

pytestmark = [pytest.mark.vm,
              pytest.mark.skipif(tpm2_missing() is not None, reason=str(tpm2_missing()))]

PROMPT = r"Please enter passphrase for disk root \(/dev/vda\): "
PIN = "4711"
ARGS = f"root=/dev/mapper/root {luks_args()} rd.emergency=poweroff"


class Enrolled:
    def __init__(self, disk: Path, state: Path) -> None:
        self.disk = disk
        self.state = state


def _enrolled(vmdir: Path, plain_root: Path, name: str, *, extend: bool = False,
              pin: str | None = None) -> Enrolled:
    from tests.vm.conftest import LUKS_UUID

    disk = encrypted_copy(plain_root, vmdir / f"root-tpm2-{name}.img", uuid=LUKS_UUID)
    state = vmdir / f"tpm2-state-{name}"
    tpm = HostTpm(state)
    try:
        if extend:
            tpm.extend()
        tpm.enroll(disk, PASSPHRASE, PCR, pin)
    finally:
        tpm.close()
    return Enrolled(disk, state)


@pytest.fixture(scope="session")
def tpm2_image(vmdir: Path, kver: str, pyc_cache: Path) -> Path:
    return variant_image(vmdir, kver, pyc_cache, "tpm2", "--crypttab", "none",
                         "--token", "tpm2")


@pytest.fixture(scope="session")
def tpm2_disk(vmdir: Path, plain_root: Path) -> Enrolled:
    return _enrolled(vmdir, plain_root, "pcr")


@pytest.fixture(scope="session")
def tpm2_pin_disk(vmdir: Path, plain_root: Path) -> Enrolled:
    return _enrolled(vmdir, plain_root, "pin", pin=PIN)


@pytest.fixture(scope="session")
def tpm2_other_pcr_disk(vmdir: Path, plain_root: Path) -> Enrolled:
    return _enrolled(vmdir, plain_root, "extended", extend=True)


@pytest.fixture
def guest_tpms(vmdir: Path) -> Iterator[list[GuestTpm]]:
    tpms: list[GuestTpm] = []
    yield tpms
    for t in tpms:
        t.close()


def _boot(machine: Machine, name: str, image: Path, e: Enrolled, vmdir: Path,
          tpms: list[GuestTpm], vms: list[Vm], args: str = ARGS) -> Vm:
    tpm = GuestTpm(e.state, vmdir / f"tpm2-run-{name}")
    tpms.append(tpm)
    vm = machine.boot(name, image, [e.disk], args, extra=tpm.qemu_args())
    vms.append(vm)
    return vm


def test_tpm2_root_boots_without_prompt(machine: Machine, tpm2_image: Path, tpm2_disk: Enrolled,
                                        vmdir: Path, guest_tpms: list[GuestTpm],
                                        vm_cleanup: list[Vm]) -> None:
    vm = _boot(machine, "tpm2-nopin", tpm2_image, tpm2_disk, vmdir, guest_tpms, vm_cleanup)
    facts = vm.real_init()
    assert facts["pid"] == "1" and facts["root_dm"] == "root", vm.transcript
    # nothing was typed: the prompt shown at once was withdrawn on the console by the token
    assert "(root unlocked with the TPM2 token 0)" in vm.transcript, vm.transcript
    assert "root: unlocked with the TPM2 token 0" in vm.transcript


def test_tpm2_pcr_mismatch_then_passphrase(machine: Machine, tpm2_image: Path,
                                           tpm2_other_pcr_disk: Enrolled, vmdir: Path,
                                           guest_tpms: list[GuestTpm],
                                           vm_cleanup: list[Vm]) -> None:
    vm = _boot(machine, "tpm2-mismatch", tpm2_image, tpm2_other_pcr_disk, vmdir, guest_tpms,
               vm_cleanup)
    vm.expect(PROMPT)
    vm.expect(rf"root: TPM2 policy does not match \(PCR {PCR} changed\?\)")
    vm.type(PASSPHRASE)
    facts = vm.real_init()
    assert facts["pid"] == "1" and facts["root_dm"] == "root", vm.transcript
    assert "unlocked with the TPM2" not in vm.transcript


def test_tpm2_pin_wrong_then_right(machine: Machine, tpm2_image: Path, tpm2_pin_disk: Enrolled,
                                   vmdir: Path, guest_tpms: list[GuestTpm],
                                   vm_cleanup: list[Vm]) -> None:
    vm = _boot(machine, "tpm2-pin", tpm2_image, tpm2_pin_disk, vmdir, guest_tpms, vm_cleanup)
    pin_prompt = r"Please enter TPM2 PIN for disk root \(/dev/vda\) \(empty: the passphrase\): "
    vm.expect(pin_prompt)
    vm.type("1234")
    vm.expect(r"wrong TPM2 PIN for root \(try 1 of 3\)")
    vm.expect(pin_prompt)
    vm.type(PIN)
    facts = vm.real_init()
    assert facts["pid"] == "1" and facts["root_dm"] == "root", vm.transcript
    assert "root: unlocked with the TPM2 token 0 and its PIN" in vm.transcript


def test_tpm2_token_without_a_tpm_says_so_and_asks(machine: Machine, tpm2_image: Path,
                                                   tpm2_disk: Enrolled, vm_cleanup: list[Vm]
                                                   ) -> None:
    """A TPM2-enrolled root on a machine with no TPM (no tpm-tis device: nothing ever makes
    /dev/tpmrm0): the prompt at once, then after token-timeout= (given as rd.luks.options=) the
    line saying that no TPM appeared, and the passphrase boots it."""
    vm = machine.boot("tpm2-none", tpm2_image, [tpm2_disk.disk],
                      f"{ARGS} rd.luks.options=token-timeout=3")
    vm_cleanup.append(vm)
    vm.expect(PROMPT)
    vm.expect(r"no TPM2 device: /dev/tpmrm0 did not appear within 3 s")
    vm.type(PASSPHRASE)
    facts = vm.real_init()
    assert facts["pid"] == "1" and facts["root_dm"] == "root", vm.transcript
    assert "unlocked with the TPM2" not in vm.transcript
