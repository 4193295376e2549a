"""Pseudo-terminals for the prompt tests: a console the code under test opens by its path, driven
from the master side with pexpect, and the child process that runs the code under test."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pexpect.fdpexpect

REPO = Path(__file__).resolve().parents[1]


class Pty:
    """One pty pair: ``path`` names the slave (the console), ``console`` reads and types on the
    master."""

    def __init__(self, timeout: float = 10) -> None:
        self.master, self.slave = os.openpty()
        self.path = os.ttyname(self.slave)
        self.console = pexpect.fdpexpect.fdspawn(self.master, timeout=timeout)

    def close(self) -> None:
        for fd in (self.master, self.slave):
            try:
                os.close(fd)
            except OSError:
                pass


def child(code: str, *args: str) -> subprocess.Popen[str]:
    """Run *code* with this checkout's cryptboot importable, in its own session (no controlling
    terminal: the code opens its consoles by path, as the boot does), stdin closed."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env,
                            stdin=subprocess.DEVNULL, start_new_session=True)
