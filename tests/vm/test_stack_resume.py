"""Resume from hibernation (issue 12, proof 6) on the Debian encrypted-LVM layout: the real
init swaps on the encrypted swap LV, starts a marker process and hibernates; a boot with
``noresume`` boots fresh (the image is left alone); the next boot asks for the passphrase once,
resumes, and the marker process says it is still running."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from tests.vm.conftest import PASSPHRASE, Machine, Vm, make_root_tree
from tests.vm.stack_helpers import HIBERNATE_INIT, ROOT_LV, boot_writable, debian_lvm_disk
from tests.vm.test_stack_lvm import DEBIAN_PROMPT, lvm_image  # noqa: F401 (a fixture)

pytestmark = pytest.mark.vm

SWAP_LV = "/dev/mapper/debian--vg-swap_1"


@pytest.fixture(scope="session")
def hibernate_disk(vmdir: Path) -> Path:
    tree = make_root_tree(vmdir / "hibernate-tree")
    (tree / "sbin/init").write_text(HIBERNATE_INIT)
    disk = debian_lvm_disk(vmdir / "hibernate", tree, swap_mb=64)
    return Path(shutil.copyfile(disk, vmdir / "hibernate-rw.img"))


def test_hibernate_noresume_then_resume(machine: Machine, lvm_image: Path,  # noqa: F811
                                        hibernate_disk: Path, vm_cleanup: list[Vm]) -> None:
    append = f"root={ROOT_LV} resume={SWAP_LV} rd.emergency=poweroff"
    # 1: a fresh boot (no image on the swap yet) hibernates
    vm = boot_writable(machine, "stack-hibernate-1", lvm_image, [hibernate_disk], append)
    vm_cleanup.append(vm)
    assert vm.expect([DEBIAN_PROMPT, "the boot failed"]) == 0, vm.transcript
    vm.type(PASSPHRASE)
    vm.expect(r"no hibernation image on /dev/dm-\d+: booting fresh")
    vm.expect(r"MARKER_STARTED pid=(\d+)")
    marker = vm.child.match.group(1).decode()
    vm.expect("HIBERNATING")
    assert vm.expect([r"reboot: Power down", "HIBERNATE_FAILED"]) == 0, vm.transcript
    vm.wait_exit()
    # 2: noresume boots fresh and leaves the image alone
    vm = boot_writable(machine, "stack-hibernate-noresume", lvm_image, [hibernate_disk],
                       append + " noresume")
    vm_cleanup.append(vm)
    assert vm.expect([DEBIAN_PROMPT, "the boot failed"]) == 0, vm.transcript
    vm.type(PASSPHRASE)
    vm.expect("FRESH_BOOT_NORESUME")
    vm.wait_exit()
    assert "resume from" not in vm.transcript
    # 3: the next boot resumes: one passphrase, the marker process still runs
    vm = boot_writable(machine, "stack-hibernate-2", lvm_image, [hibernate_disk], append)
    vm_cleanup.append(vm)
    assert vm.expect([DEBIAN_PROMPT, "the boot failed"]) == 0, vm.transcript
    vm.type(PASSPHRASE)
    vm.expect(r"resume from /dev/dm-\d+ \(\d+:\d+, a hibernation image\)")
    vm.expect("RESUMED_FROM_HIBERNATION")
    vm.expect(rf"MARKER_STILL_RUNNING pid={marker}")
    vm.wait_exit()
    text = vm.transcript
    assert text.count("Please enter passphrase") == 1, text
    assert "REAL_INIT_REACHED" not in text  # no fresh init: the hibernated one went on
    assert not re.search(r"EXT4-fs \(dm-\d+\): mounted", text), text
