"""What an image with the tang client holds (issue 13), proven by running it: the client of a
built image, in a chroot of its unpacked files (a user namespace, no root), decrypts a JWE
made by the real ``clevis encrypt tang`` against the real ``tangd`` on loopback.

Found this way: ``cryptography``'s binding loads OpenSSL's ``legacy`` provider on first use
(dlopen(): no ELF header names it), and ``socket.getaddrinfo()`` needs the ``idna`` codec,
which the encodings package imports by name.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cryptboot.initramfs import tokens
from tests.tang_helpers import TangServer, clevis_encrypt, make_keys, tang_missing

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
def test_the_images_tang_client_decrypts_in_a_chroot(tmp_path: Path) -> None:
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
    try:
        make_keys(server.db)
        (root / "jwe").write_text(clevis_encrypt("tang", json.dumps({"url": server.url}),
                                                 b"the volume key"))
        (root / "client.py").write_text(CLIENT)
        python = (root / "init").read_text().splitlines()[0][2:].split()[0]  # its #! line
        out = subprocess.run(["unshare", "-r", "chroot", str(root), python, "-ISB",
                              "/client.py"], capture_output=True, check=False, timeout=120)
    finally:
        server.close()
    assert out.returncode == 0, out.stderr.decode(errors="replace")
    assert out.stdout == b"the volume key"
