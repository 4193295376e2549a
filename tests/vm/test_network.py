"""The initramfs network in a real boot (issue 14; issue 13's tang uses the same): QEMU's user
network (``restrict=on``: only the guest and QEMU's DHCP server), a virtio NIC whose driver is
in the image, busybox udhcpc or a static ip=, and what the real root's init finds afterwards."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.vm.conftest import PASSPHRASE, Machine, Vm, luks_args
from tests.vm.ssh_helpers import PROMPT, SshImage, build_ssh_image, user_net

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def net_image(vmdir: Path, kver: str, pyc_cache: Path) -> SshImage:
    return build_ssh_image(vmdir, kver, pyc_cache)


def boot(machine: Machine, name: str, image: SshImage, disk: Path, words: str,
         cleanup: list[Vm]) -> Vm:
    vm = machine.boot(name, image.path, [disk],
                      f"root=/dev/mapper/root {luks_args()} rd.emergency=poweroff {words}",
                      extra=user_net())
    cleanup.append(vm)
    return vm


def test_dhcp_and_kept_up_with_rd_neednet(machine: Machine, net_image: SshImage,
                                          luks2_root: Path, vm_cleanup: list[Vm]) -> None:
    """ip=dhcp rd.neednet=1: a lease from QEMU's DHCP server, and the real init finds eth0 up
    with it. cryptboot.ssh=0 turns off the image's SSH."""
    vm = boot(machine, "net-dhcp-kept", net_image, luks2_root,
              "cryptboot.ssh=0 ip=dhcp rd.neednet=1", vm_cleanup)
    vm.expect(PROMPT)
    vm.type(PASSPHRASE)
    vm.expect(r"network: eth0 10\.0\.2\.15/24 \(DHCP\) in [0-9.]+s")
    vm.expect(r"network: kept up for the real system \(rd\.neednet=1\): eth0")
    facts = vm.real_init()
    assert facts["pid"] == "1", vm.transcript
    assert facts["netifs"] == "eth0=up:10.0.2.15/24", vm.transcript
    assert "start the SSH server" not in vm.transcript


def test_static_address_then_down_before_the_hand_off(machine: Machine, net_image: SshImage,
                                                      luks2_root: Path,
                                                      vm_cleanup: list[Vm]) -> None:
    """A static ip= (no rd.neednet): set while the prompt waits, flushed and down before the
    hand-off, so the real system's network starts clean."""
    vm = boot(machine, "net-static-down", net_image, luks2_root,
              "cryptboot.ssh=0 ip=10.0.2.77::10.0.2.2:255.255.255.0:cbhost:eth0:none", vm_cleanup)
    vm.expect(PROMPT)
    vm.type(PASSPHRASE)
    vm.expect(r"network: eth0 10\.0\.2\.77/24 via 10\.0\.2\.2 \(static\) in [0-9.]+s")
    vm.expect(r"network: eth0 flushed and down")
    facts = vm.real_init()
    assert facts["pid"] == "1", vm.transcript
    assert facts["netifs"] == "eth0=down:", vm.transcript
