"""Remote consoles: the passphrase prompt served on a unix socket, for SSH sessions (issue 14).

The boot listens on :data:`SOCKET` (``/run/cryptboot/prompt.sock``, mode 0600 in a 0700
directory: only root in the initramfs reaches it). :func:`cryptboot.keys.prompt.ask` treats
every connection as one more console, next to the serial line and the screen: it gets the
prompt text ("Please enter passphrase for disk root (/dev/vda): ", with the previous try's
"wrong passphrase ..." line before it), its bytes are edited like a console's (Backspace,
Ctrl-U, Enter), and the first console where Enter is pressed wins. A connection stays open
from one prompt to the next (a wrong passphrase, the next volume) until the boot closes it
before the hand-off, with a line saying why. A session that leaves (end of input, Ctrl-C,
Ctrl-D) is dropped without costing a try.

The other end is ``cryptboot ssh-prompt`` (:func:`client_main`), the forced command of every
SSH login: it relays the socket to the session's terminal (raw, no echo) and back.
"""

from __future__ import annotations

import os
import socket

SOCKET = "/run/cryptboot/prompt.sock"
CTRL_C = 0x03

TYPE_CHECKING = False
if TYPE_CHECKING:
    from cryptboot.keys.prompt import _Console


class RemoteConsoles:
    """The listening socket and the sessions connected to it (used from the boot's main
    thread only: the prompt, then :meth:`close`)."""

    def __init__(self, path: str = SOCKET) -> None:
        self.path = path
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        os.chmod(os.path.dirname(path), 0o700)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self.sock.bind(path)
        os.chmod(path, 0o600)
        self.sock.listen(16)
        self.sock.setblocking(False)
        self.clients: list[_Console] = []
        self._conns: dict[int, socket.socket] = {}
        self._count = 0

    @property
    def fd(self) -> int:
        return self.sock.fileno()

    def accept(self) -> list[_Console]:
        """Every connection waiting to be accepted, as new consoles (also kept in
        :attr:`clients`)."""
        from cryptboot.keys.prompt import _Console

        new = []
        while True:
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break
            conn.setblocking(False)
            self._count += 1
            c = _Console(f"ssh{self._count}", conn.fileno())
            c.remote = True
            self._conns[c.fd] = conn
            self.clients.append(c)
            new.append(c)
        return new

    def drop(self, c: _Console) -> None:
        """Forget a session that left."""
        if c in self.clients:
            self.clients.remove(c)
        conn = self._conns.pop(c.fd, None)
        c.wipe()
        if conn is not None:
            conn.close()

    def say(self, line: str, only: _Console | None = None) -> None:
        for c in list(self.clients):
            if only is None or c is only:
                c.write(f"\r\n{line}\r\n")

    def close(self, message: str) -> int:
        """Tell every session ``message`` (those still waiting to connect too) and close them
        all; stop listening. Returns how many sessions were closed."""
        self.accept()
        n = len(self.clients)
        self.say(message)
        for c in list(self.clients):
            conn = self._conns.get(c.fd)
            if conn is not None:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self.drop(c)
        self.sock.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass
        return n


# ---------------------------------------------------------------------------------------------
# cryptboot ssh-prompt: the forced command of an SSH login


def client_main(argv: list[str]) -> int:
    """Relay the boot's prompt to this terminal and the keys typed back, until the boot
    closes the session (or Ctrl-C)."""
    import select
    import sys
    import termios

    path = argv[0] if argv else SOCKET
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError as e:
        sys.stderr.write(f"cryptboot: no passphrase prompt to answer here ({path}: "
                         f"{e.strerror}); the boot may be past unlocking\n")
        return 1
    saved = None
    if os.isatty(0):
        saved = termios.tcgetattr(0)
        attrs = termios.tcgetattr(0)
        attrs[3] &= ~(termios.ECHO | termios.ICANON | termios.ISIG | termios.IEXTEN)
        attrs[6][termios.VMIN] = 1
        attrs[6][termios.VTIME] = 0
        termios.tcsetattr(0, termios.TCSANOW, attrs)
    out = sys.stdout.fileno()
    os.write(out, b"cryptboot: connected to the boot's passphrase prompt (Ctrl-C leaves)\r\n")
    fds = [sock.fileno(), 0]
    try:
        while True:
            ready, _, _ = select.select(fds, [], [])
            if sock.fileno() in ready:
                data = sock.recv(4096)
                if not data:
                    break
                os.write(out, data)
            if 0 in ready:
                data = os.read(0, 1024)
                if not data:
                    fds.remove(0)  # end of input: keep showing what the boot says
                    continue
                if saved is not None and CTRL_C in data:
                    os.write(out, b"\r\n(left the prompt)\r\n")
                    break
                sock.sendall(data)
    except (OSError, KeyboardInterrupt):
        pass
    finally:
        if saved is not None:
            termios.tcsetattr(0, termios.TCSADRAIN, saved)
        sock.close()
    return 0
