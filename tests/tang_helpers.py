"""Real tang servers for the tests: Debian's ``tangd`` with keys from ``tangd-keygen``.

``tangd`` speaks HTTP on its stdin/stdout (it is meant for socket activation); the host tests
run it behind a loopback listener that starts one ``tangd`` per connection
(:class:`TangServer`), the VM tests behind QEMU's ``guestfwd=...-cmd:`` (no socket on the host:
:func:`guestfwd`). Keys are made and rotated the way tang's documentation says: rotation
makes new keys and renames the old ones to hidden ``.``-prefixed files, which tangd still uses
for recovery but no longer advertises.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
from pathlib import Path

TANGD = "/usr/libexec/tangd"
KEYGEN = "/usr/libexec/tangd-keygen"


def tang_missing() -> str | None:
    for tool in (TANGD, KEYGEN):
        if not os.access(tool, os.X_OK):
            return f"needs {tool} (apt-get install tang)"
    if shutil.which("clevis") is None:
        return "needs clevis (apt-get install clevis clevis-luks)"
    return None


def make_keys(db: Path) -> list[str]:
    """A fresh tang key directory (signing + exchange key); returns the key file names."""
    db.mkdir(parents=True, exist_ok=True)
    subprocess.run([KEYGEN, str(db)], check=True, capture_output=True)
    return sorted(p.name for p in db.iterdir() if p.suffix == ".jwk")


def rotate_keys(db: Path) -> None:
    """tang's documented rotation: hide the current keys (``.``-prefixed: still used for
    recovery, no longer advertised), then make new ones."""
    for p in db.iterdir():
        if p.suffix == ".jwk" and not p.name.startswith("."):
            p.rename(db / ("." + p.name))
    subprocess.run([KEYGEN, str(db)], check=True, capture_output=True)


class TangServer:
    """``tangd DB`` behind a loopback listener on 127.0.0.1 (one tangd per connection)."""

    def __init__(self, db: Path, port: int = 0) -> None:
        self.db = db
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.connections = 0
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                proc = subprocess.Popen([TANGD, str(self.db)], stdin=conn.fileno(),
                                        stdout=conn.fileno(), stderr=subprocess.DEVNULL)
            threading.Thread(target=proc.wait, daemon=True).start()

    def close(self) -> None:
        self._stop = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self._thread.join(5)


def free_port() -> int:
    """A loopback port nobody listens on (for a server that is down)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clevis_encrypt(pin: str, config: str, data: bytes) -> str:
    """The real ``clevis encrypt PIN CONFIG -y`` (trusting the advertisement): a compact JWE."""
    out = subprocess.run(["clevis", "encrypt", pin, config, "-y"], input=data, check=True,
                         capture_output=True)
    return out.stdout.decode().strip()


def clevis_luks_bind(image: Path, passphrase: bytes, pin: str, config: str) -> None:
    """The real ``clevis luks bind`` on a LUKS2 image file (existing passphrase on stdin)."""
    subprocess.run(["clevis", "luks", "bind", "-y", "-k", "-", "-d", str(image), pin, config],
                   input=passphrase, check=True, capture_output=True)


def fetch_adv_file(server: TangServer, out: Path) -> Path:
    """The server's signed advertisement, saved for an offline bind (``"adv": FILE``)."""
    import urllib.request

    with urllib.request.urlopen(f"{server.url}/adv", timeout=10) as r:
        out.write_bytes(r.read())
    return out


def guestfwd(addr: str, db: Path) -> str:
    """A QEMU user-net ``guestfwd``: guest connections to ADDR:80 each start a tangd on its
    stdio (no listening socket on the host). QEMU gives the command the connection as stderr
    too, and tangd logs every request on stderr: that goes to /dev/null, or it would be sent
    to the client ahead of the HTTP answer."""
    return f"guestfwd=tcp:{addr}:80-cmd:/bin/sh -c 'exec {TANGD} {db} 2>/dev/null'"
