"""VM helpers for the network and SSH unlock (issue 14): one image with dropbear and the network
(built once per session, shared by test_network and test_ssh), QEMU user networking with a
forwarded port, test keys, and the OpenSSH client's argv.

Only loopback: QEMU's user network with ``restrict=on`` (the guest reaches nothing outside) and
``hostfwd=tcp:127.0.0.1:PORT-:22``; the port is a free one picked by binding port 0.
"""

from __future__ import annotations

import re
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.vm.conftest import CRYPTBOOT, BootFailed

PROMPT = r"Please enter passphrase for disk root \(/dev/vda\): "
HOST_KEY_LINE = re.compile(r"SSH host key of the image: (SHA256:\S+) (ssh-\S+ \S+)")


@dataclass(frozen=True)
class SshImage:
    path: Path
    host_key: str        # "ssh-ed25519 AAAA..." as mkinitramfs printed it
    fingerprint: str     # "SHA256:..."
    key: Path            # the authorized test key (private)
    other_key: Path      # a key that is not in authorized_keys
    build_log: str


_built: dict[Path, SshImage] = {}


def keygen(path: Path) -> Path:
    if not path.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name,
                        "-f", str(path)], check=True)
    return path


def build_ssh_image(vmdir: Path, kver: str, cache: Path) -> SshImage:
    """The image with the generic NIC drivers and dropbear for the test key (gzip: quicker to
    build); its host key kept in a scratch key directory, never /etc."""
    out = vmdir / "cryptboot-ssh.img"
    if out in _built:
        return _built[out]
    keys = vmdir / "ssh-client"
    keys.mkdir(exist_ok=True)
    key, other = keygen(keys / "id_admin"), keygen(keys / "id_stranger")
    auth = keys / "authorized_keys"
    auth.write_text("# the admin\n" + (keys / "id_admin.pub").read_text())
    proc = subprocess.run(
        [*CRYPTBOOT, "mkinitramfs", "-o", str(out), "--kver", kver, "--cache-dir", str(cache),
         "--crypttab", "none", "--compress", "gzip", "--network", "generic",
         "--ssh-authorized-keys", str(auth), "--ssh-key-dir", str(vmdir / "ssh-hostkeys")],
        capture_output=True, text=True, check=False,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "SOURCE_DATE_EPOCH": "1700000000"})
    if proc.returncode != 0:
        raise AssertionError(f"mkinitramfs failed: {proc.stderr}")
    m = HOST_KEY_LINE.search(proc.stderr)
    assert m, proc.stderr
    img = SshImage(out, m.group(2), m.group(1), key, other, proc.stderr)
    _built[out] = img
    return img


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def user_net(port: int | None = None) -> list[str]:
    """QEMU args: one virtio NIC on the user network, isolated, port ``port`` -> guest 22."""
    fwd = f",hostfwd=tcp:127.0.0.1:{port}-:22" if port else ""
    return ["-netdev", f"user,id=n0,restrict=on{fwd}", "-device", "virtio-net-pci,netdev=n0"]


def known_hosts(path: Path, port: int, host_key: str) -> Path:
    path.write_text(f"[127.0.0.1]:{port} {host_key}\n")
    return path


def ssh_argv(port: int, key: Path, known: Path, *extra: str,
             command: tuple[str, ...] = ()) -> list[str]:
    """OpenSSH client: this key only, the pinned host key only, never a question; ``extra``
    options, then ``command`` after the destination."""
    return ["ssh", "-p", str(port), "-i", str(key), "-o", "IdentitiesOnly=yes",
            "-o", f"UserKnownHostsFile={known}", "-o", "StrictHostKeyChecking=yes",
            "-o", "GlobalKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
            "-o", "ConnectTimeout=20", "-F", "/dev/null", *extra, "root@127.0.0.1", *command]


def scan_host_key(port: int, timeout: float) -> str:
    """The ed25519 host key the guest offers (``ssh-keyscan``), once dropbear answers."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        proc = subprocess.run(["ssh-keyscan", "-T", "10", "-t", "ed25519", "-p", str(port),
                               "127.0.0.1"], capture_output=True, text=True, check=False)
        for line in proc.stdout.splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[1].startswith("ssh-"):
                return f"{parts[1]} {parts[2]}"
        time.sleep(1)
    raise BootFailed(f"no SSH server answered on 127.0.0.1:{port} within {timeout:.0f} s")
