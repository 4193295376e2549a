"""``cryptboot check`` on machines whose root is on a stack: LVM on LUKS, LUKS on md RAID1
(issue 17).

The host has no device-mapper or md, so the machines are VM guests: the Debian guided
encrypted-LVM disk and the md RAID1 disks of the stacked-storage tests (tests/vm/stack_helpers),
booted through cryptboot's images for them, with a real root whose init prints the guest's
sysfs block facts (tests/check_facts.py's DUMP_SCRIPT: block devices, slaves, device-mapper
names and uuids, md levels, drivers, mountinfo) before the usual facts. Every boot records the
facts afresh; nothing is hard-coded. On the host they become a tree for ``cryptboot check
--root``, whose ``dev/`` nodes of the LUKS volumes are the very bytes the guest unlocked (the
partition, or the md member's data area), so ``luksDump`` reads the guest's header.

Then: the image that booted reports nothing missing and names the layers and what they need
(dm_mod and lvm; md_mod, raid1 and mdadm); the same image without the program or module of the
layer reports exactly that, and exits 1. The image without lvm, booted anyway, fails where check
said: the LUKS volume opens and its PV is seen, the root LV never appears.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.check_facts import (
    build_tree,
    facts_from_console,
    facts_root_tree,
    image_without,
)
from tests.vm.conftest import PASSPHRASE, Machine, Vm, luks_encrypt, make_ext4
from tests.vm.stack_helpers import ROOT_LV, debian_lvm_disk, md_raid1
from tests.vm.test_stack_lvm import DEBIAN_PROMPT, lvm_image
from tests.vm.test_stack_md import MD_LUKS_UUID, md_image

pytestmark = pytest.mark.vm

__all__ = ["lvm_image", "md_image"]  # the stacked-storage tests' images, shared (fixtures)

CRYPTBOOT = [sys.executable, "-m", "cryptboot"]
MD_OFFSET = 'echo "FACT mdoffset $(cat /sys/block/md*/md/dev-vda/offset)"\n'


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("check-stack")


@pytest.fixture(scope="module")
def facts_tree(work: Path, root_tree: Path) -> Path:
    """The harness's root tree, whose init prints the guest's block facts first."""
    return facts_root_tree(root_tree, work / "roottree", MD_OFFSET)


def check(image: Path, tree: Path, kver: str, cmdline: str) -> tuple[int, dict[str, object]]:
    proc = subprocess.run([*CRYPTBOOT, "check", str(image), "--kver", kver, "--cmdline", cmdline,
                           "--root", str(tree), "--json"], capture_output=True, text=True)
    assert proc.returncode in (0, 1), proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def messages(report: dict[str, object]) -> list[str]:
    findings = report["findings"]
    assert isinstance(findings, list)
    return [f["message"] for f in findings]


def copy_range(src: Path, dest: Path, offset: int, size: int | None = None) -> Path:
    """The bytes of ``src`` from ``offset`` (a partition, an md member's data area)."""
    with open(src, "rb") as f, open(dest, "wb") as out:
        f.seek(offset)
        left = size
        while left is None or left > 0:
            chunk = f.read(1 << 20 if left is None else min(1 << 20, left))
            if not chunk:
                break
            out.write(chunk)
            if left is not None:
                left -= len(chunk)
    dest.chmod(0o600)
    return dest


def guest_facts(vm: Vm) -> str:
    booted = vm.real_init()
    assert booted["pid"] == "1", vm.transcript
    return facts_from_console(vm.transcript)


def without(image: Path, dest: Path, name: str) -> Path:
    """``image`` without the module ``name.ko`` or the program ``name`` (in any bin dir)."""
    if name.endswith(".ko"):
        return image_without(image, dest,
                             lambda p: os.path.basename(p).split(".ko")[0] == name[:-3])
    return image_without(image, dest, lambda p: p.endswith("bin/" + name))


def assert_passes(image: Path, tree: Path, kver: str, append: str, facts: str, stack_re: str,
                  modules: set[str]) -> None:
    """The image that booted: no finding, exit 0, the root's stack as ``stack_re`` says, and
    at least ``modules`` among the modules it needs."""
    rc, report = check(image, tree, kver, append)
    assert messages(report) == [] and rc == 0, (report, facts)
    checked = report["checked"]
    assert isinstance(checked, dict)
    [stack] = checked["stack"]
    assert re.fullmatch(stack_re, stack), report
    needed = checked["modules needed"][0].split(", ")
    assert modules <= set(needed), report


def test_check_lvm_on_luks_root(machine: Machine, lvm_image: Path, kver: str, work: Path,
                                facts_tree: Path, vm_cleanup: list[Vm]) -> None:
    disk = debian_lvm_disk(work / "lvm", facts_tree)
    append = f"root={ROOT_LV} rd.emergency=poweroff rd.shell=0"
    vm = machine.boot("check-lvm-facts", lvm_image, [disk], f"{append} loglevel=1")
    vm_cleanup.append(vm)
    assert vm.expect([DEBIAN_PROMPT, "the boot failed"]) == 0, vm.transcript
    vm.type(PASSPHRASE)
    facts = guest_facts(vm)
    assert re.search(r"^M dm-\d+ debian--vg-root LVM-", facts, re.M), facts
    assert re.search(r"^M dm-\d+ vda5_crypt CRYPT-LUKS2-", facts, re.M), facts
    table = json.loads(subprocess.run(["sfdisk", "--json", str(disk)], capture_output=True,
                                      check=True).stdout)["partitiontable"]["partitions"]
    p5 = next(p for p in table if p["node"].endswith("5"))
    part = copy_range(disk, work / "vda5.img", p5["start"] * 512, p5["size"] * 512)
    tree = build_tree(work / "guest-lvm", facts, {"vda": disk, "vda5": part})

    assert_passes(lvm_image, tree, kver, append, facts,
                  r"/: /dev/mapper/debian--vg-root \(lvm\) <- /dev/mapper/vda5_crypt "
                  r"\(crypt\) <- /dev/vda5 \(part\) <- /dev/vda \(disk\)",
                  {"dm_mod", "dm_crypt", "virtio_blk"})

    no_lvm = without(lvm_image, work / "no-lvm.img", "lvm")
    rc, report = check(no_lvm, tree, kver, append)
    assert messages(report) == [
        "program lvm (to activate the logical volume /dev/mapper/debian--vg-root under /) is "
        "not in the image"], report
    assert rc == 1

    # booted anyway, it fails where check said: the LUKS volume opens, the LV never appears
    vm = machine.boot("check-lvm-failed", no_lvm, [disk],
                      append.replace("rd.shell=0", "rd.shell=0 rd.retry=8"))
    vm_cleanup.append(vm)
    assert vm.expect([DEBIAN_PROMPT, "the boot failed"]) == 0, vm.transcript
    vm.type(PASSPHRASE)
    vm.expect(r"unlock vda5_crypt: done in")
    vm.expect(rf"device {ROOT_LV} did not appear \(waited 8\.\d s")
    # the PV (the opened LUKS mapping) is there; nothing activates its VG
    vm.expect(r"/dev/dm-0 \(LVM2_member, ")
    vm.wait_exit(120)
    assert "REAL_INIT_REACHED" not in vm.transcript, vm.transcript

    rc, report = check(without(lvm_image, work / "no-dm-mod.img", "dm-mod.ko"), tree, kver,
                       append)
    said = messages(report)
    assert said[0] == ("module dm_mod (device-mapper, for the logical volume "
                       "/dev/mapper/debian--vg-root under /) is not in the image"), report
    assert all("dm_mod" in m for m in said), report
    assert rc == 1


def test_check_luks_on_md_root(machine: Machine, md_image: Path, kver: str, work: Path,
                               facts_tree: Path, vm_cleanup: list[Vm]) -> None:
    md = work / "md"
    md.mkdir(exist_ok=True)
    payload = make_ext4(md / "luks.img", facts_tree, label="mdroot", size_mb=36, fs_mb=20)
    luks_encrypt(payload, uuid=MD_LUKS_UUID)
    a, b, _uuid = md_raid1(machine, md_image, md, payload)
    payload.unlink()  # the tree's LUKS volume is read back from a member, below
    append = "root=/dev/mapper/root rd.emergency=poweroff rd.shell=0"
    vm = machine.boot("check-md-facts", md_image, [a, b], f"{append} loglevel=1")
    vm_cleanup.append(vm)
    assert vm.expect([r"Please enter passphrase for disk root \(/dev/md\S+\): ",
                      "the boot failed"]) == 0, vm.transcript
    vm.type(PASSPHRASE)
    facts = guest_facts(vm)
    m = re.search(r"^L (md\d+) raid1$", facts, re.M)
    assert m, facts
    array = m.group(1)
    assert re.search(rf"^S dm-\d+ {array}$", facts, re.M), facts
    offset = re.search(r"FACT mdoffset (\d+)", vm.transcript)
    assert offset, vm.transcript
    data = copy_range(a, work / f"{array}.img", int(offset.group(1)) * 512)
    tree = build_tree(work / "guest-md", facts, {"vda": a, "vdb": b, array: data})

    assert_passes(md_image, tree, kver, append, facts,
                  rf"/: /dev/mapper/root \(crypt\) <- /dev/{array} \(md\) <- /dev/vda "
                  r"\(disk\) <- /dev/vdb \(disk\)",
                  {"md_mod", "raid1", "dm_crypt", "virtio_blk"})

    under = "under the LUKS volume root of /"
    rc, report = check(without(md_image, work / "no-mdadm.img", "mdadm"), tree, kver, append)
    assert messages(report) == [
        f"program mdadm (to assemble /dev/{array} {under}) is not in the image"], report
    assert rc == 1

    rc, report = check(without(md_image, work / "no-raid1.img", "raid1.ko"), tree, kver,
                       append)
    assert messages(report) == [
        f"module raid1 (md personality of /dev/{array} {under}) is not in the image"], report
    assert rc == 1
