"""Shared parts of the dracut and initramfs-tools hook tests (tests/vm/test_hooks_*.py).

The hook tests use the VM tier's harness (tests/vm/conftest.py: disks, QEMU runner); this adds
the installed tree of ``make install``, a keyfile slot on a copy of the harness's LUKS2 root,
image listings, and the check that cryptboot opened the volume. ``boot``/``expect``/``finish``/
``prompt_wrong_then_right`` are a small pexpect driver kept for tests/vm/test_cgd_boot.py.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pexpect

from tests.conftest import REPO

PASSPHRASE = b"hunter2"
PROMPT = r"(?i)passphrase[^\r\n]*: "
REAL_INIT = r"REAL_INIT_REACHED pid=(\d+)"
# the cryptboot command whose "mkinitramfs --list-python" the hooks copy: this checkout's
CRYPTBOOT = os.environ.get("CRYPTBOOT") or str(Path(sys.executable).parent / "cryptboot")

REAL_INIT_SCRIPT = """#!/bin/sh
export PATH=/bin
mount -t proc proc /proc 2>/dev/null
echo "REAL_INIT_REACHED pid=$$"
poweroff -f
"""


def kernel() -> tuple[str, str]:
    """(path, version) of the Debian cloud kernel the VM tier boots (globbed, never fixed)."""
    found = sorted(Path("/boot").glob("vmlinuz-*-cloud-amd64"))
    assert found, "no /boot/vmlinuz-*-cloud-amd64"
    path = found[-1]
    return str(path), path.name[len("vmlinuz-"):]


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
                   input=PASSPHRASE, check=True, capture_output=True)
    return disk, keyfile


def make_install(destdir: Path) -> Path:
    """``make install DESTDIR=destdir``; returns destdir."""
    subprocess.run(["make", "-s", "-C", str(REPO), "install", f"DESTDIR={destdir}"], check=True,
                   capture_output=True)
    return destdir


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


def boot(image: Path, disk: Path, append: str, log: Path, timeout: float = 300) -> pexpect.spawn:
    """Start QEMU (TCG, serial console on stdio, disk as virtio with snapshot=on)."""
    path, _ = kernel()
    argv = ["-accel", "tcg", "-cpu", "max", "-m", "512", "-nographic", "-nodefaults",
            "-serial", "stdio", "-net", "none", "-no-reboot", "-kernel", path,
            "-initrd", str(image), "-append", f"console=ttyS0 panic=-1 {append}",
            "-drive", f"file={disk},format=raw,if=virtio,snapshot=on"]
    child = pexpect.spawn("qemu-system-x86_64", argv, timeout=timeout, maxread=65536)
    child.logfile_read = open(log, "wb")  # closed by finish()
    return child


def finish(child: pexpect.spawn, log: Path) -> None:
    """Wait for QEMU to exit (the real init powers off), then close the log."""
    try:
        child.expect(pexpect.EOF, timeout=60)
    finally:
        child.close(force=True)
        child.logfile_read.close()


def transcript(log: Path) -> str:
    return log.read_bytes().decode(errors="replace")[-6000:]


def expect(child: pexpect.spawn, pattern: str, log: Path) -> re.Match[bytes]:
    """Wait for ``pattern``; on EOF or timeout fail with the console transcript."""
    try:
        child.expect(pattern)
    except (pexpect.EOF, pexpect.TIMEOUT) as e:
        child.close(force=True)
        raise AssertionError(f"waiting for {pattern!r}: {type(e).__name__}; console:\n"
                             + transcript(log)) from None
    match: re.Match[bytes] = child.match
    return match


def answer(child: pexpect.spawn, text: bytes) -> None:
    """Type ``text`` and Enter, after a short pause: a program that turns echo off may flush
    input typed ahead of it."""
    child.expect(pexpect.TIMEOUT, timeout=0.5)
    child.send(text + b"\r")


def prompt_wrong_then_right(child: pexpect.spawn, log: Path) -> int:
    """Prompt, wrong passphrase, prompt again, right passphrase; returns the real init's PID."""
    expect(child, PROMPT, log)
    answer(child, b"not-" + PASSPHRASE)
    expect(child, PROMPT, log)
    answer(child, PASSPHRASE)
    pid = int(expect(child, REAL_INIT, log).group(1))
    finish(child, log)
    return pid


def assert_cryptboot_opened(console: str, name: str) -> None:
    """The volume was opened by cryptboot's unlock step, not by a builder's own unlocker."""
    assert f"cryptboot: unlock {name} ..." in console, console[-6000:]
    assert f"cryptboot: {name}: unlocked" in console, console[-6000:]
