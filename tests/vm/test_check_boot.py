"""``cryptboot check`` against a VM guest's own facts, and boots that bear its verdicts out.

Inside the VM tier "the running system" is the host, so check is not run against the host:
the machine is the guest. The guest boots the harness's default image (scenario 1: a LUKS2 root
on a virtio disk, rd.luks.uuid + rd.luks.name on the command line, one passphrase) with a real
root whose init, before the usual facts, prints the guest's sysfs block facts (block devices,
slaves, device-mapper names, the driver and module of every device under each disk, mountinfo:
tests/check_facts.py's DUMP_SCRIPT). On the host those facts become a tree for
``cryptboot check --root``, whose ``dev/vda`` is the very disk file the guest booted from
(QEMU's snapshot=on leaves it unchanged), so luksDump reads the guest's LUKS header.

Then: the image that booted passes; the same image without virtio_blk.ko fails with exactly
"module virtio_blk (driver of /dev/vda, ...)", and booted anyway it fails where check said: the
root volume's device never appears (no /dev/vda at all), and the real init is never reached.
"""

from __future__ import annotations

import json
import os
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
from tests.vm.conftest import (
    LUKS_UUID,
    PASSPHRASE,
    Machine,
    Vm,
    luks_args,
    luks_encrypt,
    make_ext4,
)

pytestmark = pytest.mark.vm

PROMPT = r"Please enter passphrase for disk root \(/dev/vda\): "
APPEND = f"root=/dev/mapper/root {luks_args()} rd.emergency=poweroff rd.shell=0"
CRYPTBOOT = [sys.executable, "-m", "cryptboot"]


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("check-vm")


@pytest.fixture(scope="module")
def facts_root(work: Path, root_tree: Path) -> Path:
    """The harness's LUKS2 root, whose init prints the guest's block facts first."""
    tree = facts_root_tree(root_tree, work / "roottree")
    img = make_ext4(work / "root-facts.img", tree, label="realroot")
    return luks_encrypt(img, uuid=LUKS_UUID)


def check(image: Path, tree: Path, kver: str) -> tuple[int, dict[str, object], str]:
    proc = subprocess.run([*CRYPTBOOT, "check", str(image), "--kver", kver, "--cmdline", APPEND,
                           "--root", str(tree), "--json"], capture_output=True, text=True)
    assert proc.returncode in (0, 1), proc.stderr
    return proc.returncode, json.loads(proc.stdout), proc.stderr


def test_check_verdicts_hold_at_boot(machine: Machine, image: Path, kver: str, work: Path,
                                     facts_root: Path, vm_cleanup: list[Vm]) -> None:
    # the machine: boot it with the default image and collect its facts
    vm = machine.boot("check-facts", image, [facts_root], f"{APPEND} loglevel=1")
    vm_cleanup.append(vm)
    vm.expect(PROMPT)
    vm.type(PASSPHRASE)
    booted = vm.real_init()
    assert booted["pid"] == "1" and booted["root_dm"] == "root", vm.transcript
    facts = facts_from_console(vm.transcript)
    assert "D " in facts and "M dm-0 root CRYPT-LUKS2-" in facts, facts
    tree = build_tree(work / "guest", facts, {"vda": facts_root})

    # the image that booted: nothing missing
    rc, report, err = check(image, tree, kver)
    assert report["findings"] == [] and rc == 0, (report, facts)
    checked = report["checked"]
    assert isinstance(checked, dict)
    assert checked["stack"] == ["/: /dev/mapper/root (crypt) <- /dev/vda (disk)"], report
    needed = checked["modules needed"][0]
    assert "virtio_blk" in needed and "dm_crypt" in needed, report

    # the same image without the disk driver: exactly that finding
    bad = image_without(image, work / "no-virtio_blk.img",
                        lambda p: os.path.basename(p).split(".ko")[0] == "virtio_blk")
    rc, report, err = check(bad, tree, kver)
    findings = report["findings"]
    assert isinstance(findings, list)
    assert [f["message"] for f in findings] == [
        "module virtio_blk (driver of /dev/vda, under the LUKS volume root of /) is not in "
        "the image"], report
    assert rc == 1

    # booted anyway, it fails where check said: /dev/vda never appears
    vm = machine.boot("check-failed", bad, [facts_root], APPEND.replace(
        "rd.shell=0", "rd.shell=0 rd.retry=20"))
    vm_cleanup.append(vm)
    vm.expect(rf"device UUID={LUKS_UUID} did not appear \(waited [0-9.]+ s")
    vm.expect(r"block devices seen:")
    vm.wait_exit(120)
    text = vm.transcript
    seen = text[text.index("block devices seen:"):][:600]
    assert "vda" not in seen, seen
    assert "REAL_INIT_REACHED" not in text and "Please enter passphrase" not in text
    # cryptboot's module loader names the file check said was missing
    assert "some modules did not load: virtio_blk: " in text, text[-4000:]
