"""pivot-root's path checks (refused before any syscall) and ramroot's tree copy."""

from __future__ import annotations

import errno
import os
import stat
import sys
from pathlib import Path

import pytest

from cryptboot import cli, log
from cryptboot.errors import SwitchError
from cryptboot.switch import pivot_root as pr
from cryptboot.switch import ramroot


def test_missing_paths_exit_with_errno(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(log._state, "stream", sys.stderr)  # bound at import, before capsys
    assert cli.main(["pivot-root", str(tmp_path / "nope"), str(tmp_path)]) == errno.ENOENT
    assert "NEW_ROOT " + str(tmp_path / "nope") + ": No such file or directory" in (
        capsys.readouterr().err)


def test_not_a_directory(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("")
    with pytest.raises(SwitchError, match="expected a directory") as e:
        pr.check(str(tmp_path), str(tmp_path / "f"))
    assert e.value.exit_code == errno.ENOTDIR


def test_not_a_mount_point(tmp_path: Path) -> None:
    (tmp_path / "old").mkdir()
    with pytest.raises(SwitchError, match="is not a mount point") as e:
        pr.check(str(tmp_path), str(tmp_path / "old"))
    assert e.value.exit_code == errno.EINVAL


def test_root_is_busy() -> None:
    with pytest.raises(SwitchError, match="is the current root") as e:
        pr.check("/", "/tmp")
    assert e.value.exit_code == errno.EBUSY


def test_put_old_must_be_under_new_root() -> None:
    # /proc is a mount point; /tmp is not under it
    with pytest.raises(SwitchError, match="is not at or under NEW_ROOT") as e:
        pr.check("/proc", "/tmp")
    assert e.value.exit_code == errno.EINVAL


def test_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        cli.main(["pivot-root", "/only-one"])
    assert e.value.code == 2


def test_copy_tree_keeps_links_modes_and_specials(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "a/b").mkdir(parents=True)
    (src / "a/b/file").write_text("data")
    os.chmod(src / "a/b/file", 0o640)
    os.utime(src / "a/b/file", ns=(1_000_000_000, 2_000_000_000))
    os.link(src / "a/b/file", src / "hard")
    os.symlink("/etc/passwd", src / "abs-link")
    os.symlink("a/b", src / "rel-link")
    os.mkfifo(src / "fifo")
    os.chmod(src / "a", 0o700)
    dst.mkdir()
    assert ramroot.copy_tree(str(src), str(dst)) == 7
    assert (dst / "a/b/file").read_text() == "data"
    st = os.stat(dst / "a/b/file")
    assert stat.S_IMODE(st.st_mode) == 0o640 and st.st_mtime_ns == 2_000_000_000
    assert os.stat(dst / "hard").st_ino == st.st_ino
    assert os.readlink(dst / "abs-link") == "/etc/passwd"
    assert os.readlink(dst / "rel-link") == "a/b"
    assert stat.S_ISFIFO(os.lstat(dst / "fifo").st_mode)
    assert stat.S_IMODE(os.stat(dst / "a").st_mode) == 0o700


def test_copy_tree_does_not_cross_mounts(tmp_path: Path) -> None:
    """Copying / stops at mount points: /proc is copied as an empty directory."""
    dst = tmp_path / "dst"
    dst.mkdir()
    src = tmp_path / "src"
    src.mkdir()
    os.symlink("/proc", src / "proc-link")
    ramroot.copy_tree(str(src), str(dst))
    assert os.readlink(dst / "proc-link") == "/proc"
