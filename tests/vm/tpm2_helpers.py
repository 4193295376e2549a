"""An emulated TPM2 for the VM tests: Debian's swtpm, enrolled with the real systemd-cryptenroll.

The host has no TPM (and no CUSE for swtpm's character device), but systemd-cryptenroll takes a
tpm2-tss TCTI as its device: ``--tpm2-device=swtpm:host=127.0.0.1,port=P`` reaches a ``swtpm
socket`` on loopback. That swtpm's state directory is then shut down cleanly (state saved) and
copied for each boot, where another ``swtpm socket`` serves it to QEMU (``-tpmdev emulator``,
``tpm-tis``) through a unix socket. The guest firmware (SeaBIOS) measures into PCRs 0-7, so the
tests seal to PCR 15, which nothing in these boots extends: its value at boot is the reset value.
A policy mismatch is made by extending PCR 15 on the host before enrolling.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

PCR = "15"


def tpm2_missing() -> str | None:
    for tool in ("swtpm", "swtpm_setup", "swtpm_ioctl", "systemd-cryptenroll", "tpm2_pcrextend"):
        if shutil.which(tool) is None:
            return f"needs {tool} (apt-get install swtpm swtpm-tools systemd tpm2-tools)"
    if not list(Path("/usr/lib").glob("*/cryptsetup/libcryptsetup-token-systemd-tpm2.so")):
        return "needs systemd's libcryptsetup-token-systemd-tpm2.so"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _free_port_pair() -> int:
    """A port P with P + 1 free too."""
    for _ in range(50):
        p = _free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", p + 1))
            except OSError:
                continue
        return p
    raise AssertionError("no two free loopback ports in a row")


class HostTpm:
    """``swtpm socket`` on loopback TCP for enrolment; :meth:`close` saves the state."""

    def __init__(self, state: Path) -> None:
        state.mkdir(parents=True, exist_ok=True)
        self.state = state
        self.port = _free_port_pair()
        self.ctrl = self.port + 1  # tpm2-tss's swtpm TCTI finds the control port there
        self.proc = subprocess.Popen(
            ["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={state}",
             "--server", f"type=tcp,port={self.port},bindaddr=127.0.0.1",
             "--ctrl", f"type=tcp,port={self.ctrl},bindaddr=127.0.0.1",
             "--flags", "not-need-init,startup-clear"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        self.tcti = f"swtpm:host=127.0.0.1,port={self.port}"

    def run(self, argv: list[str], env: dict[str, str] | None = None) -> str:
        p = subprocess.run(argv, capture_output=True, env={**os.environ, **(env or {})})
        if p.returncode != 0:
            raise AssertionError(f"{' '.join(argv)}: {p.stderr.decode(errors='replace')}")
        return p.stdout.decode(errors="replace") + p.stderr.decode(errors="replace")

    def extend(self, pcr: str = PCR) -> None:
        """Extend a PCR (its value then differs from the reset value a boot starts with)."""
        self.run(["tpm2_pcrextend", "-T", self.tcti, f"{pcr}:sha256=" + "ab" * 32])

    def enroll(self, image: Path, passphrase: str, pcrs: str = PCR,
               pin: str | None = None) -> str:
        """The real ``systemd-cryptenroll --tpm2-device=`` (the existing passphrase and the
        new PIN through its documented $PASSWORD / $NEWPIN: test secrets, test machine)."""
        argv = ["systemd-cryptenroll", f"--tpm2-device={self.tcti}", f"--tpm2-pcrs={pcrs}"]
        env = {"PASSWORD": passphrase}
        if pin is not None:
            argv.append("--tpm2-with-pin=yes")
            env["NEWPIN"] = pin
        return self.run([*argv, str(image)], env)

    def close(self) -> None:
        subprocess.run(["swtpm_ioctl", "--tcp", f"127.0.0.1:{self.ctrl}", "-s"],
                       capture_output=True)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class GuestTpm:
    """A copy of an enrolled state, served to one QEMU boot over a unix socket."""

    def __init__(self, state: Path, workdir: Path) -> None:
        self.dir = workdir
        if self.dir.exists():
            shutil.rmtree(self.dir)
        shutil.copytree(state, self.dir)
        self.sock = self.dir / "swtpm.sock"
        self.proc = subprocess.Popen(
            ["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={self.dir}",
             "--ctrl", f"type=unixio,path={self.sock}", "--terminate"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(100):
            if self.sock.exists():
                break
            time.sleep(0.05)

    def qemu_args(self) -> list[str]:
        return ["-chardev", f"socket,id=chrtpm,path={self.sock}",
                "-tpmdev", "emulator,id=tpm0,chardev=chrtpm", "-device", "tpm-tis,tpmdev=tpm0"]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
