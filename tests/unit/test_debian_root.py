"""The Debian root helper's error paths (the real bootstrap is the VM tier's
tests/vm/test_systemd_root.py): an unreachable archive is told apart from a failed build."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.vm import debian_root


def fake_mmdebstrap(tmp: Path, monkeypatch: pytest.MonkeyPatch, stderr: str) -> None:
    bindir = tmp / "bin"
    bindir.mkdir()
    prog = bindir / "mmdebstrap"
    prog.write_text(f"#!/bin/sh\ncat >&2 <<'END'\n{stderr}\nEND\nexit 25\n")
    prog.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:/usr/bin:/bin")
    monkeypatch.setattr(debian_root, "apt_mirror", lambda suite="": "http://deb.example/debian")


def test_unreachable_archive_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_mmdebstrap(tmp_path, monkeypatch, "Err:1 http://deb.example/debian bookworm InRelease\n"
                    "  Temporary failure resolving 'deb.example'\n"
                    "E: apt-get update --error-on=any failed")
    with pytest.raises(debian_root.ArchiveUnreachable, match="Temporary failure resolving"):
        debian_root.build_root(tmp_path / "cache")
    assert [p.name for p in (tmp_path / "cache").iterdir()] == []  # nothing half-built kept


def test_other_failures_are_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_mmdebstrap(tmp_path, monkeypatch, "E: unable to locate package systemd-sysv")
    with pytest.raises(AssertionError, match="unable to locate package"):
        debian_root.build_root(tmp_path / "cache")
