"""What an image with the tang client holds (issue 13), proven by running it: the client of a
built image, in a chroot of its unpacked files (a user namespace, no root), decrypts a JWE
made by the real ``clevis encrypt tang`` against the real ``tangd`` on loopback.

Found this way: ``cryptography``'s binding loads OpenSSL's ``legacy`` provider on first use
(dlopen(): no ELF header names it), and ``socket.getaddrinfo()`` needs the ``idna`` codec,
which the encodings package imports by name.

A tang URL may name its server: with the image's ``/etc/resolv.conf`` as the boot writes it
(``nameserver``), the image's own libc asks a DNS server (a small one on loopback, here) and the
client reaches tangd by that name.
"""

from __future__ import annotations

import gzip
import json
import os
import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from cryptboot.initramfs import tokens
from tests.tang_helpers import (
    TangServer,
    clevis_encrypt,
    fetch_adv_file,
    make_keys,
    tang_missing,
)

REPO = Path(__file__).resolve().parents[2]
CLIENT = """\
import sys, time
sys.path.insert(0, '/usr/lib/cryptboot/python')
from cryptboot.launch import install
install()
from cryptboot.keys import clevis
jwe = clevis.Jwe.parse(open('/jwe').read())
sys.stdout.write(clevis.decrypt(jwe, clevis.Context(time.monotonic() + 20)).decode())
"""


TANG_NAME = "tang.cryptboot.test"
DNS_ADDR = "127.0.0.9"  # loopback; port 53, as resolv.conf cannot name another


class Dns:
    """A DNS server for one name over UDP: A queries for ``name`` get 127.0.0.1, other types of
    it an empty answer, other names NXDOMAIN. ``asked`` records the names asked."""

    def __init__(self, name: str) -> None:
        self.name = name.encode()
        self.asked: list[str] = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((DNS_ADDR, 53))
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                q, peer = self.sock.recvfrom(512)
            except OSError:
                return
            labels, i = [], 12
            while q[i]:
                labels.append(q[i + 1:i + 1 + q[i]])
                i += 1 + q[i]
            qtype = struct.unpack_from("!H", q, i + 1)[0]
            question = q[12:i + 5]
            name = b".".join(labels)
            self.asked.append(name.decode())
            ok = name.lower() == self.name
            answer = b""
            if ok and qtype == 1:  # A: a pointer to the question's name, IN, TTL 60, 4 bytes
                answer = (b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4)
                          + socket.inet_aton("127.0.0.1"))
            flags = 0x8180 if ok else 0x8183  # response, recursion; NOERROR or NXDOMAIN
            head = struct.pack("!HHHHHH", struct.unpack_from("!H", q)[0], flags, 1,
                               1 if answer else 0, 0, 0)
            self.sock.sendto(head + question + answer, peer)

    def close(self) -> None:
        self.sock.close()


def test_modules_dir_is_where_libcrypto_finds_the_legacy_provider() -> None:
    libs = [p for p in Path("/usr/lib").glob("*/libcrypto.so.3")]
    if not libs:
        pytest.skip("no OpenSSL 3 libcrypto on this machine")
    where = tokens.modules_dir(str(libs[0]))
    assert where is not None and os.path.exists(os.path.join(where, "legacy.so")), where


def _unshare_missing() -> str | None:
    r = subprocess.run(["unshare", "-r", "true"], capture_output=True, check=False)
    return None if r.returncode == 0 else f"unshare -r fails here: {r.stderr.decode()[:200]}"


@pytest.mark.skipif(tang_missing() is not None, reason=str(tang_missing()))
@pytest.mark.skipif(_unshare_missing() is not None, reason=str(_unshare_missing()))
@pytest.mark.parametrize("by_name", [
    False, pytest.param(True, marks=pytest.mark.root, id="by-name")])
def test_the_images_tang_client_decrypts_in_a_chroot(tmp_path: Path, by_name: bool) -> None:
    kver = sorted(Path("/lib/modules").iterdir())[-1].name
    image = tmp_path / "tang.img"
    subprocess.run(
        [sys.executable, "-m", "cryptboot", "mkinitramfs", "-o", str(image), "--kver", kver,
         "--cache-dir", str(tmp_path / "pyc"), "--vconsole", "none", "--keyboard", "none",
         "--compress", "gzip", "--crypttab", "none", "--token", "clevis"],
        check=True, capture_output=True, cwd=REPO)
    root = tmp_path / "root"
    root.mkdir()
    subprocess.run(["cpio", "-idm", "--quiet"], input=gzip.decompress(image.read_bytes()),
                   cwd=root, check=True, capture_output=True)
    assert list(root.glob("usr/lib/*/ossl-modules/legacy.so"))
    server = TangServer(tmp_path / "db")
    dns = None
    url = server.url
    if by_name:
        dns = Dns(TANG_NAME)
        (root / "etc/resolv.conf").write_text(f"nameserver {DNS_ADDR}\n")
        url = f"http://{TANG_NAME}:{server.port}"
    try:
        make_keys(server.db)
        config: dict[str, str] = {"url": url}
        if by_name:  # clevis on the host cannot resolve the name: bound offline
            config["adv"] = str(fetch_adv_file(server, tmp_path / "adv.jws"))
        (root / "jwe").write_text(clevis_encrypt("tang", json.dumps(config), b"the volume key"))
        (root / "client.py").write_text(CLIENT)
        python = (root / "init").read_text().splitlines()[0][2:].split()[0]  # its #! line
        out = subprocess.run(["unshare", "-r", "chroot", str(root), python, "-ISB",
                              "/client.py"], capture_output=True, check=False, timeout=120)
    finally:
        server.close()
        if dns is not None:
            dns.close()
    assert out.returncode == 0, out.stderr.decode(errors="replace")
    assert out.stdout == b"the volume key"
    if dns is not None:
        assert TANG_NAME in dns.asked, dns.asked
