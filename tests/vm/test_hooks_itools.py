"""initramfs-tools hook and local-top script: images built by Debian's real mkinitramfs,
booted in QEMU.

The hook and the script come from ``make install DESTDIR=...`` and are copied into a private
configuration directory (``mkinitramfs -d``: a copy of /etc/initramfs-tools, whose hooks/ and
scripts/ mkinitramfs runs besides /usr/share/initramfs-tools'), so the host is not touched.
The crypttab the hook reads is given with CRYPTBOOT_CRYPTTAB. Disks and the QEMU runner are the
VM tier's harness (tests/vm/conftest.py).
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from tests.vm.conftest import LUKS_UUID, Machine, Vm
from tests.vm.hooks_helpers import (
    CRYPTBOOT,
    assert_cryptboot_opened,
    assert_keyfile_boot,
    image_listing,
    itools_confdir,
    keyfile_disk,
    make_install,
    unlock_wrong_then_right,
)

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("itools-hooks")


@pytest.fixture(scope="module")
def confdir(work: Path) -> Path:
    """/etc/initramfs-tools copied, with the installed hook and script added and UMASK=0077."""
    return itools_confdir(make_install(work / "destdir"), work / "initramfs-tools",
                          {"cryptboot-test": "UMASK=0077\n"})


def mkinitramfs(conf: Path, out: Path, crypttab: Path, kver: str, check: bool = True,
                cryptboot: str = CRYPTBOOT) -> subprocess.CompletedProcess[bytes]:
    env = dict(os.environ, CRYPTBOOT=cryptboot, CRYPTBOOT_CRYPTTAB=str(crypttab))
    proc = subprocess.run(["mkinitramfs", "-d", str(conf), "-o", str(out), kver], env=env,
                          capture_output=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"mkinitramfs failed ({proc.returncode}):\n"
                             + proc.stderr.decode(errors="replace")[-4000:])
    return proc


def image_file(image: Path, path: str) -> str:
    return subprocess.run(["lsinitrd", "-f", path, str(image)], capture_output=True,
                          check=True).stdout.decode()


def test_passphrase_from_crypttab_initramfs_entry(work: Path, confdir: Path, kver: str,
                                                  machine: Machine, luks2_root: Path,
                                                  vm_cleanup: list[Vm]) -> None:
    tab = work / "crypttab-pass"
    tab.write_text(f"cryptroot UUID={LUKS_UUID} none luks,initramfs\n")
    image = work / "itools-pass.img"
    mkinitramfs(confdir, image, tab, kver)
    listing = image_listing(image)
    for path in ("usr/bin/cryptboot", "scripts/local-top/cryptboot", "cryptsetup",
                 "cryptboot/python/cryptboot/cli.pyc"):
        assert path in listing, path
    assert image_file(image, "etc/crypttab") == tab.read_text()

    vm = machine.boot("hooks-itools-pass", image, [luks2_root], "quiet root=/dev/mapper/cryptroot")
    vm_cleanup.append(vm)
    facts = unlock_wrong_then_right(vm, "cryptroot")
    assert facts["pid"] == "1", vm.transcript
    assert facts["root_dm"] == "cryptroot", vm.transcript
    assert_cryptboot_opened(vm.transcript, "cryptroot")


def test_keyfile_from_crypttab(work: Path, confdir: Path, kver: str, machine: Machine,
                               luks2_root: Path, vm_cleanup: list[Vm]) -> None:
    disk, keyfile = keyfile_disk(luks2_root, work / "keydisk")
    # only the "initramfs" line belongs in the image
    tab = work / "crypttab-key"
    root_line = f"cryptroot UUID={LUKS_UUID} {keyfile} luks,initramfs"
    tab.write_text(f"# test crypttab\n{root_line}\n"
                   "data UUID=00000000-0000-4000-8000-000000000000 none luks\n")
    image = work / "itools-key.img"
    proc = mkinitramfs(confdir, image, tab, kver)
    assert b"set UMASK=0077" not in proc.stderr  # no keyfile warning: UMASK is set
    assert stat.S_IMODE(image.stat().st_mode) == 0o600
    assert image_file(image, "etc/crypttab") == root_line + "\n"
    key_line = next(line for line in image_listing(image).splitlines()
                    if line.endswith(str(keyfile).lstrip("/")))
    assert key_line.startswith("-rw-------"), key_line

    vm = machine.boot("hooks-itools-key", image, [disk], "quiet root=/dev/mapper/cryptroot")
    vm_cleanup.append(vm)
    assert_keyfile_boot(vm.real_init(), vm.transcript, "cryptroot")


def test_missing_keyfile_is_named(work: Path, confdir: Path, kver: str) -> None:
    tab = work / "crypttab-nokey"
    tab.write_text(f"cryptroot UUID={LUKS_UUID} /nonexistent/root.key luks,initramfs\n")
    out = work / "never-key.img"
    proc = mkinitramfs(confdir, out, tab, kver, check=False)
    assert proc.returncode != 0
    err = proc.stderr.decode()
    assert f"E: cryptboot: {tab}: entry 'cryptroot' names keyfile /nonexistent/root.key, " \
        "which does not exist" in err, err


def test_failing_list_python_stops_the_build(work: Path, confdir: Path, kver: str) -> None:
    # a stand-in cryptboot that fails: the error path only (the real one is used above)
    fake = work / "bin" / "cryptboot"
    fake.parent.mkdir(exist_ok=True)
    fake.write_text("#!/bin/sh\necho 'cryptboot: error: broken' >&2\nexit 3\n")
    fake.chmod(0o755)
    empty = work / "crypttab-empty"
    empty.write_text("")
    out = work / "never-list.img"
    proc = mkinitramfs(confdir, out, empty, kver, check=False, cryptboot=str(fake))
    assert proc.returncode != 0
    err = proc.stderr.decode()
    assert f"E: cryptboot: '{fake} mkinitramfs --list-python' failed" in err, err
