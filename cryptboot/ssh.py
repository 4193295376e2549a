"""Remote unlock over SSH: Debian's dropbear in the initramfs (issue 14).

Started when the plan says ``cryptboot.ssh=1`` (an image built with authorized keys has it in
its default command line). :func:`start` returns at once: a thread opens the prompt's socket
(:class:`cryptboot.keys.remote.RemoteConsoles`; a prompt already open picks it up, see
``prompt.remote_pending``) and starts dropbear, so neither costs the boot's main thread:

    dropbear -F -E -s -j -k -p PORT -P PIDFILE -r KEY... -c '/usr/bin/cryptboot ssh-prompt'

``-s``: public-key logins only (no password logins); ``-j -k``: no port forwarding; ``-c``: every
login runs the forced command, which relays the boot's prompt (``cryptboot.ssh.shell=1`` leaves
``-c`` out: a shell, for debugging, where ``cryptboot ssh-prompt`` answers the prompt). Its log
goes to ``/run/cryptboot/dropbear.log`` (never over the console's prompt) and into the kernel
log when it stops.

:func:`stop`, before the hand-off: every session is told why it closes and closed, dropbear and
its per-connection processes are ended, and the socket is removed.
"""

from __future__ import annotations

import os
import signal
import threading
import time

from cryptboot import log
from cryptboot.config.model import Plan

TYPE_CHECKING = False
if TYPE_CHECKING:
    import subprocess

    from cryptboot.keys.remote import RemoteConsoles

DROPBEAR = "/usr/sbin/dropbear"
HOST_KEYS = "/etc/dropbear/dropbear_*_host_key"
FORCED_COMMAND = "/usr/bin/cryptboot ssh-prompt"
PIDFILE = "/run/cryptboot/dropbear.pid"
LOGFILE = "/run/cryptboot/dropbear.log"
CLOSING = "cryptboot: all volumes are unlocked; the boot goes on. Closing this session."


def dropbear_argv(plan: Plan, keys: list[str]) -> list[str]:
    argv = [DROPBEAR, "-F", "-E", "-s", "-j", "-k", "-p", str(plan.ssh.port), "-P", PIDFILE]
    for key in keys:
        argv += ["-r", key]
    if not plan.ssh.shell:
        argv += ["-c", FORCED_COMMAND]
    return argv


class Server:
    """dropbear and the prompt's socket for one boot."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.remote: RemoteConsoles | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.error = ""
        self.started = threading.Event()
        self.took = 0.0
        self._thread = threading.Thread(target=self._start, name="cryptboot-ssh", daemon=True)
        self._thread.start()

    def _start(self) -> None:
        import subprocess

        from cryptboot.run import minimal_env

        t0 = time.monotonic()
        try:
            try:
                self._listen()
            except OSError as e:
                self.error = f"cannot serve the prompt on its socket: {e.strerror}"
                return
            import glob

            keys = sorted(glob.glob(HOST_KEYS))
            if not os.access(DROPBEAR, os.X_OK):
                self.error = (f"{DROPBEAR} is not in this image (build it with "
                              "cryptboot mkinitramfs --ssh-authorized-keys FILE)")
                return
            if not keys:
                self.error = f"no host key ({HOST_KEYS}) in this image"
                return
            argv = dropbear_argv(self.plan, keys)
            log.debug("start: " + " ".join(argv))
            with open(LOGFILE, "ab") as logf:
                # a session of its own: stop() ends it and its per-connection children at once
                self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf,
                                             stderr=logf, env=minimal_env({"HOME": "/root"}),
                                             start_new_session=True)
        except OSError as e:
            self.error = f"cannot start {DROPBEAR}: {e.strerror}"
        finally:
            self.took = time.monotonic() - t0
            self.started.set()

    def _listen(self) -> None:
        """The prompt's socket; a prompt already open picks it up (prompt.remote_pending)."""
        from cryptboot.keys import prompt
        from cryptboot.keys.remote import RemoteConsoles

        try:
            self.remote = RemoteConsoles()
        finally:
            prompt.remote = self.remote
            prompt.remote_pending = False

    def report(self) -> None:
        self.started.wait(10)
        if self.error:
            log.warning(f"ssh: {self.error}")
        elif self.proc is not None:
            if self.proc.poll() is not None:
                log.warning(f"ssh: dropbear exited with status {self.proc.returncode}: "
                            + _log_tail())
            else:
                log.info(f"ssh: dropbear (pid {self.proc.pid}) listened on port "
                         f"{self.plan.ssh.port} (started in {self.took:.2f}s)")

    def stop(self, message: str) -> str:
        self.report()
        self._thread.join(10)
        from cryptboot.keys import prompt

        closed = self.remote.close(message) if self.remote is not None else 0
        if prompt.remote is self.remote:
            prompt.remote = None
        proc = self.proc
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except OSError:
                pass
            try:
                proc.wait(3)
            except Exception:  # noqa: BLE001 - subprocess.TimeoutExpired
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            # the per-connection processes are in dropbear's process group too
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                pass
        left = _kill_leftovers()
        for line in _log_lines():
            log.debug(f"dropbear: {line}")
        if left:
            log.info(f"ssh: ended {left} dropbear process(es) of sessions still open")
        return f"{closed} session(s) closed" + (", dropbear stopped" if proc else "")


def _kill_leftovers(exe: str = DROPBEAR) -> int:
    """SIGKILL every process still running ``exe`` (a session's process that left dropbear's
    process group); how many."""
    n = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            if os.readlink(f"/proc/{pid}/exe") != exe:
                continue
            os.kill(int(pid), signal.SIGKILL)
            n += 1
        except OSError:
            continue
    return n


def _log_lines() -> list[str]:
    try:
        with open(LOGFILE, errors="replace") as f:
            return [line.rstrip() for line in f if line.strip()]
    except OSError:
        return []


def _log_tail() -> str:
    lines = _log_lines()
    return lines[-1] if lines else "(no output)"


_server: Server | None = None


def start(plan: Plan) -> Server:
    """Open the prompt's socket and start dropbear, in a thread (the socket module's import is
    no cost to the boot's main thread); a prompt open meanwhile picks the socket up once it
    exists. Once per boot."""
    global _server
    if _server is None:
        from cryptboot.keys import prompt

        prompt.remote_pending = True
        _server = Server(plan)
    return _server


def dropbear_running(proc: str = "/proc") -> bool:
    """Whether a dropbear runs already (Debian's dropbear-initramfs starts it in init-premount,
    before ``cryptboot unlock`` runs in local-top)."""
    for pid in os.listdir(proc):
        if pid.isdigit():
            try:
                with open(f"{proc}/{pid}/comm") as f:
                    if f.read().strip() == "dropbear":
                        return True
            except OSError:
                continue
    return False


def serve_prompt(plan: Plan) -> RemoteConsoles | None:
    """For ``cryptboot unlock`` inside dracut / initramfs-tools images: serve the prompt on its
    socket when an SSH server is already running there (dropbear-initramfs, dracut-crypt-ssh)
    or ``cryptboot.ssh=1`` says so, so that a login there answers it with
    ``cryptboot ssh-prompt``. Never a second dropbear."""
    if not (plan.ssh.enabled or dropbear_running()):
        return None
    from cryptboot.keys import prompt
    from cryptboot.keys.remote import RemoteConsoles

    try:
        remote = RemoteConsoles()
    except OSError as e:
        log.warning(f"ssh: cannot serve the prompt on its socket: {e.strerror}")
        return None
    prompt.remote = remote
    log.info("ssh: the prompt is also served to SSH logins: run `cryptboot ssh-prompt` there")
    return remote


def current() -> Server | None:
    return _server


def stop(message: str = CLOSING) -> str:
    """Close every session with ``message`` and stop dropbear (before the hand-off)."""
    global _server
    if _server is None:
        return "SSH was not started"
    server, _server = _server, None
    return server.stop(message)
