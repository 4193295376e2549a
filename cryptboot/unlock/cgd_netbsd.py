"""The cgd backend on NetBSD: run cgdconfig(8) and answer its passphrase prompt.

Where the kernel has cgd(4), cgdconfig does everything (key generation, configuration, the
verify_method check); cryptboot only types the passphrase it already got from its own prompt,
so the user sees the same prompt, tries and messages as on the dm-crypt path. One call is one
try: when cgdconfig says ``verification failed, please reenter passphrase`` it is stopped and
:class:`WrongKey` raised, and the caller's tries loop asks again.

cgdconfig reads the passphrase with getpass(3), which opens /dev/tty: it needs a terminal, not a
pipe, so this adapter runs it on a pseudo-terminal (stdlib ``pty``), the one place where
cryptboot does not go through :func:`cryptboot.run.run`. (``cgdconfig -p`` reads stdin instead,
but then a failed verification is final and the re-enter prompt cannot be told apart.) The
passphrase goes to the terminal, never into argv or the environment, and is scrubbed from any
output quoted in an error.
"""

from __future__ import annotations

import errno
import os
import select
import signal
import time

from cryptboot import log
from cryptboot.errors import CommandError, CryptbootError, WrongKey
from cryptboot.run import minimal_env, which

PROMPT_END = b"passphrase:"
FAILED = b"verification failed"
MAX_PROMPTS = 8          # a passphrase keygen per prompt, plus re-enter: more means a loop


def _scrub(text: bytes, secret: bytes | None) -> str:
    if secret:
        text = text.replace(secret, b"***")
    return text.decode(errors="replace").replace("\r", "")


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def _stop(pid: int) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                return
            time.sleep(0.02)


def configure(unit: str, device: str, params_path: str, passphrase: bytes | None,
              *, timeout: float = 600.0) -> None:
    """``cgdconfig UNIT DEVICE PARAMSFILE``, answering each passphrase prompt with ``passphrase``.

    Raises :class:`WrongKey` on cgdconfig's verification failure, :class:`CommandError` when it
    fails otherwise.
    """
    import pty
    import termios

    path = which("cgdconfig")
    if path is None:
        raise CommandError("cgdconfig: command not found", argv0="cgdconfig")
    argv = [path, unit, device, params_path]
    log.debug("run: " + " ".join(argv) + " (on a pty)")
    env = minimal_env()
    pid, master = pty.fork()
    if pid == 0:  # child: the pty is its controlling terminal
        try:
            os.execve(path, argv, env)
        finally:
            os._exit(127)
    try:
        attrs = termios.tcgetattr(master)
        attrs[3] &= ~termios.ECHO
        termios.tcsetattr(master, termios.TCSANOW, attrs)
    except termios.error:
        pass
    out = bytearray()
    scan = 0
    prompts = 0
    failed = False
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                _stop(pid)
                raise CommandError(f"cgdconfig: no answer after {timeout:.0f} s, killed",
                                   argv0=path)
            ready, _, _ = select.select([master], [], [], min(left, 1.0))
            if not ready:
                continue
            try:
                chunk = os.read(master, 4096)
            except OSError as e:
                if e.errno == errno.EIO:  # the child closed the terminal
                    break
                raise
            if not chunk:
                break
            out += chunk
            pending = bytes(out[scan:])
            if FAILED in pending:
                failed = True
                _stop(pid)
                break
            if pending.rstrip().endswith(PROMPT_END):
                if passphrase is None:
                    _stop(pid)
                    raise CryptbootError(
                        f"cgdconfig asks for a passphrase for {device} and none was given")
                prompts += 1
                if prompts > MAX_PROMPTS:
                    _stop(pid)
                    raise CommandError(f"cgdconfig asked for a passphrase {prompts} times; "
                                       "stopped it", argv0=path)
                os.write(master, passphrase + b"\n")
                scan = len(out)
    finally:
        os.close(master)
    status = 0
    try:
        _, wstatus = os.waitpid(pid, 0)
        status = os.waitstatus_to_exitcode(wstatus)
    except ChildProcessError:  # already reaped by _stop
        pass
    text = _scrub(bytes(out), passphrase)
    if failed:
        said = next((ln.strip() for ln in text.splitlines() if FAILED.decode() in ln), "")
        raise WrongKey(f"cgd volume {unit}: wrong passphrase or key ({said})")
    if status != 0:
        last = _last_line(text)
        raise CommandError(
            f"cgdconfig failed with exit status {status}" + (f": {last}" if last else ""),
            argv0=path, returncode=status, stderr=text)
