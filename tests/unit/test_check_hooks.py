"""The post-build hooks that run ``cryptboot check`` (hooks/check/cryptboot-check, installed by
``make install`` for update-initramfs and kernel-install): off by default, ``yes`` reports,
``strict`` fails the build. A fake cryptboot records its argv; one run uses the real one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

POST_UPDATE = "etc/initramfs/post-update.d/cryptboot-check"
KERNEL_INSTALL = "usr/lib/kernel/install.d/90-cryptboot-check.install"


@pytest.fixture(scope="module")
def dest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("check-hooks") / "root"
    subprocess.run([str(REPO / "tools/install.sh"), str(d), "/usr"], check=True,
                   capture_output=True, env={"PATH": os.environ["PATH"]})
    return d


def fake(tmp_path: Path, rc: int) -> Path:
    prog = tmp_path / "cryptboot"
    prog.write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/argv\necho "error: finding" \nexit {rc}\n')
    prog.chmod(0o755)
    return prog


def hook(dest: Path, rel: str, args: list[str], conf: str | None, cryptboot: Path | str,
         tmp_path: Path) -> subprocess.CompletedProcess[str]:
    conf_path = tmp_path / "default-cryptboot"
    if conf is not None:
        conf_path.write_text(conf)
    env = {"PATH": os.environ["PATH"], "CRYPTBOOT_CHECK_CONF": str(conf_path),
           "CRYPTBOOT": str(cryptboot)}
    return subprocess.run([str(dest / rel), *args], env=env, capture_output=True, text=True)


def test_installed_with_the_command_path(dest: Path) -> None:
    for rel in (POST_UPDATE, KERNEL_INSTALL):
        text = (dest / rel).read_text()
        assert 'cryptboot=${CRYPTBOOT:-/usr/bin/cryptboot}' in text, rel
        assert os.access(dest / rel, os.X_OK)


@pytest.mark.parametrize("conf", [None, "CHECK_AFTER_BUILD=no\n"])
def test_off_by_default(dest: Path, tmp_path: Path, conf: str | None) -> None:
    img = tmp_path / "initrd.img-6.1"
    img.write_bytes(b"x")
    proc = hook(dest, POST_UPDATE, ["6.1", str(img)], conf, fake(tmp_path, 1), tmp_path)
    assert proc.returncode == 0 and proc.stderr == ""
    assert not (tmp_path / "argv").exists()


def test_update_initramfs_reports(dest: Path, tmp_path: Path) -> None:
    img = tmp_path / "initrd.img-6.1"
    img.write_bytes(b"x")
    proc = hook(dest, POST_UPDATE, ["6.1", str(img)], "CHECK_AFTER_BUILD=yes\n",
                fake(tmp_path, 1), tmp_path)
    assert (tmp_path / "argv").read_text() == f"check {img} --kver 6.1\n"
    assert proc.returncode == 0
    assert proc.stderr == f"error: finding\ncryptboot-check: {img} would not boot this " \
                          "machine (see above)\n"


def test_strict_fails_the_build(dest: Path, tmp_path: Path) -> None:
    img = tmp_path / "initrd"
    img.write_bytes(b"x")
    proc = hook(dest, KERNEL_INSTALL, ["add", "6.1", str(tmp_path), "/boot/vmlinuz-6.1",
                                       str(img)], "CHECK_AFTER_BUILD=strict\n",
                fake(tmp_path, 1), tmp_path)
    assert (tmp_path / "argv").read_text() == f"check {img} --kver 6.1\n"
    assert proc.returncode == 1
    proc = hook(dest, KERNEL_INSTALL, ["remove", "6.1", str(tmp_path)],
                "CHECK_AFTER_BUILD=strict\n", fake(tmp_path, 1), tmp_path)
    assert proc.returncode == 0


def test_real_cryptboot_on_a_bad_image(dest: Path, tmp_path: Path) -> None:
    img = tmp_path / "initrd.img-6.1"
    img.write_bytes(b"not an image at all")
    wrapper = tmp_path / "real-cryptboot"
    wrapper.write_text(f"#!/bin/sh\nexec {sys.executable} -m cryptboot \"$@\"\n")
    wrapper.chmod(0o755)
    proc = hook(dest, POST_UPDATE, ["6.1", str(img)], "CHECK_AFTER_BUILD=strict\n", wrapper,
                tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        f"cryptboot: error: {img}: not an initramfs: it starts with 6e6f7420616e, neither a "
        "cpio archive (070701) nor a compressed one",
        f"cryptboot-check: cryptboot check failed on {img} (exit status 2)"]
