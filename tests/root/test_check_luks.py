"""``cryptboot check`` on a real loop-device LUKS volume (root tier).

The host has no device-mapper, so the "stack" is a LUKS2 loop device and the plan that unlocks
it (an image's /etc/crypttab, root=/dev/mapper/cryptroot). check runs in a mount + network
namespace against the real /sys and /dev (``--root`` is a tree linking to them, whose
mountinfo says / is a tmpfs, as in a namespace: no host disk is part of the check). It finds the
device by its UUID with blkid, reads the cipher from the LUKS header with luksDump, tests the
image's keyfile with ``cryptsetup open --test-passphrase``, and must leave everything as it was.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.check_facts import image_without

pytestmark = pytest.mark.root
CRYPTBOOT = [sys.executable, "-m", "cryptboot"]


def kver() -> str:
    found = sorted(Path("/boot").glob("vmlinuz-*-cloud-amd64"))
    if not found:
        pytest.skip("no /boot/vmlinuz-*-cloud-amd64 (apt-get install linux-image-cloud-amd64)")
    return found[-1].name[len("vmlinuz-"):]


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("check-luks")


@pytest.fixture(scope="module")
def luks_loop(work: Path) -> Iterator[dict[str, str]]:
    """A 20 MiB LUKS2 file (a 64-byte keyfile slot) on a loop device."""
    if os.geteuid() != 0:
        pytest.skip("needs root (losetup)")
    img = work / "luks.img"
    with open(img, "wb") as f:
        f.truncate(20 << 20)
    key = work / "root.key"
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(os.urandom(64))
    u = str(uuid.uuid4())
    subprocess.run(["cryptsetup", "luksFormat", "-q", "--type", "luks2", "--uuid", u,
                    "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", str(img),
                    str(key)], check=True, capture_output=True)
    dev = subprocess.run(["losetup", "--find", "--show", str(img)], check=True,
                         capture_output=True, text=True).stdout.strip()
    try:
        yield {"img": str(img), "dev": dev, "uuid": u, "key": str(key)}
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)


@pytest.fixture(scope="module")
def images(work: Path, luks_loop: dict[str, str]) -> dict[str, Path]:
    crypttab = work / "crypttab"
    crypttab.write_text(f"cryptroot UUID={luks_loop['uuid']} /etc/keys/root.key "
                        "luks,headless=true\n")
    full = work / "full.img"
    subprocess.run([*CRYPTBOOT, "mkinitramfs", "-o", str(full), "--kver", kver(),
                    "--crypttab", str(crypttab), "--keyfile",
                    f"{luks_loop['key']}:/etc/keys/root.key", "--compress", "gzip",
                    "--cache-dir", str(work / "pyc")], check=True, capture_output=True)
    lacking = image_without(full, work / "no-xts.img",
                            lambda p: os.path.basename(p).split(".ko")[0] == "xts")
    return {"full": full, "lacking": lacking}


@pytest.fixture(scope="module")
def tree(work: Path) -> Path:
    root = work / "root"
    (root / "proc/self").mkdir(parents=True)
    (root / "sys").symlink_to("/sys")
    (root / "dev").symlink_to("/dev")
    (root / "proc/self/mountinfo").write_text("1 0 0:40 / / rw - tmpfs tmpfs rw\n")
    return root


def state(luks: dict[str, str]) -> tuple[str, list[str], list[str], str]:
    holders = os.listdir(f"/sys/class/block/{os.path.basename(luks['dev'])}/holders")
    mapper = sorted(os.listdir("/dev/mapper")) if os.path.isdir("/dev/mapper") else []
    with open(luks["img"], "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    with open("/proc/self/mountinfo") as f:
        mounts = f.read()
    return digest, holders, mapper, mounts


def check(image: Path, tree: Path) -> tuple[int, dict[str, object]]:
    proc = subprocess.run(["unshare", "--mount", "--net", "--propagation", "private",
                           *CRYPTBOOT, "check", str(image), "--kver", kver(), "--cmdline",
                           "root=/dev/mapper/cryptroot", "--root", str(tree), "--json"],
                          capture_output=True, text=True)
    assert proc.returncode in (0, 1), proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def test_image_lacking_the_cipher_module(images: dict[str, Path], tree: Path,
                                         luks_loop: dict[str, str]) -> None:
    before = state(luks_loop)
    rc, report = check(images["lacking"], tree)
    findings = report["findings"]
    assert isinstance(findings, list)
    assert [f["message"] for f in findings] == [
        f"module xts (cipher aes-xts-plain64 of LUKS volume cryptroot on {luks_loop['dev']}) "
        "is not in the image"], report
    assert rc == 1 and report["boots"] is False
    assert state(luks_loop) == before


def test_image_with_the_cipher_module(images: dict[str, Path], tree: Path,
                                      luks_loop: dict[str, str]) -> None:
    before = state(luks_loop)
    rc, report = check(images["full"], tree)
    assert report["findings"] == [] and rc == 0, report
    checked = report["checked"]
    assert isinstance(checked, dict)
    assert checked["volumes"] == [f"cryptroot: UUID={luks_loop['uuid']} is {luks_loop['dev']}"]
    assert checked["keyfiles"] == ["/etc/keys/root.key: the image's copy opens cryptroot"]
    assert state(luks_loop) == before


def test_wrong_keyfile_in_the_image(images: dict[str, Path], tree: Path, work: Path,
                                    luks_loop: dict[str, str]) -> None:
    other = work / "other.key"
    other.write_bytes(os.urandom(64))
    other.chmod(0o600)
    crypttab = work / "crypttab"
    wrong = work / "wrong.img"
    subprocess.run([*CRYPTBOOT, "mkinitramfs", "-o", str(wrong), "--kver", kver(),
                    "--crypttab", str(crypttab), "--keyfile", f"{other}:/etc/keys/root.key",
                    "--compress", "gzip", "--cache-dir", str(work / "pyc")], check=True,
                   capture_output=True)
    rc, report = check(wrong, tree)
    findings = report["findings"]
    assert isinstance(findings, list)
    assert [f["message"] for f in findings] == [
        f"keyfile /etc/keys/root.key in the image does not open volume cryptroot "
        f"({wrong}:/etc/crypttab:1) (cryptsetup open --test-passphrase)"], report
    assert rc == 1


def test_root_inside_a_volume_not_open_here(images: dict[str, Path], tree: Path) -> None:
    """root=LABEL= cannot be seen while cryptroot is not open (no device-mapper here): a
    warning that says so, not an error."""
    proc = subprocess.run([*CRYPTBOOT, "check", str(images["full"]), "--kver", kver(),
                           "--cmdline", "root=LABEL=realroot", "--root", str(tree)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc
    assert proc.stdout.splitlines()[0] == (
        "warning: root=LABEL=realroot is no device on this system now; it may be inside "
        "cryptroot, which is not open here, so it is not checked")
