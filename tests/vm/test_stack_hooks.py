"""The Debian encrypted-LVM disk through the dracut module and the initramfs-tools hooks
(issue 12, proof 2): ``cryptboot unlock`` opens the LUKS volume, the builders' own LVM
support (dracut's lvm module; Debian's lvm2 hook and its udev rules) activates the VG, and the
real init runs on the root LV."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.vm.conftest import PASSPHRASE, Machine, Vm
from tests.vm.hooks_helpers import PROMPT, assert_cryptboot_opened, image_listing
from tests.vm.stack_helpers import DEBIAN_CRYPTTAB, ROOT_LV
from tests.vm.test_hooks_dracut import APPEND as DRACUT_APPEND
from tests.vm.test_hooks_dracut import (
    OMIT,
    dracut,
    dracut_base,  # noqa: F401 (a fixture)
)
from tests.vm.test_hooks_itools import confdir  # noqa: F401 (a fixture)
from tests.vm.test_hooks_itools import mkinitramfs as itools_mkinitramfs
from tests.vm.test_stack_lvm import debian_disk  # noqa: F401 (a fixture)

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("stack-hooks")


def boot_debian(vm: Vm) -> dict[str, str]:
    vm.expect(PROMPT)
    vm.type(PASSPHRASE)
    facts = vm.real_init()
    assert facts["pid"] == "1", vm.transcript
    assert facts["root_dm"] == "debian--vg-root", vm.transcript
    assert_cryptboot_opened(vm.transcript, "vda5_crypt")
    assert vm.transcript.lower().count("enter passphrase") == 1, vm.transcript
    return facts


def test_debian_lvm_initramfs_tools(work: Path, confdir: Path, kver: str,  # noqa: F811
                                    machine: Machine, debian_disk: Path,  # noqa: F811
                                    vm_cleanup: list[Vm]) -> None:
    tab = work / "crypttab-itools"
    tab.write_text(DEBIAN_CRYPTTAB.replace("luks,discard", "luks,discard,initramfs"))
    image = work / "itools-lvm.img"
    itools_mkinitramfs(confdir, image, tab, kver)
    listing = image_listing(image)
    for path in ("usr/bin/cryptboot", "sbin/lvm", "69-lvm.rules"):
        assert path in listing, path
    vm = machine.boot("stack-hooks-itools", image, [debian_disk], f"quiet root={ROOT_LV}")
    vm_cleanup.append(vm)
    boot_debian(vm)


def test_debian_lvm_dracut(work: Path, dracut_base: Path, kver: str,  # noqa: F811
                           machine: Machine, debian_disk: Path,  # noqa: F811
                           vm_cleanup: list[Vm]) -> None:
    tab = work / "crypttab-dracut"
    tab.write_text(DEBIAN_CRYPTTAB.replace("luks,discard", "luks,discard,force"))
    image = work / "dracut-lvm.img"
    dracut(dracut_base, image, tab, kver, "--add", "cryptboot lvm", "--omit", OMIT)
    listing = image_listing(image)
    for path in ("usr/bin/cryptboot", "usr/sbin/lvm", "sbin/lvm_scan"):
        assert path in listing, path
    vm = machine.boot("stack-hooks-dracut", image, [debian_disk],
                      f"root={ROOT_LV} rd.lvm.lv=debian-vg/root {DRACUT_APPEND}")
    vm_cleanup.append(vm)
    boot_debian(vm)
