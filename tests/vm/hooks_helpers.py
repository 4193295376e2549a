"""Shared parts of the dracut and initramfs-tools hook tests (tests/vm/test_hooks_*.py).

A LUKS2 disk whose root filesystem's ``/sbin/init`` prints ``REAL_INIT_REACHED pid=N`` and
powers off, the installed tree of ``make install``, and one QEMU boot driven with pexpect.
Everything is real: cryptsetup formats the disk, the distribution's dracut / mkinitramfs build
the image, the Debian kernel boots it under TCG.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pexpect

from tests.conftest import REPO

LUKS_UUID = "5e1f0000-aaaa-4bbb-8ccc-0000000000c6"
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


@dataclass(frozen=True)
class Disk:
    image: Path
    keyfile: Path   # 0600, 64 random bytes, a second keyslot of the disk


def make_disk(work: Path) -> Disk:
    """A 40 MiB LUKS2 image (pbkdf2, 1000 iterations: fast under TCG) with two keyslots."""
    root = work / "rootfs"
    for d in ("bin", "sbin", "dev", "proc", "sys", "run", "tmp", "etc"):
        (root / d).mkdir(parents=True, exist_ok=True)
    busybox = shutil.which("busybox") or "/bin/busybox"
    shutil.copy2(busybox, root / "bin/busybox")
    for applet in ("sh", "mount", "poweroff", "echo"):
        (root / "bin" / applet).symlink_to("busybox")
    init = root / "sbin/init"
    init.write_text(REAL_INIT_SCRIPT)
    init.chmod(0o755)
    # systemd-based initrds refuse to switch into a root without os-release
    (root / "etc/os-release").write_text("NAME=cryptboot-test\nID=cryptboot-test\n")
    image = work / "disk.img"
    with open(image, "wb") as f:
        f.truncate(40 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "realroot", "-d", str(root), str(image), "20M"],
                   check=True)
    fast = ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"]
    subprocess.run(["cryptsetup", "reencrypt", "--encrypt", "--type", "luks2",
                    "--reduce-device-size", "16M", "-q", "--uuid", LUKS_UUID, str(image),
                    "--key-file=-", *fast], input=PASSPHRASE, check=True, capture_output=True)
    keyfile = work / "keys" / "root.key"
    keyfile.parent.mkdir(mode=0o700)
    fd = os.open(keyfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(os.urandom(64))
    subprocess.run(["cryptsetup", "luksAddKey", "-q", "--key-file=-", *fast, str(image),
                    str(keyfile)], input=PASSPHRASE, check=True, capture_output=True)
    return Disk(image, keyfile)


def make_install(destdir: Path) -> Path:
    """``make install DESTDIR=destdir``; returns destdir."""
    subprocess.run(["make", "-s", "-C", str(REPO), "install", f"DESTDIR={destdir}"], check=True,
                   capture_output=True)
    return destdir


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


def no_prompt_then_init(child: pexpect.spawn, log: Path) -> int:
    """The keyfile case: the real init comes up without any passphrase prompt."""
    try:
        index = child.expect([PROMPT, REAL_INIT])
    except (pexpect.EOF, pexpect.TIMEOUT) as e:
        child.close(force=True)
        raise AssertionError(f"no real init: {type(e).__name__}; console:\n"
                             + transcript(log)) from None
    assert index == 1, "asked for a passphrase although the keyfile opens the disk:\n" + \
        transcript(log)
    pid = int(child.match.group(1))
    finish(child, log)
    return pid


def assert_cryptboot_unlocked(log: Path) -> None:
    """The volume was opened by cryptboot (its step line), not by a builder's own unlocker."""
    text = log.read_bytes().decode(errors="replace")
    assert re.search(r"cryptboot: unlock \S+ \.\.\.", text), "no cryptboot unlock step:\n" + \
        transcript(log)
