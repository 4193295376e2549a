"""SSH unlock pieces (issue 14) without a VM: the prompt served on a unix socket next to a pty
console (the real ``cryptboot ssh-prompt`` client on a pty of its own), dropbear's argv, and the
image's host keys made and converted by the real dropbear tools."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest

from cryptboot.config.plan import build_plan
from cryptboot.errors import CryptbootError
from cryptboot.initramfs import ssh as build_ssh
from cryptboot.initramfs.build import Options
from cryptboot.ssh import FORCED_COMMAND, dropbear_argv
from tests.ptys import Pty, child

REPO = Path(__file__).resolve().parents[2]
PROMPT = r"Please enter passphrase for disk cryptroot \(/dev/vda2\): "

# The boot's side: unlock_with_keys with one pty console and the remote consoles' socket.
UNLOCK = r"""
import json, sys
from cryptboot.config.model import DeviceSpec, SpecKind, Volume, VolumeOptions
from cryptboot.errors import WrongKey
from cryptboot.keys import KeyEnv, prompt, unlock_with_keys
from cryptboot.keys.remote import RemoteConsoles
prompt.remote = RemoteConsoles(sys.argv[1])
print("listening", flush=True)
vol = Volume("cryptroot", DeviceSpec(SpecKind.PATH, "/dev/vda2"), (), VolumeOptions(tries=3))
def opener(key):
    if key.data != b"right one":
        raise WrongKey("No key available with this passphrase.")
try:
    key = unlock_with_keys(vol, "/dev/vda2", KeyEnv(consoles=sys.argv[2:]), opener)
    result = {"ok": key.data.decode(), "last": prompt._last}
except WrongKey as e:
    result = {"error": e.message}
n = prompt.remote.close("closing: the boot goes on")
result["closed"] = n
print(json.dumps(result), flush=True)
"""


# The socket appears while the prompt is already open (cryptboot.ssh opens it in a thread).
LATE = r"""
import json, sys, threading, time
from cryptboot.keys import prompt
from cryptboot.keys.remote import RemoteConsoles
prompt.remote_pending = True
def later():
    time.sleep(1.0)
    prompt.remote = RemoteConsoles(sys.argv[1])
    prompt.remote_pending = False
    print("listening", flush=True)
threading.Thread(target=later).start()
a = prompt.ask("Please enter passphrase for disk cryptroot (/dev/vda2): ", sys.argv[2:])
print(json.dumps({"ok": a.passphrase.decode(), "last": a.console}), flush=True)
"""


@pytest.fixture
def con() -> Iterator[Pty]:
    p = Pty(timeout=15)
    yield p
    p.close()


@pytest.fixture
def sock(tmp_path: Path) -> Path:
    return tmp_path / "run" / "prompt.sock"


def boot_side(sock: Path, *consoles: str) -> subprocess.Popen[str]:
    proc = child(UNLOCK, str(sock), *consoles)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "listening"
    return proc


def client(sock: Path) -> pexpect.spawn:
    """``cryptboot ssh-prompt`` on a pty, as dropbear runs it for a login with a terminal."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return pexpect.spawn(sys.executable, ["-m", "cryptboot", "ssh-prompt", str(sock)],
                         env=env, timeout=15)


def result(proc: subprocess.Popen[str]) -> dict[str, object]:
    import json

    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    data: dict[str, object] = json.loads(out.strip().splitlines()[-1])
    data["log"] = err
    return data


def test_a_socket_opened_while_the_prompt_waits_is_served(sock: Path, con: Pty) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-c", LATE, str(sock), con.path],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    con.console.expect(PROMPT)  # asked before the socket exists
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "listening"
    s = client(sock)
    s.expect(PROMPT)
    s.send("right one\r")
    res = result(proc)
    assert res == {"ok": "right one", "last": "ssh1", "log": res["log"]}


def test_the_socket_is_root_only(sock: Path, con: Pty) -> None:
    proc = boot_side(sock, con.path)
    try:
        assert sock.stat().st_mode & 0o777 == 0o600
        assert sock.parent.stat().st_mode & 0o777 == 0o700
    finally:
        proc.kill()
        proc.wait()


def test_wrong_then_right_over_ssh(sock: Path, con: Pty) -> None:
    """Proof 2 at the unit level: the try is counted on the session and the console; the
    answer wins over the console, which is told where it was typed."""
    proc = boot_side(sock, con.path)
    con.console.expect(PROMPT)
    s = client(sock)
    s.expect(PROMPT)
    s.send("wrong\r")
    s.expect(r"wrong passphrase for cryptroot \(try 1 of 3\)")
    s.expect(PROMPT)
    con.console.expect(r"passphrase entered on ssh1")
    con.console.expect(r"wrong passphrase for cryptroot \(try 1 of 3\)")
    s.send("right one\r")
    s.expect(r"cryptroot: unlocked")
    s.expect(r"closing: the boot goes on")
    s.expect(pexpect.EOF)  # the client ends when the boot closes the session
    res = result(proc)
    assert res["ok"] == "right one" and res["last"] == "ssh1" and res["closed"] == 1
    assert b"right one" not in (s.before or b"")  # never echoed


def test_console_wins_and_sessions_are_told(sock: Path, con: Pty) -> None:
    """Proof 4 at the unit level, with two sessions, one joining while the prompt is open."""
    proc = boot_side(sock, con.path)
    con.console.expect(PROMPT)
    first = client(sock)
    first.expect(PROMPT)
    second = client(sock)  # joins mid-prompt: it gets the prompt too
    second.expect(PROMPT)
    second.send("half typed")  # abandoned
    con.console.send("right one\r")
    tty = os.path.basename(con.path)
    for s in (first, second):
        s.expect(rf"passphrase entered on {tty}")
        s.expect(rf"cryptroot was unlocked elsewhere \(passphrase entered on {tty}\)")
        s.expect(r"closing: the boot goes on")
        s.expect(pexpect.EOF)
    res = result(proc)
    assert res["ok"] == "right one" and res["closed"] == 2


def test_a_session_that_leaves_costs_no_try(sock: Path, con: Pty) -> None:
    proc = boot_side(sock, con.path)
    con.console.expect(PROMPT)
    s = client(sock)
    s.expect(PROMPT)
    s.send("\x03")  # Ctrl-C: the client leaves
    s.expect(r"left the prompt")
    s.expect(pexpect.EOF)
    con.console.send("right one\r")
    res = result(proc)
    assert res["ok"] == "right one" and res["closed"] == 0
    assert "try 1 of 3" not in str(res["log"])


def test_three_wrong_over_ssh_are_reported_there(sock: Path, con: Pty) -> None:
    proc = boot_side(sock, con.path)
    s = client(sock)
    for n in (1, 2, 3):
        s.expect(PROMPT)
        s.send(f"wrong {n}\r")
    s.expect(r"cryptroot: maximum number of tries \(3\) exceeded")
    s.expect(pexpect.EOF)
    assert "could not unlock cryptroot" in str(result(proc)["error"])


def test_client_without_a_boot_says_so(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "cryptboot", "ssh-prompt",
                           str(tmp_path / "none.sock")], capture_output=True, text=True,
                          env=env, stdin=subprocess.DEVNULL, check=False)
    assert proc.returncode == 1
    assert "no passphrase prompt to answer here" in proc.stderr


# ---------------------------------------------------------------------------------------------
# dropbear's argv


def test_dropbear_argv() -> None:
    plan = build_plan("root=/dev/vda cryptboot.ssh=1 cryptboot.ssh.port=2222", None)
    argv = dropbear_argv(plan, ["/etc/dropbear/dropbear_ed25519_host_key"])
    assert argv[:2] == ["/usr/sbin/dropbear", "-F"]
    assert "-s" in argv  # no password logins
    assert "-j" in argv and "-k" in argv  # no port forwarding
    assert argv[argv.index("-p") + 1] == "2222"
    assert argv[argv.index("-r") + 1] == "/etc/dropbear/dropbear_ed25519_host_key"
    assert argv[argv.index("-c") + 1] == FORCED_COMMAND
    shell = build_plan("root=/dev/vda cryptboot.ssh=1 cryptboot.ssh.shell=1", None)
    assert "-c" not in dropbear_argv(shell, [])


# ---------------------------------------------------------------------------------------------
# Host keys and authorized_keys, with the real dropbear tools and ssh-keygen


def tools(*names: str) -> None:
    for name in names:
        if shutil.which(name) is None and not os.path.exists(f"/usr/bin/{name}"):
            pytest.skip(f"needs {name} (apt-get install dropbear-bin openssh-client)")


def opts(tmp: Path, **kw: object) -> Options:
    return Options(output=str(tmp / "out.img"), kver="0", ssh_key_dir=str(tmp / "keys"),
                   **kw)  # type: ignore[arg-type]


def keygen_fingerprint(pubfile: Path) -> str:
    out = subprocess.run(["ssh-keygen", "-l", "-f", str(pubfile)], capture_output=True,
                         text=True, check=True).stdout
    return out.split()[1]


def test_host_key_generated_once_and_kept(tmp_path: Path) -> None:
    tools("dropbearkey", "ssh-keygen")
    (kind, path), = build_ssh.host_keys(opts(tmp_path))
    assert kind == "ed25519"
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert os.stat(tmp_path / "keys").st_mode & 0o777 == 0o700
    first = Path(path).read_bytes()
    public = build_ssh.public_key(path)
    assert public.startswith("ssh-ed25519 AAAA")
    # the next build reuses it: the same fingerprint in every image
    (_, again), = build_ssh.host_keys(opts(tmp_path))
    assert Path(again).read_bytes() == first and build_ssh.public_key(again) == public
    pub = tmp_path / "host.pub"
    pub.write_text(public + "\n")
    assert build_ssh.fingerprint(public) == keygen_fingerprint(pub)


def test_host_keys_converted_from_openssh(tmp_path: Path) -> None:
    """The real system's OpenSSH keys (made here by ssh-keygen) become the image's: the same
    public keys, so clients see no "host key changed" warning."""
    tools("dropbearconvert", "dropbearkey", "ssh-keygen")
    etc_ssh = tmp_path / "etc-ssh"
    etc_ssh.mkdir()
    for kind in ("ed25519", "ecdsa"):
        subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-f",
                        str(etc_ssh / f"ssh_host_{kind}_key")], check=True)
    keys = build_ssh.host_keys(opts(tmp_path, ssh_host_keys_from=str(etc_ssh)))
    assert [k for k, _ in keys] == ["ed25519", "ecdsa"]
    for kind, path in keys:
        original = (etc_ssh / f"ssh_host_{kind}_key.pub").read_text().split()[:2]
        assert build_ssh.public_key(path) == " ".join(original)
        assert os.stat(path).st_mode & 0o777 == 0o600
    with pytest.raises(CryptbootError, match="no OpenSSH host key there"):
        build_ssh.host_keys(opts(tmp_path, ssh_host_keys_from=str(tmp_path / "empty")))


def test_authorized_keys_checked(tmp_path: Path) -> None:
    good = tmp_path / "ak"
    good.write_text("# admins\nfrom=\"10.0.0.0/8\" ssh-ed25519 AAAAC3Nza admin@x\n\n")
    assert build_ssh.authorized_keys(str(good)).startswith(b"# admins")
    bad = tmp_path / "bad"
    bad.write_text("ssh-ed25519 AAAAC3Nza a@b\nhunter2\n")
    with pytest.raises(CryptbootError, match=r"bad:2: expected a public key"):
        build_ssh.authorized_keys(str(bad))
    empty = tmp_path / "empty"
    empty.write_text("# nobody yet\n")
    with pytest.raises(CryptbootError, match="no public key in it"):
        build_ssh.authorized_keys(str(empty))


def test_dropbear_running_reads_proc(tmp_path: Path) -> None:
    """``cryptboot unlock`` serves the prompt when another initramfs' dropbear runs."""
    from cryptboot.ssh import dropbear_running

    for pid, comm in (("1", "init"), ("77", "udevd"), ("self", "python3")):
        (tmp_path / pid).mkdir()
        (tmp_path / pid / "comm").write_text(comm + "\n")
    assert dropbear_running(str(tmp_path)) is False
    (tmp_path / "120").mkdir()
    (tmp_path / "120" / "comm").write_text("dropbear\n")
    assert dropbear_running(str(tmp_path)) is True
