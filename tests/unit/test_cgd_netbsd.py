"""The NetBSD adapter against a stand-in ``cgdconfig`` on PATH.

The stand-in behaves like cgdconfig(8) configuring ``cgdN DEV PARAMSFILE`` with a passphrase
keygen: it prompts ``<dev>'s passphrase:`` on /dev/tty with echo off (getpass(3)), optionally asks
``re-enter device's passphrase:`` (verify_method re-enter), and on a wrong passphrase prints
``cgdconfig: verification failed, please reenter passphrase`` and prompts again.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from cryptboot.errors import CommandError, CryptbootError, WrongKey
from cryptboot.unlock import cgd, cgd_netbsd

STANDIN = r"""#!/bin/sh
d="$(dirname "$0")"
printf '%s\n' "$@" > "$d/argv"
echo $$ > "$d/pid"
if [ -f "$d/fail" ]; then
    echo "cgdconfig: $(cat "$d/fail")" >&2
    exit 1
fi
ask() {
    printf '%s' "$1" > /dev/tty
    stty -echo < /dev/tty
    IFS= read -r pw < /dev/tty
    stty echo < /dev/tty
    printf '\n' > /dev/tty
}
while :; do
    ask "$2's passphrase:"
    if [ -f "$d/reenter" ]; then
        first="$pw"
        ask "re-enter device's passphrase:"
        [ "$pw" = "$first" ] || pw="mismatch"
    fi
    printf '%s' "$pw" >> "$d/typed"
    if [ "$pw" = "$(cat "$d/expected")" ]; then
        echo configured > "$d/state"
        exit 0
    fi
    echo "cgdconfig: verification failed, please reenter passphrase" >&2
done
"""


@pytest.fixture
def standin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    script = bindir / "cgdconfig"
    script.write_text(STANDIN)
    script.chmod(0o755)
    (bindir / "expected").write_text("open sesame")
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    return bindir


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_answers_prompt_on_the_terminal(standin: Path) -> None:
    cgd_netbsd.configure("cgd0", "/dev/wd0e", "/etc/cgd/wd0e", b"open sesame", timeout=30)
    assert (standin / "state").read_text().strip() == "configured"
    assert (standin / "argv").read_text().splitlines() == ["cgd0", "/dev/wd0e", "/etc/cgd/wd0e"]
    assert (standin / "typed").read_text() == "open sesame"  # exactly, newline ended the line


def test_wrong_passphrase_stops_cgdconfig_and_is_wrong_key(standin: Path) -> None:
    with pytest.raises(WrongKey) as ei:
        cgd_netbsd.configure("cgd0", "/dev/wd0e", "/etc/cgd/wd0e", b"guess", timeout=30)
    assert "verification failed, please reenter passphrase" in str(ei.value)
    assert "guess" not in str(ei.value)
    assert not (standin / "state").exists()
    pid = int((standin / "pid").read_text())
    deadline = time.monotonic() + 5
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid)  # not left waiting at its re-prompt
    assert (standin / "typed").read_text() == "guess"  # one try per call


def test_reenter_prompt_gets_the_same_passphrase(standin: Path) -> None:
    (standin / "reenter").write_text("")
    cgd_netbsd.configure("cgd1", "/dev/ld1e", "/etc/cgd/ld1e", b"open sesame", timeout=30)
    assert (standin / "state").read_text().strip() == "configured"


def test_other_failure_is_a_command_error(standin: Path) -> None:
    (standin / "fail").write_text('can\'t open cgd "cgd0", "/dev/rcgd0d"')
    with pytest.raises(CommandError, match='exit status 1: cgdconfig: can\'t open cgd "cgd0"'):
        cgd_netbsd.configure("cgd0", "/dev/wd0e", "/etc/cgd/wd0e", b"open sesame", timeout=30)


def test_prompt_without_passphrase(standin: Path) -> None:
    with pytest.raises(CryptbootError, match="asks for a passphrase for /dev/wd0e and none"):
        cgd_netbsd.configure("cgd0", "/dev/wd0e", "/etc/cgd/wd0e", None, timeout=30)


def test_open_cgd_uses_cgdconfig_on_netbsd(standin: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "netbsd10")
    cgd.open_cgd("cgd0", "/dev/wd0e", "/etc/cgd/wd0e", b"open sesame")
    assert (standin / "state").read_text().strip() == "configured"
    with pytest.raises(WrongKey):
        cgd.open_cgd("cgd0", "/dev/wd0e", "/etc/cgd/wd0e", b"nope")
