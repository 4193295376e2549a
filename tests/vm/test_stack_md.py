"""md RAID1 (two disks, metadata 1.2) -> LUKS -> ext4 through cryptboot's image (issue 12,
proof 3): assembled member by member with mdadm --incremental; with one disk removed the array
starts degraded in the wait's last third and the log names the missing member."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.vm.conftest import (
    PASSPHRASE,
    Machine,
    Vm,
    luks_encrypt,
    make_ext4,
    mkinitramfs,
    write_crypttab,
)
from tests.vm.stack_helpers import md_raid1

pytestmark = pytest.mark.vm

MD_LUKS_UUID = "5e1f0000-aaaa-4bbb-8ccc-0000000000d1"
PROMPT = r"Please enter passphrase for disk root \(/dev/md\S+\): "


@pytest.fixture(scope="session")
def md_image(vmdir: Path, kver: str, pyc_cache: Path) -> Path:
    crypttab = write_crypttab(vmdir, "md", f"root UUID={MD_LUKS_UUID} none luks\n")
    return mkinitramfs(vmdir / "cryptboot-md.img", kver, "--crypttab", str(crypttab), "--md",
                       "--compress", "gzip", cache=pyc_cache)


@pytest.fixture(scope="session")
def md_members(machine: Machine, md_image: Path, vmdir: Path, root_tree: Path
               ) -> tuple[Path, Path]:
    work = vmdir / "md"
    work.mkdir(exist_ok=True)
    payload = make_ext4(work / "luks.img", root_tree, label="mdroot", size_mb=36, fs_mb=20)
    luks_encrypt(payload, uuid=MD_LUKS_UUID)
    a, b, _uuid = md_raid1(machine, md_image, work, payload)
    return a, b


def test_md_raid1_luks_root(machine: Machine, md_image: Path, md_members: tuple[Path, Path],
                            vm_cleanup: list[Vm]) -> None:
    vm = machine.boot("stack-md-raid1", md_image, list(md_members),
                      "root=/dev/mapper/root rd.emergency=poweroff")
    vm_cleanup.append(vm)
    assert vm.expect([PROMPT, "the boot failed"]) == 0, vm.transcript
    vm.type(PASSPHRASE)
    facts = vm.real_init()
    assert facts["pid"] == "1" and facts["root_dm"] == "root", vm.transcript
    assert "md: /dev/vdb: member of /dev/md" in vm.transcript and "(started)" in vm.transcript
    assert "degraded" not in vm.transcript


def test_md_raid1_degraded(machine: Machine, md_image: Path, md_members: tuple[Path, Path],
                           vm_cleanup: list[Vm]) -> None:
    """One disk removed: after two thirds of rd.retry=15 the array starts degraded, naming
    the missing member; the boot goes on."""
    vm = machine.boot("stack-md-degraded", md_image, [md_members[0]],
                      "root=/dev/mapper/root rd.retry=15 rd.emergency=poweroff")
    vm_cleanup.append(vm)
    assert vm.expect([r"md: /dev/md\S+ is incomplete after 1\d\.\d s: starting it degraded; "
                      r"member with role 1 of 2 missing; found /dev/vda \(role 0\)",
                      "the boot failed"]) == 0, vm.transcript
    assert vm.expect([PROMPT, "the boot failed"]) == 0, vm.transcript
    vm.type(PASSPHRASE)
    facts = vm.real_init()
    assert facts["pid"] == "1" and facts["root_dm"] == "root", vm.transcript
