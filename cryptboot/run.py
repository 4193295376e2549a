"""The one wrapper for external commands.

Every ``cryptsetup``, ``blkid``, ``modprobe``, ``udevadm`` call goes through :func:`run`: it
checks the exit status by default, logs the argv at debug level, runs with a minimal
environment, and turns "not found", "killed by signal" and "exit N" into one
:class:`~cryptboot.errors.CommandError` naming the command.

Secrets are passed with ``input=`` (the child's stdin), never in argv or the environment.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

from cryptboot import log
from cryptboot.errors import CommandError

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def minimal_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """PATH (the caller's, else a standard one), LANG=C and nothing else, plus ``extra``."""
    env = {"PATH": os.environ.get("PATH") or DEFAULT_PATH, "LC_ALL": "C"}
    if extra:
        env.update(extra)
    return env


def which(name: str) -> str | None:
    """Path of ``name`` on PATH or in the standard directories, else None.

    Not ``shutil.which``: importing shutil pulls in bz2 and lzma, a cost on every boot.
    """
    if "/" in name:
        return name if _executable(name) else None
    dirs = (os.environ.get("PATH") or "").split(os.pathsep) + DEFAULT_PATH.split(os.pathsep)
    for d in dirs:
        if d:
            path = os.path.join(d, name)
            if _executable(path):
                return path
    return None


def _executable(path: str) -> bool:
    return os.access(path, os.X_OK) and not os.path.isdir(path)


def run(
    argv: Sequence[str],
    *,
    input: bytes | None = None,
    check: bool = True,
    capture: bool = True,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    cwd: str | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run ``argv`` and return the completed process (stdout/stderr as bytes when captured).

    With ``check`` (the default) a non-zero exit raises :class:`CommandError` whose message
    names the command and quotes the last line of its stderr.
    """
    argv = [str(a) for a in argv]
    log.debug("run: " + " ".join(argv) + (" (with stdin)" if input is not None else ""))
    with _launch_errors(argv, timeout):
        proc = subprocess.run(
            argv,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.PIPE if capture else None,
            env=minimal_env(env),
            timeout=timeout,
            cwd=cwd,
            check=False,
        )
    if check and proc.returncode != 0:
        raise command_error(proc)
    return proc


@contextmanager
def _launch_errors(argv: Sequence[str], timeout: float | None) -> Iterator[None]:
    """"Not found", "not executable" and "no answer" as one :class:`CommandError` each."""
    argv0 = argv[0]
    try:
        yield
    except FileNotFoundError:
        raise CommandError(
            f"{argv0}: command not found", argv0=argv0,
            hint=f"install the package that provides {os.path.basename(argv0)}",
        ) from None
    except PermissionError:
        raise CommandError(f"{argv0}: not executable", argv0=argv0) from None
    except subprocess.TimeoutExpired:
        raise CommandError(f"{argv0}: no answer after {timeout} s, killed",
                           argv0=argv0) from None


class Started:
    """A command started ahead of its input (see :func:`start`)."""

    def __init__(self, argv: list[str], proc: subprocess.Popen[bytes]) -> None:
        self.argv = argv
        self.proc = proc

    def finish(self, input: bytes, *, check: bool = True,
               timeout: float | None = None) -> subprocess.CompletedProcess[bytes]:
        """Give it ``input`` on stdin, wait for it, return it as :func:`run` does."""
        log.debug("run: " + " ".join(self.argv) + " (started earlier; with stdin)")
        with _launch_errors(self.argv, timeout):
            try:
                out, err = self.proc.communicate(input, timeout)
            except subprocess.TimeoutExpired:
                self.cancel()
                raise
        proc = subprocess.CompletedProcess(self.argv, self.proc.returncode, out, err)
        if check and proc.returncode != 0:
            raise command_error(proc)
        return proc

    def cancel(self) -> None:
        """Kill it if it still waits, and reap it."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate()


def start(argv: Sequence[str], *, env: Mapping[str, str] | None = None) -> Started:
    """Start ``argv`` now with stdin, stdout and stderr as pipes; give it its input later with
    :meth:`Started.finish` (a key typed meanwhile: cryptsetup loads and reads the header while
    the prompt waits). Same environment and errors as :func:`run`."""
    argv = [str(a) for a in argv]
    log.debug("start: " + " ".join(argv))
    with _launch_errors(argv, None):
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=minimal_env(env))
    return Started(argv, proc)


def command_error(proc: subprocess.CompletedProcess[bytes]) -> CommandError:
    """The :class:`CommandError` describing a finished process that failed."""
    argv = [str(a) for a in proc.args]
    name = os.path.basename(argv[0])
    stderr = (proc.stderr or b"").decode(errors="replace").strip()
    if proc.returncode < 0:
        try:
            sig = signal.Signals(-proc.returncode).name
        except ValueError:
            sig = f"signal {-proc.returncode}"
        what = f"{name} was killed by {sig}"
    else:
        what = f"{name} failed with exit status {proc.returncode}"
    last = stderr.splitlines()[-1] if stderr else ""
    if last:
        what += f": {last}"
    return CommandError(what, argv0=argv[0], returncode=proc.returncode, stderr=stderr)
