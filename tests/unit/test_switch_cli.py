"""switch-root's busybox-compatible argument parsing, and the CLI edge of its refusals."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from cryptboot import cli, log
from cryptboot.switch import cli as switch_cli
from cryptboot.switch import switch_root as sr


class Called(Exception):
    pass


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Replace the switch itself (proven for real in tests/root) to see the parsed call."""
    seen: dict[str, Any] = {}

    def fake(newroot: str, init: str, args: Any = (), console: Any = None, *,
             force_move: bool = False) -> None:
        seen.update(newroot=newroot, init=init, args=list(args), console=console,
                    force_move=force_move)
        raise Called

    monkeypatch.setattr(sr, "switch_root", fake)
    return seen


@pytest.mark.parametrize("argv, expected", [
    (["/root", "/sbin/init"], ("/root", "/sbin/init", [], None, False)),
    (["-c", "/dev/console", "/root", "/sbin/init", "-c", "x", "--no-pivot"],
     ("/root", "/sbin/init", ["-c", "x", "--no-pivot"], "/dev/console", False)),
    (["-c/dev/tty1", "/root", "/init"], ("/root", "/init", [], "/dev/tty1", False)),
    (["--no-pivot", "/root", "/init", "single"], ("/root", "/init", ["single"], None, True)),
    (["--", "-weird-root", "/init"], ("-weird-root", "/init", [], None, False)),
    (["/root", "/init", "--", "-s"], ("/root", "/init", ["--", "-s"], None, False)),
])
def test_options_stop_at_first_non_option(
    captured: dict[str, Any], argv: list[str], expected: tuple[Any, ...]
) -> None:
    with pytest.raises(Called):
        switch_cli.switch_root_main(argv)
    assert (captured["newroot"], captured["init"], captured["args"], captured["console"],
            captured["force_move"]) == expected


@pytest.mark.parametrize("argv, message", [
    ([], "expected NEWROOT and INIT"),
    (["/root"], "expected NEWROOT and INIT"),
    (["-c"], "-c needs a CONSOLE"),
    (["-x", "/root", "/init"], "unknown option -x"),
])
def test_usage_errors(captured: dict[str, Any], capsys: pytest.CaptureFixture[str],
                      argv: list[str], message: str) -> None:
    assert switch_cli.switch_root_main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "usage: cryptboot switch-root" in err
    assert captured == {}


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert switch_cli.switch_root_main(["-h"]) == 0
    assert "[-c CONSOLE]" in capsys.readouterr().out


def test_not_pid1_is_one_line_and_exit_1(
    tmp_path: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real preflight, not faked: pytest is not PID 1, so nothing may happen."""
    monkeypatch.setattr(log._state, "stream", sys.stderr)  # bound at import, before capsys
    (tmp_path / "marker").write_text("kept")
    assert cli.main(["switch-root", str(tmp_path), "/sbin/init"]) == 1
    err = capsys.readouterr().err
    assert "cryptboot: error: switch-root must run as PID 1 (the init process); found PID" in err
    assert "Traceback" not in err
    assert (tmp_path / "marker").read_text() == "kept"


def test_applet_name_switch_root_dispatches_here() -> None:
    assert cli.APPLETS["switch_root"] == "switch-root"
    assert cli._resolve("switch-root") is switch_cli.switch_root_main
