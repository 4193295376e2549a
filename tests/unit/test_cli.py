"""The command dispatcher: usage, unknown commands, errors become one line."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cryptboot import cli
from cryptboot.errors import ConfigError


def test_usage_lists_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert name in out


def test_no_command_is_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 2


def test_unknown_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


def test_error_becomes_one_line_with_hint(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def boom(argv: list[str]) -> int:
        raise ConfigError("expected NAME DEVICE, found 1 field", file="/etc/crypttab", line=4,
                          hint="see crypttab(5)")

    monkeypatch.setattr(cli, "_resolve", lambda name: boom)
    assert cli.main(["plan"]) == 2
    err = capsys.readouterr().err
    assert "cryptboot: error: /etc/crypttab:4: expected NAME DEVICE, found 1 field" in err
    assert "hint: see crypttab(5)" in err
    assert "Traceback" not in err


def test_every_command_module_imports() -> None:
    """Each registered subcommand resolves to a callable (no dangling table entries)."""
    for name in cli.COMMANDS:
        assert callable(cli._resolve(name)), name


def test_python_m_entry() -> None:
    proc = subprocess.run([sys.executable, "-m", "cryptboot", "--version"],
                          capture_output=True, text=True, check=True)
    assert proc.stdout.startswith("cryptboot ")
