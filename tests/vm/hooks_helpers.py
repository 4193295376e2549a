"""Shared parts of the dracut and initramfs-tools hook tests (tests/vm/test_hooks_*.py).

The hook tests use the VM tier's harness (tests/vm/conftest.py: disks, QEMU runner); this adds
the installed tree of ``make install``, a keyfile slot on a copy of the harness's LUKS2 root,
image listings, the passphrase exchange and the check that cryptboot opened the volume.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO
from tests.vm.conftest import PASSPHRASE, Vm

PROMPT = r"(?i)passphrase[^\r\n]*: "
# the cryptboot command whose "mkinitramfs --list-python" the hooks copy: this checkout's
CRYPTBOOT = os.environ.get("CRYPTBOOT") or str(Path(sys.executable).parent / "cryptboot")



def keyfile_disk(luks_root: Path, work: Path) -> tuple[Path, Path]:
    """A copy of the harness's LUKS2 root with a second keyslot for a new 64-byte keyfile
    (mode 0600 in a 0700 directory); returns (disk, keyfile)."""
    work.mkdir(parents=True, exist_ok=True)
    disk = work / "root-keyfile.img"
    shutil.copyfile(luks_root, disk)
    keyfile = work / "keys" / "root.key"
    keyfile.parent.mkdir(mode=0o700)
    fd = os.open(keyfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(os.urandom(64))
    subprocess.run(["cryptsetup", "luksAddKey", "-q", "--key-file=-", "--pbkdf", "pbkdf2",
                    "--pbkdf-force-iterations", "1000", str(disk), str(keyfile)],
                   input=PASSPHRASE.encode(), check=True, capture_output=True)
    return disk, keyfile


def make_install(destdir: Path) -> Path:
    """``make install DESTDIR=destdir``; returns destdir."""
    subprocess.run(["make", "-s", "-C", str(REPO), "install", f"DESTDIR={destdir}"], check=True,
                   capture_output=True)
    return destdir


def itools_confdir(destdir: Path, conf: Path, conf_d: dict[str, str] | None = None) -> Path:
    """A private copy of /etc/initramfs-tools at ``conf`` with the hook and the local-top
    script as ``make install DESTDIR=destdir`` installed them (so the host's own configuration
    is never changed), plus ``conf.d`` files (name -> text); returns ``conf``."""
    shutil.rmtree(conf, ignore_errors=True)
    shutil.copytree("/etc/initramfs-tools", conf, symlinks=True)
    installed = destdir / "usr/share/initramfs-tools"
    (conf / "hooks").mkdir(exist_ok=True)
    (conf / "scripts/local-top").mkdir(parents=True, exist_ok=True)
    shutil.copy2(installed / "hooks/cryptboot", conf / "hooks/cryptboot")
    shutil.copy2(installed / "scripts/local-top/cryptboot", conf / "scripts/local-top/cryptboot")
    (conf / "conf.d").mkdir(exist_ok=True)
    for name, text in (conf_d or {}).items():
        (conf / "conf.d" / name).write_text(text)
    return conf


def dracut_base(work: Path) -> Path:
    """A dracutbasedir under ``work``: the system's dracut, plus the module 91cryptboot as
    installed by ``make install`` (so the host's own dracut is never changed)."""
    dest = make_install(work / "destdir")
    base = work / "dracutbase"
    (base / "modules.d").mkdir(parents=True)
    system = Path("/usr/lib/dracut")
    for entry in system.iterdir():
        if entry.name != "modules.d":
            (base / entry.name).symlink_to(entry)
    for mod in (system / "modules.d").iterdir():
        (base / "modules.d" / mod.name).symlink_to(mod)
    installed = dest / "usr/lib/dracut/modules.d/91cryptboot"
    assert (installed / "module-setup.sh").is_file()
    (base / "modules.d/91cryptboot").symlink_to(installed)
    return base


def assert_keyfile_boot(facts: dict[str, str], console: str, name: str) -> None:
    """A keyfile boot: the real init is PID 1 on /dev/mapper/NAME, opened by cryptboot, and no
    passphrase was ever asked."""
    assert facts["pid"] == "1", console
    assert facts["root_dm"] == name, console
    assert "passphrase" not in console.lower(), console
    assert_cryptboot_opened(console, name)


def image_listing(image: Path) -> str:
    """``lsinitrd`` of an image (dracut's tool reads dracut and initramfs-tools images)."""
    proc = subprocess.run(["lsinitrd", str(image)], capture_output=True, check=True)
    return proc.stdout.decode(errors="replace")


def unlock_wrong_then_right(vm: Vm, name: str) -> dict[str, str]:
    """At the prompt a wrong passphrase, which must be rejected as the first failed try of
    volume ``name`` (the notice comes with the next prompt), then the right one; returns the real
    init's facts."""
    vm.expect(PROMPT)
    vm.type("not-" + PASSPHRASE)
    vm.expect(rf"wrong passphrase for {re.escape(name)} \(try 1 of \d+\)")
    vm.expect(PROMPT)
    vm.type(PASSPHRASE)
    facts = vm.real_init()
    assert f"wrong passphrase for {name} (try 2" not in vm.transcript, vm.transcript[-6000:]
    return facts


def assert_cryptboot_opened(console: str, name: str) -> None:
    """The volume was opened by cryptboot's unlock step, not by a builder's own unlocker."""
    assert f"cryptboot: unlock {name} ..." in console, console[-6000:]
    assert f"cryptboot: {name}: unlocked" in console, console[-6000:]
