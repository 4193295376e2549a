"""The one wrapper for external commands: exit codes, signals, missing programs, stdin."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from cryptboot.errors import CommandError
from cryptboot.run import run, which


def test_success_captures_output() -> None:
    proc = run([sys.executable, "-c", "print('hello')"])
    assert proc.stdout == b"hello\n"


def test_nonzero_exit_names_command_and_last_stderr_line() -> None:
    with pytest.raises(CommandError) as exc:
        code = "import sys; sys.stderr.write('a\\nthe reason\\n'); sys.exit(3)"
        run([sys.executable, "-c", code])
    assert exc.value.returncode == 3
    assert "failed with exit status 3: the reason" in str(exc.value)
    assert os.path.basename(sys.executable) in str(exc.value)


def test_killed_by_signal_is_named() -> None:
    with pytest.raises(CommandError, match="killed by SIGKILL"):
        run([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"])


def test_missing_program() -> None:
    with pytest.raises(CommandError, match="no-such-program-xyz: command not found") as exc:
        run(["no-such-program-xyz"])
    assert exc.value.hint


def test_check_false_returns_status() -> None:
    assert run([sys.executable, "-c", "raise SystemExit(4)"], check=False).returncode == 4


def test_secret_goes_to_stdin_and_environment_is_minimal() -> None:
    os.environ["CRYPTBOOT_TEST_LEAK"] = "x"
    try:
        code = "import os,sys; d=sys.stdin.buffer.read(); print(d.hex(), sorted(os.environ))"
        proc = run([sys.executable, "-c", code], input=b"s3cret\n")
    finally:
        del os.environ["CRYPTBOOT_TEST_LEAK"]
    out = proc.stdout.decode()
    assert out.startswith(b"s3cret\n".hex())
    assert "CRYPTBOOT_TEST_LEAK" not in out


def test_which_finds_on_path_then_standard_dirs(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    tool = tmp_path / "mytool"
    tool.write_text("#!/bin/sh\n")
    (tmp_path / "notexec").write_text("")
    (tmp_path / "adir").mkdir()
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert which("mytool") == str(tool)
    assert which("notexec") is None          # not executable
    assert which("adir") is None             # a directory is no program
    assert which("sh") in ("/usr/bin/sh", "/bin/sh")   # found in the standard directories
    assert which(str(tool)) == str(tool)     # a path is taken as it is
    monkeypatch.setenv("PATH", "")
    assert which("mytool") is None
