"""cgd key generation against NetBSD's published vectors and independent references."""

from __future__ import annotations

import base64
import hashlib
import hmac
import shutil
import subprocess
from pathlib import Path

import pytest

from cryptboot.errors import CryptbootError
from cryptboot.unlock import cgd_cli
from cryptboot.unlock.cgd_keygen import (
    derive_key,
    fingerprint,
    hkdf_expand_sha256,
    pbkdf2_sha1,
    pbkdf2_sha1_legacy,
)
from cryptboot.unlock.cgd_params import encode_bits, load_params, parse_params

DATA = Path(__file__).parent / "data" / "cgd" / "t_cgdconfig"


def _expected() -> list[tuple[str, str]]:
    rows = []
    for line in (DATA / "expected.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, b64 = line.split()
            rows.append((name, b64))
    return rows


@pytest.mark.parametrize(("name", "b64"), _expected())
def test_t_cgdconfig_vectors(name: str, b64: str) -> None:
    """storedkey, XOR of two stored keys (both orders), shared HKDF with 10- and 80-byte info."""
    key = derive_key(load_params(str(DATA / name)), None)
    assert base64.b64encode(key).decode() == b64


def _conf_output(conf: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, str]:
    assert cgd_cli.main(["keygen", "-f", str(conf)]) == 0
    lines = capsys.readouterr().out.splitlines()
    return dict(line.split(": ", 1) for line in lines)


def _expected_fingerprints(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        target, b64 = line.split(": ")
        out[target] = fingerprint(base64.b64decode(b64))
    return out


def test_t_cgdconfig_storedkeys_conf(capsys: pytest.CaptureFixture[str]) -> None:
    d = DATA / "storedkeys"
    got = _conf_output(d / "cgd.conf", capsys)
    assert got == _expected_fingerprints(d / "expected")
    assert list(got) == ["/dev/wd0e", "/dev/ld1e"]  # the order of cgd.conf


@pytest.mark.parametrize("n", ["0", "1"])
def test_t_cgdconfig_sharedstoredkeys_conf(n: str, capsys: pytest.CaptureFixture[str]) -> None:
    d = DATA / "sharedstoredkeys"
    got = _conf_output(d / f"cgd.conf{n}", capsys)
    assert got == _expected_fingerprints(d / f"expected{n}")
    assert list(got) == list(_expected_fingerprints(d / f"expected{n}"))


COUNTKEY = """#!/bin/sh
# counts its runs in the file "$1", prints "$2" base64-decoded (NetBSD's h_countkey does this)
n=$(cat "$1" 2>/dev/null || echo 0)
echo $((n + 1)) > "$1"
printf '%s' "$2" | base64 -d
"""


def test_t_cgdconfig_sharedshellkeys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    """shell_cmd keygens (raw key bytes on stdout) with shared subkeys; each run counted."""
    helper = tmp_path / "h_countkey"
    helper.write_text(COUNTKEY)
    helper.chmod(0o755)
    src = DATA / "sharedshellkeys"
    for f in src.iterdir():
        (tmp_path / f.name).write_text(f.read_text().replace("${COUNTKEY}", str(helper)))
    monkeypatch.chdir(tmp_path)
    got0 = _conf_output(tmp_path / "cgd.conf0", capsys)
    assert got0 == _expected_fingerprints(src / "expected0")
    got1 = _conf_output(tmp_path / "cgd.conf1", capsys)
    assert got1 == _expected_fingerprints(src / "expected1")
    assert (tmp_path / "n").read_text().strip() == "4"  # two volumes, two runs


def test_keygen_cli_prints_fingerprint_not_key(capsys: pytest.CaptureFixture[str]) -> None:
    assert cgd_cli.main(["keygen", str(DATA / "storedkey.params")]) == 0
    out = capsys.readouterr().out
    key = base64.b64decode("m2eanddmykwEAWkJicHwd6SfSCPlwNWeCyV8YtKrBzI=")
    assert out.strip() == "sha256:" + hashlib.sha256(key).hexdigest()
    assert key.hex() not in out and "m2eanddmykwE" not in out


# --- passphrase keygens -------------------------------------------------------------------

SALT = bytes.fromhex("ca07898a27c9ee8aa20758240a1b0871")


def _params(keygen: str, alg: str = "aes-xts", keylength: int = 512) -> str:
    return f"algorithm {alg};\nkeylength {keylength};\nverify_method none;\n{keygen}\n"


def test_pbkdf2_sha1_is_standard_pbkdf2() -> None:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

    text = _params("keygen pkcs5_pbkdf2/sha1 {\n iterations 1000;\n salt "
                   + encode_bits(SALT) + ";\n};")
    key = derive_key(parse_params(text), b"hunter2")
    reference = PBKDF2HMAC(algorithm=hashes.SHA1(), length=64, salt=SALT, iterations=1000)
    assert key == reference.derive(b"hunter2")
    # as cgdconfig's strlen(): nothing after a NUL counts
    assert derive_key(parse_params(text), b"hunter2\0junk") == key


def _reference_legacy(password: bytes, salt: bytes, c: int, dklen: int) -> bytes:
    """RFC 8018 PBKDF2 written out plainly, but with blocks numbered from 0 (cgd's old bug)."""
    out = b""
    i = 0
    while len(out) < dklen:
        u = hmac.new(password, salt + i.to_bytes(4, "big"), "sha1").digest()
        t = bytearray(u)
        for _ in range(c - 1):
            u = hmac.new(password, u, "sha1").digest()
            t = bytearray(a ^ b for a, b in zip(t, u, strict=True))
        out += bytes(t)
        i += 1
    return out[:dklen]


def test_hkdf_expand_matches_cryptography() -> None:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

    for n in (16, 32, 33, 64, 100):
        want = HKDFExpand(algorithm=hashes.SHA256(), length=n, info=b"info").derive(b"k" * 32)
        assert hkdf_expand_sha256(b"k" * 32, b"info", n) == want


@pytest.mark.parametrize("dklen", [16, 20, 21, 32, 64])
def test_legacy_pkcs5_pbkdf2_matches_slow_reference(dklen: int) -> None:
    got = pbkdf2_sha1_legacy(b"passphrase", SALT, 50, dklen)
    assert got == _reference_legacy(b"passphrase", SALT, 50, dklen)
    assert got != pbkdf2_sha1(b"passphrase", SALT, 50, dklen)  # a standard PBKDF2 differs


def test_legacy_keygen_in_params() -> None:
    text = _params("keygen pkcs5_pbkdf2 {\n iterations 77;\n salt " + encode_bits(SALT)
                   + ";\n};", alg="aes-cbc", keylength=192)
    assert derive_key(parse_params(text), b"pw") == _reference_legacy(b"pw", SALT, 77, 24)


def _argon2_cli(password: bytes, salt: bytes, t: int, m_log2: int, p: int, n: int,
                v: str = "13") -> bytes:
    """The reference implementation's CLI (Debian package argon2)."""
    out = subprocess.run(
        ["argon2", salt.decode(), "-id", "-t", str(t), "-m", str(m_log2), "-p", str(p),
         "-l", str(n), "-v", v, "-r"],
        input=password, capture_output=True, check=True).stdout
    return bytes.fromhex(out.decode().strip())


needs_argon2 = pytest.mark.skipif(shutil.which("argon2") is None,
                                  reason="needs the argon2 reference CLI (apt-get install argon2)")


@needs_argon2
def test_argon2id_matches_reference_cli() -> None:
    salt = b"saltsaltsaltsalt"
    text = _params("keygen argon2id {\n iterations 3;\n memory 1024;\n parallelism 2;\n"
                   " version 19;\n salt " + encode_bits(salt) + ";\n};")
    key = derive_key(parse_params(text), b"correct horse")
    assert key == _argon2_cli(b"correct horse", salt, 3, 10, 2, 64)


@needs_argon2
def test_argon2id_other_version_refused() -> None:
    salt = b"saltsaltsaltsalt"
    text = _params("keygen argon2id {\n iterations 3;\n memory 1024;\n parallelism 2;\n"
                   " version 16;\n salt " + encode_bits(salt) + ";\n};")
    with pytest.raises(CryptbootError, match=r"version 16 \(0x10\).*only version 19"):
        derive_key(parse_params(text, "p"), b"pw")
    # and version 16 really is a different function, so computing 19 instead would be wrong
    assert _argon2_cli(b"pw", salt, 3, 10, 2, 64, v="10") != _argon2_cli(b"pw", salt, 3, 10, 2,
                                                                         64)


def test_passphrase_keygens_xor_with_stored_key() -> None:
    stored = bytes(range(64))
    text = _params("keygen pkcs5_pbkdf2/sha1 {\n iterations 10;\n salt " + encode_bits(SALT)
                   + ";\n};\nkeygen storedkey key " + encode_bits(stored) + ";")
    key = derive_key(parse_params(text), b"pw")
    std = hashlib.pbkdf2_hmac("sha1", b"pw", SALT, 10, 64)
    assert key == bytes(a ^ b for a, b in zip(std, stored, strict=True))


def test_shared_passphrase_keygen_uses_256_bit_shared_key() -> None:
    """With 'shared', the keygen makes a 256-bit shared key, then HKDF-Expand per disk."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

    info = b"disk one"
    text = _params("keygen pkcs5_pbkdf2/sha1 {\n iterations 10;\n salt " + encode_bits(SALT)
                   + ";\n shared \"x\" algorithm hkdf-hmac-sha256 subkey "
                   + encode_bits(info) + ";\n};")
    shared = hashlib.pbkdf2_hmac("sha1", b"pw", SALT, 10, 32)
    want = HKDFExpand(algorithm=hashes.SHA256(), length=64, info=info).derive(shared)
    assert derive_key(parse_params(text), b"pw") == want


def test_missing_passphrase() -> None:
    text = _params("keygen pkcs5_pbkdf2/sha1 {\n iterations 10;\n salt " + encode_bits(SALT)
                   + ";\n};")
    with pytest.raises(CryptbootError, match="needs a passphrase"):
        derive_key(parse_params(text, "p"), None)


@pytest.mark.parametrize("method", ["randomkey", "urandomkey"])
def test_randomkey_refused(method: str) -> None:
    with pytest.raises(CryptbootError, match="cannot be derived again") as ei:
        derive_key(parse_params(_params(f"keygen {method};"), "/etc/cgd/swap"), None)
    assert str(ei.value).startswith("/etc/cgd/swap:4: keygen " + method)


def test_shell_cmd_raw_bytes_and_short_output() -> None:
    key = bytes(range(32))
    b64 = base64.b64encode(key).decode()
    text = _params(f'keygen shell_cmd cmd "printf %s {b64} | base64 -d";', keylength=256)
    assert derive_key(parse_params(text), None) == key
    short = _params('keygen shell_cmd cmd "printf abc";', keylength=256)
    with pytest.raises(CryptbootError, match="printed 3 bytes; the key needs 32"):
        derive_key(parse_params(short), None)
    failing = _params('keygen shell_cmd cmd "echo no token >&2; exit 3";', keylength=256)
    with pytest.raises(CryptbootError, match="exit status 3: no token"):
        derive_key(parse_params(failing), None)


def test_cli_reads_passphrase_from_stdin_with_p(monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str],
                                                tmp_path: Path) -> None:
    import io

    f = tmp_path / "wd0e"
    f.write_text(_params("keygen pkcs5_pbkdf2/sha1 {\n iterations 10;\n salt "
                         + encode_bits(SALT) + ";\n};"))
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"hunter2\n")))
    assert cgd_cli.main(["keygen", "-p", str(f)]) == 0
    want = fingerprint(hashlib.pbkdf2_hmac("sha1", b"hunter2", SALT, 10, 64))
    assert capsys.readouterr().out.strip() == want
