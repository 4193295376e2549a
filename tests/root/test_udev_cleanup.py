"""cryptboot.udev.cleanup_db against the real ``udevadm info --cleanup-db`` on the same tree.

Each runs in a mount namespace of its own with a private tmpfs on ``/run`` (udevadm only knows
``/run/udev``): the host's ``/run`` is never touched.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.root
REPO = Path(__file__).resolve().parents[2]

# a database as udevd leaves it: one entry marked db_persist (sticky), two not; link stacks,
# tags and static-node tags for them; a watch entry; a symlink that must never be followed
MAKE_DB = r"""
set -e
d=/run/udev
mkdir -p "$d/data" "$d/links/\x2fdisk\x2fby-uuid\x2fabc" "$d/links/\x2fmapper\x2froot" \
    "$d/tags/systemd" "$d/tags/seat" "$d/static_node-tags/uaccess" "$d/watch"
echo E:A=1 > "$d/data/b252:0"; chmod +t "$d/data/b252:0"
echo E:B=1 > "$d/data/b253:0"
echo E:C=1 > "$d/data/+block:vda"
touch "$d/links/\x2fdisk\x2fby-uuid\x2fabc/b253:0" "$d/links/\x2fmapper\x2froot/b252:0"
touch "$d/tags/systemd/b252:0" "$d/tags/systemd/b253:0" "$d/tags/seat/b253:0"
touch "$d/static_node-tags/uaccess/c10:1" "$d/control" "$TARGET"
ln -s /dev/null "$d/watch/5"
ln -s "$TARGET" "$d/links/evil"
ln -s "$(dirname "$TARGET")" "$d/tags/evildir"
"""


def _cleaned(tmp_path: Path, how: str) -> tuple[list[str], bool]:
    target = tmp_path / f"victim-{how}"
    clean = ("udevadm info --cleanup-db" if how == "udevadm" else
             f"{sys.executable} -c 'from cryptboot import udev; udev.cleanup_db()'")
    script = (f"mount -t tmpfs tmpfs /run && mkdir /run/udev && {MAKE_DB}\n{clean}\n"
              "cd /run/udev && find . | LC_ALL=C sort")
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                          capture_output=True, text=True, cwd=REPO,
                          env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "TARGET": str(target)})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines(), target.exists()


def test_cleanup_db_matches_udevadm(tmp_path: Path) -> None:
    ours, ours_target = _cleaned(tmp_path, "python")
    theirs, theirs_target = _cleaned(tmp_path, "udevadm")
    assert ours == theirs
    assert ours_target and theirs_target  # symlinks removed as names, never followed
    assert "./data/b252:0" in ours and "./data/b253:0" not in ours
    assert "./links/\\x2fmapper\\x2froot/b252:0" in ours
    assert not any("by-uuid" in p or "seat" in p or "uaccess" in p or "evil" in p for p in ours)
    assert "./watch/5" in ours and "./control" in ours
