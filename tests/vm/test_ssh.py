"""Remote unlock over SSH in a real boot (issue 14): Debian's dropbear in the image, reached
through QEMU's user network (``restrict=on``) on a forwarded loopback port, with the OpenSSH
client and a test key; the host key pinned from what ``mkinitramfs`` printed.

One boot proves the login path (proofs 1, 2, 3, 5): the offered host key is the printed one,
a stranger's key and a password login are refused, a command asked for runs the prompt instead
(no shell), a wrong passphrase typed over SSH is counted on the session and the console, the
right one boots the real init as PID 1 and the session is closed with a message. A second boot
races the console against an open SSH prompt (proof 4).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pexpect
import pytest

from tests.vm.conftest import BOOT_TIMEOUT, PASSPHRASE, TYPE_DELAY, Machine, Vm, luks_args
from tests.vm.ssh_helpers import (
    PROMPT,
    SshImage,
    build_ssh_image,
    free_port,
    known_hosts,
    scan_host_key,
    ssh_argv,
    user_net,
)

pytestmark = pytest.mark.vm

DENIED = "Permission denied (publickey)."  # the methods dropbear offers: publickey alone


@pytest.fixture(scope="module")
def ssh_image(vmdir: Path, kver: str, pyc_cache: Path) -> SshImage:
    return build_ssh_image(vmdir, kver, pyc_cache)


class Session:
    """An interactive ``ssh -tt`` login driven like a console."""

    def __init__(self, argv: list[str], log: Path) -> None:
        self.child = pexpect.spawn(argv[0], argv[1:], timeout=BOOT_TIMEOUT, maxread=65536)
        self.child.logfile_read = open(log, "wb")  # noqa: SIM115 (closed with the child)
        self.log = log

    def expect(self, pattern: str | type[pexpect.EOF], timeout: float = BOOT_TIMEOUT) -> None:
        try:
            self.child.expect(pattern, timeout=timeout)
        except (pexpect.TIMEOUT, pexpect.EOF):
            self.child.logfile_read.flush()
            raise AssertionError(f"ssh session: no {pattern!r}; it said:\n"
                                 + self.log.read_text(errors="replace")) from None

    def type(self, text: str) -> None:
        import time

        time.sleep(TYPE_DELAY)
        self.child.send(text + "\r")

    @property
    def said(self) -> str:
        self.child.logfile_read.flush()
        return self.log.read_text(errors="replace")

    def close(self) -> None:
        self.child.close(force=True)


def start(machine: Machine, name: str, image: SshImage, disk: Path, port: int,
          cleanup: list[Vm]) -> Vm:
    vm = machine.boot(name, image.path, [disk],
                      f"root=/dev/mapper/root {luks_args()} rd.emergency=poweroff",
                      extra=user_net(port))
    cleanup.append(vm)
    return vm


def test_unlock_over_ssh(machine: Machine, ssh_image: SshImage, luks2_root: Path,
                         vmdir: Path, vm_cleanup: list[Vm]) -> None:
    port = free_port()
    vm = start(machine, "ssh-unlock", ssh_image, luks2_root, port, vm_cleanup)
    vm.expect(PROMPT)  # the console asks as always
    # 5: the host key offered is the one mkinitramfs printed; every login below pins it
    assert scan_host_key(port, BOOT_TIMEOUT) == ssh_image.host_key
    known = known_hosts(vmdir / f"known_hosts-{port}", port, ssh_image.host_key)
    # 3: a key not in authorized_keys is refused, and so is a password login
    for argv in (ssh_argv(port, ssh_image.other_key, known, command=("true",)),
                 ssh_argv(port, ssh_image.key, known, "-o", "PubkeyAuthentication=no",
                          "-o", "PreferredAuthentications=password,keyboard-interactive",
                          command=("true",))):
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=120,
                              stdin=subprocess.DEVNULL, check=False)
        assert proc.returncode == 255 and DENIED in proc.stderr, proc.stderr
    # no shell: a command asked for runs the prompt instead; leaving it costs no try
    cmd = Session(ssh_argv(port, ssh_image.key, known, command=("echo", "SHELL_$((6*7))")),
                  machine.logdir / "ssh-unlock-command-session.log")
    cmd.expect(PROMPT)
    cmd.close()
    assert "SHELL_42" not in cmd.said
    # 1, 2: log in, a wrong passphrase is counted on the session and the console, then boot
    s = Session(ssh_argv(port, ssh_image.key, known, "-tt"),
                machine.logdir / "ssh-unlock-session.log")
    try:
        s.expect(PROMPT)
        s.type("wrong-over-ssh")
        s.expect(r"wrong passphrase for root \(try 1 of 3\)")
        s.expect(PROMPT)
        vm.expect(r"wrong passphrase for root \(try 1 of 3\)")
        s.type(PASSPHRASE)
        s.expect(r"root: unlocked")
        s.expect(r"all volumes are unlocked; the boot goes on\. Closing this session\.")
        s.expect(pexpect.EOF)
    finally:
        s.close()
    facts = vm.real_init()
    assert facts["pid"] == "1", vm.transcript
    assert facts["root_dm"] == "root", vm.transcript
    assert facts["netifs"] == "eth0=down:", vm.transcript  # network down before the hand-off
    assert "(passphrase entered on ssh" in vm.transcript


def test_console_answer_withdraws_the_ssh_prompt(machine: Machine, ssh_image: SshImage,
                                                 luks2_root: Path, vmdir: Path,
                                                 vm_cleanup: list[Vm]) -> None:
    """4: console and SSH both show the prompt; the console answers first, the session is told
    the volume was unlocked elsewhere and is closed."""
    port = free_port()
    vm = start(machine, "ssh-race", ssh_image, luks2_root, port, vm_cleanup)
    vm.expect(PROMPT)
    host_key = scan_host_key(port, BOOT_TIMEOUT)
    known = known_hosts(vmdir / f"known_hosts-{port}", port, host_key)
    s = Session(ssh_argv(port, ssh_image.key, known, "-tt"),
                machine.logdir / "ssh-race-session.log")
    try:
        s.expect(PROMPT)
        vm.type(PASSPHRASE)
        s.expect(r"\(passphrase entered on ttyS0\)")
        s.expect(r"root was unlocked elsewhere \(passphrase entered on ttyS0\)")
        s.expect(r"Closing this session\.")
        s.expect(pexpect.EOF)
    finally:
        s.close()
    facts = vm.real_init()
    assert facts["pid"] == "1", vm.transcript
    assert "root: unlocked" not in s.said  # only the session that typed it is told that


def test_debug_shell_with_cryptboot_ssh_shell(machine: Machine, ssh_image: SshImage,
                                              luks2_root: Path, vmdir: Path,
                                              vm_cleanup: list[Vm]) -> None:
    """cryptboot.ssh.shell=1: a login runs the command asked for (a shell), and
    ``cryptboot ssh-prompt`` in that shell answers the prompt."""
    port = free_port()
    vm = machine.boot("ssh-shell", ssh_image.path, [luks2_root],
                      f"root=/dev/mapper/root {luks_args()} rd.emergency=poweroff "
                      "cryptboot.ssh.shell=1", extra=user_net(port))
    vm_cleanup.append(vm)
    vm.expect(PROMPT)
    known = known_hosts(vmdir / f"known_hosts-{port}", port, scan_host_key(port, BOOT_TIMEOUT))
    proc = subprocess.run(ssh_argv(port, ssh_image.key, known,
                                   command=("echo", "SHELL_$((6*7))", "pid=$$")),
                          capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL, check=False)
    assert proc.returncode == 0 and "SHELL_42 pid=" in proc.stdout, proc.stderr
    s = Session(ssh_argv(port, ssh_image.key, known, "-tt",
                         command=("/usr/bin/cryptboot", "ssh-prompt")),
                machine.logdir / "ssh-shell-session.log")
    try:
        s.expect(PROMPT)
        s.type(PASSPHRASE)
        s.expect(r"root: unlocked")
        s.expect(pexpect.EOF)
    finally:
        s.close()
    facts = vm.real_init()
    assert facts["pid"] == "1", vm.transcript
