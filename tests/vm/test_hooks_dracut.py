"""dracut module 91cryptboot: images built by the distribution's real dracut, booted in QEMU.

The module comes from ``make install DESTDIR=...`` and is found by dracut through a private
``dracutbasedir`` (links to /usr/lib/dracut plus the installed module), so the host's dracut
installation is not touched. Images are non-systemd dracut initrds without the crypt module,
the supported combination (docs/hooks.md). Disks and the QEMU runner are the VM tier's
harness (tests/vm/conftest.py).
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
    keyfile_disk,
    unlock_wrong_then_right,
)
from tests.vm.hooks_helpers import (
    dracut_base as make_dracut_base,
)

pytestmark = pytest.mark.vm

OMIT = "crypt systemd systemd-initrd dracut-systemd"
# rd.retry bounds a failed boot; rd.shell=0 + rd.emergency=poweroff end it without a shell
APPEND = "quiet rd.shell=0 rd.emergency=poweroff rd.retry=60"


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("dracut-hooks")


@pytest.fixture(scope="module")
def dracut_base(work: Path) -> Path:
    return make_dracut_base(work)


def dracut(base: Path, out: Path, crypttab: Path, kver: str, *args: str, check: bool = True,
           cryptboot: str = CRYPTBOOT) -> subprocess.CompletedProcess[bytes]:
    env = dict(os.environ, dracutbasedir=str(base), CRYPTBOOT=cryptboot,
               CRYPTBOOT_CRYPTTAB=str(crypttab))
    proc = subprocess.run(["dracut", "-q", "--no-hostonly", "--kver", kver, *args, "-f", str(out)],
                          env=env, capture_output=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"dracut failed ({proc.returncode}):\n"
                             + proc.stderr.decode(errors="replace")[-4000:])
    return proc


def test_passphrase_from_rd_luks_uuid(work: Path, dracut_base: Path, kver: str,
                                      machine: Machine, luks2_root: Path,
                                      vm_cleanup: list[Vm]) -> None:
    empty = work / "crypttab-empty"
    empty.write_text("")
    image = work / "dracut-pass.img"
    dracut(dracut_base, image, empty, kver, "--add", "cryptboot", "--omit", OMIT)
    listing = image_listing(image)
    for path in ("usr/bin/cryptboot", "usr/sbin/cryptboot-unlock", "usr/sbin/cryptsetup",
                 "hooks/cmdline/30-cryptboot-cmdline.sh", "cryptboot/python/cryptboot/cli.pyc"):
        assert path in listing, path
    assert "cryptroot-ask" not in listing and "dracut-crypt-lib" not in listing

    name = f"luks-{LUKS_UUID}"
    vm = machine.boot("hooks-dracut-pass", image, [luks2_root],
                      f"root=/dev/mapper/{name} rd.luks.uuid={LUKS_UUID} {APPEND}")
    vm_cleanup.append(vm)
    facts = unlock_wrong_then_right(vm, name)
    assert facts["pid"] == "1", vm.transcript
    assert facts["root_dm"] == name, vm.transcript
    assert_cryptboot_opened(vm.transcript, name)


def test_keyfile_from_crypttab(work: Path, dracut_base: Path, kver: str, machine: Machine,
                               luks2_root: Path, vm_cleanup: list[Vm]) -> None:
    disk, keyfile = keyfile_disk(luks2_root, work / "keydisk")
    # "force" (dracut's word) puts the line into a --no-hostonly image; the other line is not
    # for the initramfs and must stay out
    tab = work / "crypttab-key"
    tab.write_text(f"# test crypttab\ncryptroot UUID={LUKS_UUID} {keyfile} luks,force\n"
                   "data UUID=00000000-0000-4000-8000-000000000000 none luks\n")
    image = work / "dracut-key.img"
    dracut(dracut_base, image, tab, kver, "--add", "cryptboot", "--omit", OMIT)
    assert stat.S_IMODE(image.stat().st_mode) == 0o600
    listing = image_listing(image)
    key_line = next(line for line in listing.splitlines()
                    if line.endswith(str(keyfile).lstrip("/")))
    assert key_line.startswith("-rw-------"), key_line
    inside = subprocess.run(["lsinitrd", "-f", "etc/crypttab", str(image)], capture_output=True,
                            check=True).stdout.decode()
    assert inside == f"cryptroot UUID={LUKS_UUID} {keyfile} luks\n"  # "force" dropped

    vm = machine.boot("hooks-dracut-key", image, [disk], f"root=/dev/mapper/cryptroot {APPEND}")
    vm_cleanup.append(vm)
    assert_keyfile_boot(vm.real_init(), vm.transcript, "cryptroot")


def test_refuses_dracut_crypt_module(work: Path, dracut_base: Path, kver: str) -> None:
    empty = work / "crypttab-empty2"
    empty.write_text("")
    out = work / "never.img"
    proc = dracut(dracut_base, out, empty, kver, "--no-kernel", "--add", "cryptboot crypt",
                  "--omit", "systemd systemd-initrd dracut-systemd", check=False)
    assert proc.returncode != 0
    err = proc.stderr.decode()
    assert "dracut's 'crypt' module is included too" in err, err
    assert 'rebuild with --omit "crypt"' in err, err
    assert not out.exists()


def test_refuses_systemd_initrd(work: Path, dracut_base: Path, kver: str) -> None:
    empty = work / "crypttab-empty3"
    empty.write_text("")
    out = work / "never-sd.img"
    proc = dracut(dracut_base, out, empty, kver, "--no-kernel", "--add", "cryptboot",
                  "--omit", "crypt", check=False)
    assert proc.returncode != 0
    err = proc.stderr.decode()
    assert "supports only the non-systemd dracut initrd" in err, err
    assert 'rebuild with --omit "systemd systemd-initrd dracut-systemd"' in err, err
    assert not out.exists()


def test_missing_keyfile_is_named(work: Path, dracut_base: Path, kver: str) -> None:
    tab = work / "crypttab-nokey"
    tab.write_text(f"cryptroot UUID={LUKS_UUID} /nonexistent/root.key luks,force\n")
    out = work / "never-key.img"
    proc = dracut(dracut_base, out, tab, kver, "--no-kernel", "--add", "cryptboot", "--omit", OMIT,
                  check=False)
    assert proc.returncode != 0
    err = proc.stderr.decode()
    assert f"cryptboot: {tab}: entry 'cryptroot' names keyfile /nonexistent/root.key, which " \
        "does not exist" in err, err
    assert not out.exists()


def test_failing_list_python_stops_the_build(work: Path, dracut_base: Path,
                                             kver: str) -> None:
    # a stand-in cryptboot that fails: the error path only (the real one is used above)
    fake = work / "bin" / "cryptboot"
    fake.parent.mkdir(exist_ok=True)
    fake.write_text("#!/bin/sh\necho 'cryptboot: error: broken' >&2\nexit 3\n")
    fake.chmod(0o755)
    empty = work / "crypttab-empty4"
    empty.write_text("")
    out = work / "never-list.img"
    proc = dracut(dracut_base, out, empty, kver, "--no-kernel", "--add", "cryptboot",
                  "--omit", OMIT, check=False, cryptboot=str(fake))
    assert proc.returncode != 0
    err = proc.stderr.decode()
    assert f"cryptboot: '{fake} mkinitramfs --list-python' failed" in err, err
    assert not out.exists()
