"""Fixtures shared by the root tier."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def loopdev(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A loop device over a fresh 64 MiB ext4 image (detached afterwards)."""
    img = tmp_path / "fs.img"
    with open(img, "wb") as f:
        f.truncate(64 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "cbtest", str(img)], check=True)
    dev = subprocess.run(["losetup", "--find", "--show", str(img)], check=True,
                         capture_output=True, text=True).stdout.strip()
    try:
        yield dev, img
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)


class Loops:
    def __init__(self) -> None:
        self.attached: list[str] = []

    def attach(self, img: Path, node: str | None = None) -> str:
        if node is None:
            out = subprocess.run(["losetup", "-f", "--show", str(img)], check=True,
                                 capture_output=True, text=True).stdout.strip()
        else:
            subprocess.run(["losetup", node, str(img)], check=True)
            out = node
        self.attached.append(out)
        return out


@pytest.fixture
def loops() -> Iterator[Loops]:
    lp = Loops()
    yield lp
    for node in lp.attached:
        subprocess.run(["losetup", "-d", node], check=False)
