"""The default image (zstd) is reproducible: builds in different directories (output, working
directory, a fresh .pyc cache each), at different times, are byte-identical, with
``SOURCE_DATE_EPOCH`` unset (every mtime 0) and set (every mtime that value).

The "set" pair reuses the VM tier's default image (tests/vm/conftest.py ``image``: zstd,
``--crypttab none``, ``SOURCE_DATE_EPOCH=1700000000``), built earlier in the session in another
directory with another cache, so only three more builds are paid for (~25 s each under TCG load).
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.vm.conftest import CRYPTBOOT

pytestmark = pytest.mark.vm
EPOCH = "1700000000"  # as the fixture's


def build(where: Path, kver: str, epoch: str | None) -> bytes:
    where.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if k != "SOURCE_DATE_EPOCH"}
    if epoch is not None:
        env["SOURCE_DATE_EPOCH"] = epoch
    out = where / "out" / "initrd.img"
    out.parent.mkdir()
    proc = subprocess.run([*CRYPTBOOT, "mkinitramfs", "-o", str(out), "--kver", kver,
                           "--crypttab", "none", "--cache-dir", str(where / "pyc")],
                          cwd=where, env=env, capture_output=True, check=False)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    assert b"(zstd)" in proc.stderr, proc.stderr  # the default compression
    return out.read_bytes()


def cpio_mtime(image: bytes) -> int:
    """The mtime field of the first newc header of a zstd image."""
    raw = subprocess.run(["zstd", "-d", "-c", "-q"], input=image, capture_output=True,
                         check=True).stdout
    assert raw[:6] == b"070701", raw[:6]
    return int(raw[6 + 5 * 8:6 + 6 * 8], 16)


def test_default_image_is_byte_identical(tmp_path: Path, kver: str, image: Path) -> None:
    unset_a = build(tmp_path / "a", kver, None)
    time.sleep(1.1)  # another second on the clock
    unset_b = build(tmp_path / "elsewhere" / "b", kver, None)
    assert unset_a == unset_b, "two builds with SOURCE_DATE_EPOCH unset differ"
    assert cpio_mtime(unset_a) == 0

    set_b = build(tmp_path / "c", kver, EPOCH)
    assert set_b == image.read_bytes(), "two builds with SOURCE_DATE_EPOCH set differ"
    assert cpio_mtime(set_b) == int(EPOCH)
