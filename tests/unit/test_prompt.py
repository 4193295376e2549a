"""The console prompt, driven with pexpect on real ptys: one console, and two at once.

The prompting code runs in a child process whose "consoles" are the slave ends of ptys made
here; the test types on the master ends with pexpect, like a user at a serial line. The child
reports what the prompt returned on its stdout (a pipe, not a console).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest

from cryptboot.keys.prompt import _Console, active_consoles, prompt_text
from tests.ptys import Pty, child

REPO = Path(__file__).resolve().parents[2]

ASK = r"""
import json, sys
from cryptboot.keys.prompt import ask
timeout = float(sys.argv[1]) or None
a = ask("Please enter passphrase for disk cryptroot (/dev/vda2): ", sys.argv[2:], timeout)
print(json.dumps({"pw": a.passphrase.hex() if a.passphrase is not None else None,
                  "console": a.console, "reason": a.reason}), flush=True)
"""

TRIES = r"""
import json, sys
from cryptboot.config.model import DeviceSpec, SpecKind, Volume, VolumeOptions
from cryptboot.errors import WrongKey
from cryptboot.keys import KeyEnv, unlock_with_keys
tries = int(sys.argv[1])
vol = Volume("cryptroot", DeviceSpec(SpecKind.PATH, "/dev/vda2"), (),
             VolumeOptions(tries=tries, timeout=float(sys.argv[2])))
def opener(key):
    if key.data != b"right one":
        raise WrongKey("No key available with this passphrase.")
env = KeyEnv(consoles=sys.argv[3:])
try:
    key = unlock_with_keys(vol, "/dev/vda2", env, opener)
    print(json.dumps({"ok": key.data.decode(), "cached": env.cache.candidates()[0].decode()}))
except WrongKey as e:
    print(json.dumps({"error": e.message}))
"""


@pytest.fixture
def ptys() -> Iterator[list[Pty]]:
    made = [Pty(), Pty()]
    yield made
    for p in made:
        p.close()


def outcome(proc: subprocess.Popen[str]) -> dict[str, object]:
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    result: dict[str, object] = json.loads(out.strip().splitlines()[-1])
    result["log"] = err
    return result


PROMPT = "Please enter passphrase for disk cryptroot \\(/dev/vda2\\): "


def test_one_console_echo_off_and_line_editing(ptys: list[Pty]) -> None:
    con = ptys[0]
    proc = child(ASK, "0", con.path)
    con.console.expect(PROMPT)
    # typo fixed with Backspace, a whole wrong line dropped with Ctrl-U
    con.console.send("garbage")
    con.console.send("\x15")
    con.console.send("s3cret!x\x7f")
    con.console.send(" pass\r")
    res = outcome(proc)
    assert bytes.fromhex(str(res["pw"])) == b"s3cret! pass"
    assert res["console"] == con.path
    # nothing typed was echoed back
    con.console.expect(pexpect.TIMEOUT, timeout=0.3)
    assert b"s3cret" not in (con.console.before or b"")


def test_utf8_backspace_removes_a_whole_character(ptys: list[Pty]) -> None:
    con = ptys[0]
    proc = child(ASK, "0", con.path)
    con.console.expect(PROMPT)
    con.console.send("pässé".encode())
    con.console.send("\x7f")
    con.console.send("e\n")
    assert bytes.fromhex(str(outcome(proc)["pw"])) == "pässe".encode()


def test_two_consoles_answer_on_the_second(ptys: list[Pty]) -> None:
    first, second = ptys
    proc = child(ASK, "0", first.path, second.path)
    first.console.expect(PROMPT)
    second.console.expect(PROMPT)
    first.console.send("half typed on the first")  # abandoned: each console has its own line
    second.console.send("from the serial line\r")
    res = outcome(proc)
    assert bytes.fromhex(str(res["pw"])) == b"from the serial line"
    assert res["console"] == second.path
    first.console.expect(f"passphrase entered on {os.path.basename(second.path)}")


def test_eof_is_a_failed_try(ptys: list[Pty]) -> None:
    con = ptys[0]
    proc = child(ASK, "0", con.path)
    con.console.expect(PROMPT)
    con.console.send("\x04")
    res = outcome(proc)
    assert res["pw"] is None and res["reason"] == "eof"


def test_ctrl_c_is_a_failed_try(ptys: list[Pty]) -> None:
    first, second = ptys
    proc = child(ASK, "0", first.path, second.path)
    second.console.expect(PROMPT)
    second.console.send("abc\x03")
    res = outcome(proc)
    assert res["pw"] is None and res["reason"] == "interrupt"
    first.console.expect("prompt cancelled on")


def test_timeout(ptys: list[Pty]) -> None:
    con = ptys[0]
    proc = child(ASK, "0.5", con.path)
    con.console.expect(PROMPT)
    con.console.expect("no passphrase entered within 0.5 s")
    res = outcome(proc)
    assert res["pw"] is None and res["reason"] == "timeout"


def test_a_console_that_goes_away_leaves_the_other(ptys: list[Pty]) -> None:
    first, second = ptys
    proc = child(ASK, "0", first.path, second.path)
    first.console.expect(PROMPT)
    second.console.expect(PROMPT)
    os.close(first.master)  # hang-up: the first console's reads now fail
    second.console.send("still here\r")
    res = outcome(proc)
    assert bytes.fromhex(str(res["pw"])) == b"still here"


def test_wrong_wrong_right_on_two_consoles(ptys: list[Pty]) -> None:
    first, second = ptys
    proc = child(TRIES, "3", "0", first.path, second.path)
    first.console.expect(PROMPT)
    first.console.send("wrong 1\r")
    first.console.expect("wrong passphrase for cryptroot \\(try 1 of 3\\)")
    second.console.expect("wrong passphrase for cryptroot \\(try 1 of 3\\)")
    second.console.expect(PROMPT)
    second.console.send("wrong 2\r")
    first.console.expect("wrong passphrase for cryptroot \\(try 2 of 3\\)")
    first.console.expect(PROMPT)
    first.console.send("right one\r")
    res = outcome(proc)
    assert res["ok"] == "right one" and res["cached"] == "right one"
    assert "wrong passphrase for cryptroot (try 2 of 3)" in str(res["log"])


def test_three_wrong_fail_and_eof_counts(ptys: list[Pty]) -> None:
    con = ptys[0]
    proc = child(TRIES, "3", "0", con.path)
    con.console.expect(PROMPT)
    con.console.send("nope\r")
    con.console.expect("try 1 of 3")
    con.console.expect(PROMPT)
    con.console.send("\x04")
    con.console.expect("no passphrase given \\(end of input\\) for cryptroot \\(try 2 of 3\\)")
    con.console.send("nope again\r")
    res = outcome(proc)
    assert "could not unlock cryptroot" in str(res["error"])
    assert "maximum number of tries (3) exceeded" in str(res["log"])


def test_prompt_timeout_counts_as_a_try(ptys: list[Pty]) -> None:
    con = ptys[0]
    proc = child(TRIES, "2", "0.3", con.path)
    con.console.expect("no passphrase entered within 0.3 s for cryptroot \\(try 1 of 2\\)")
    res = outcome(proc)
    assert "error" in res and "2 passphrase tries" in str(res["error"])


def test_active_consoles(tmp_path: Path) -> None:
    active = tmp_path / "active"
    active.write_text("ttyS1 ttyS0\n")
    none = str(tmp_path / "missing")
    assert active_consoles(str(active), none) == ["/dev/ttyS1", "/dev/ttyS0"]
    assert active_consoles(none, none) == ["/dev/console"]
    # the kernel enables one serial console per driver; the others named are asked on too
    cmdline = tmp_path / "cmdline"
    cmdline.write_text("quiet console=ttyS1 console=tty,115200n8 console=nosuchtty7 "
                       "console=ttyS1 -- console=null\n")
    active.write_text("ttyS1\n")
    assert active_consoles(str(active), str(cmdline)) == ["/dev/ttyS1", "/dev/tty"]


def test_feed_escape_sequences_and_controls() -> None:
    con = _Console("/dev/null", -1)
    assert con.feed(b"ab\x1b[Ac\x01d") is None  # arrow key and Ctrl-A ignored
    assert bytes(con.buf) == b"abcd"
    assert con.feed(b"\x04") is None  # Ctrl-D on a non-empty line is not EOF
    assert con.feed(b"\r") == "enter"


def test_prompt_text_names_volume_and_device() -> None:
    assert prompt_text("home", "/dev/sdb1") == \
        "Please enter passphrase for disk home (/dev/sdb1): "


def test_a_console_that_cannot_be_opened_is_skipped(ptys: list[Pty], tmp_path: Path) -> None:
    con = ptys[0]
    proc = child(ASK, "0", str(tmp_path / "no-such-tty"), con.path)
    con.console.expect(PROMPT)
    con.console.send("ok\r")
    assert bytes.fromhex(str(outcome(proc)["pw"])) == b"ok"


def test_no_console_at_all(tmp_path: Path) -> None:
    proc = child(ASK, "0", str(tmp_path / "no-such-tty"))
    res = outcome(proc)
    assert res["pw"] is None and res["reason"] == "no-console"
    assert "no console to ask for a passphrase on" in str(res["log"])
