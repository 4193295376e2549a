"""md RAID1 (two disks, metadata 1.2) -> LUKS -> ext4 through cryptboot's image (issue 12,
proof 3): assembled member by member with mdadm --incremental; with one disk removed the array
starts degraded in the wait's last third and the log names the missing member."""

from __future__ import annotations

import re
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
def md_array(machine: Machine, md_image: Path, vmdir: Path, root_tree: Path
             ) -> tuple[Path, Path, str]:
    """The two members and the array's UUID (as mdadm prints it, ``xxxxxxxx:...``)."""
    work = vmdir / "md"
    work.mkdir(exist_ok=True)
    payload = make_ext4(work / "luks.img", root_tree, label="mdroot", size_mb=36, fs_mb=20)
    luks_encrypt(payload, uuid=MD_LUKS_UUID)
    return md_raid1(machine, md_image, work, payload)


@pytest.fixture(scope="session")
def md_members(md_array: tuple[Path, Path, str]) -> tuple[Path, Path]:
    return md_array[0], md_array[1]


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


@pytest.fixture(scope="session")
def md_named_image(vmdir: Path, kver: str, pyc_cache: Path, md_array: tuple[Path, Path, str]
                   ) -> tuple[Path, str]:
    """An image whose crypttab names the md array itself as the LUKS source: the array's
    ``/dev/disk/by-id/md-uuid-UUID`` link (made by mdadm's udev rules from the array's UUID),
    not the LUKS UUID; the image finds md support from that line alone (no ``--md``)."""
    source = f"/dev/disk/by-id/md-uuid-{md_array[2]}"
    crypttab = write_crypttab(vmdir, "md-named", f"mdcrypt {source} none luks\n")
    image = mkinitramfs(vmdir / "cryptboot-md-named.img", kver, "--crypttab", str(crypttab),
                        "--compress", "gzip", cache=pyc_cache)
    return image, source


def test_luks_on_md_named_in_crypttab(machine: Machine, md_named_image: tuple[Path, str],
                                      md_members: tuple[Path, Path],
                                      vm_cleanup: list[Vm]) -> None:
    """Issue 12, crypttab lines whose source is an md array: the wait for ``mdcrypt``'s source
    ends when the array assembled from both members appears under its UUID link."""
    image, _source = md_named_image
    vm = machine.boot("stack-md-named", image, list(md_members),
                      "root=/dev/mapper/mdcrypt rd.emergency=poweroff")
    vm_cleanup.append(vm)
    found = (r"mdcrypt: found (/dev/md\d+) \(crypto_LUKS, "
             rf"UUID={re.escape(MD_LUKS_UUID)}\)")
    assert vm.expect([found, "the boot failed"]) == 0, vm.transcript
    node = vm.child.match.group(1).decode()
    prompt = rf"Please enter passphrase for disk mdcrypt \({re.escape(node)}\): "
    assert vm.expect([prompt, "the boot failed"]) == 0, vm.transcript
    vm.type(PASSPHRASE)
    facts = vm.real_init()
    assert facts["pid"] == "1" and facts["root_dm"] == "mdcrypt", vm.transcript
    assert "(started)" in vm.transcript and "degraded" not in vm.transcript
