"""open_cgd: key check in Python, the dm-crypt plain call (fake cryptsetup), and refusals.

The images are encrypted here with ``cryptography`` directly (XTS, tweak = sector number), not
with cryptboot's own cipher module, and the GPT is written by the real ``sfdisk``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from cryptboot import log
from cryptboot.errors import CommandError, CryptbootError, WrongKey
from cryptboot.unlock import cgd, cgd_cli
from cryptboot.unlock.cgd_params import encode_bits

SALT = bytes(range(16))
PASS = b"correct horse battery"

FAKE_CRYPTSETUP = """#!/bin/sh
# records its argv, stdin and environment, exits as told
d="$(dirname "$0")"
printf '%s\\n' "$@" > "$d/argv"
cat > "$d/stdin"
env > "$d/env"
exit "$(cat "$d/exit" 2>/dev/null || echo 0)"
"""


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    script = bindir / "cryptsetup"
    script.write_text(FAKE_CRYPTSETUP)
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    return bindir


def _params(tmp_path: Path, *, verify: str, alg: str = "aes-xts", keylength: int = 512,
            iv: str = "encblkno1", iterations: int = 1000) -> str:
    p = tmp_path / "wd0e"
    p.write_text(
        f"algorithm {alg};\niv-method {iv};\nkeylength {keylength};\n"
        f"verify_method {verify};\n"
        f"keygen pkcs5_pbkdf2/sha1 {{\n        iterations {iterations};\n"
        f"        salt {encode_bits(SALT)};\n}};\n")
    return str(p)


def _key(keylength: int = 512, passphrase: bytes = PASS) -> bytes:
    return hashlib.pbkdf2_hmac("sha1", passphrase, SALT, 1000, keylength // 8)


def _xts_encrypt(plain: bytes, key: bytes, secsize: int = 512) -> bytes:
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    out = []
    for i in range(0, len(plain), secsize):
        tweak = (i // secsize).to_bytes(16, "little")
        enc = Cipher(algorithms.AES(key), modes.XTS(tweak)).encryptor()
        out.append(enc.update(plain[i:i + secsize]) + enc.finalize())
    return b"".join(out)


def _gpt_plain(tmp_path: Path) -> bytes:
    img = tmp_path / "plain.img"
    img.write_bytes(bytes(1 << 20))
    subprocess.run(["sfdisk", "--quiet", str(img)], input=b"label: gpt\n,,L\n", check=True,
                   capture_output=True)
    return img.read_bytes()


def _image(tmp_path: Path, plain: bytes, key: bytes, secsize: int = 512) -> str:
    img = tmp_path / "cgd.img"
    img.write_bytes(_xts_encrypt(plain, key, secsize))
    return str(img)


needs_sfdisk = pytest.mark.skipif(shutil.which("sfdisk") is None, reason="needs sfdisk")


@needs_sfdisk
def test_open_checks_gpt_then_maps_with_key_on_stdin_only(tmp_path: Path, fake: Path) -> None:
    params = _params(tmp_path, verify="gpt")
    key = _key()
    dev = _image(tmp_path, _gpt_plain(tmp_path), key)
    cgd.open_cgd("cgdroot", dev, params, PASS)
    argv = (fake / "argv").read_text().splitlines()
    stdin = (fake / "stdin").read_bytes()
    assert stdin == key  # every byte, nothing more (no newline)
    assert argv[:4] == ["open", "--type", "plain", "--cipher"]
    opts = dict(zip(argv[::1], argv[1::1], strict=False))
    assert opts["--cipher"] == "aes-xts-plain64" and opts["--key-size"] == "512"
    assert opts["--hash"] == "plain"        # stdin keys are hashed unless told plain
    assert opts["--offset"] == "0" and opts["--sector-size"] == "512"
    assert "--key-file=-" in argv and "--iv-large-sectors" not in argv
    assert argv[-2:] == [dev, "cgdroot"]
    env = (fake / "env").read_bytes()
    for secret in (key, key.hex().encode(), PASS):
        assert secret not in "\n".join(argv).encode() and secret not in env


@needs_sfdisk
def test_wrong_passphrase_is_wrong_key_and_nothing_mapped(tmp_path: Path, fake: Path) -> None:
    params = _params(tmp_path, verify="gpt")
    dev = _image(tmp_path, _gpt_plain(tmp_path), _key())
    with pytest.raises(WrongKey) as ei:
        cgd.open_cgd("cgdroot", dev, params, b"not it")
    assert str(ei.value) == (f"cgd volume cgdroot: wrong passphrase or key: no GPT header in "
                             f"the decrypted start of {dev} (verify_method gpt)")
    assert not (fake / "argv").exists()


def _disklabel(npart: int = 4, order: str = "<") -> bytes:
    lab = bytearray(148 + 16 * npart)
    struct.pack_into(order + "I", lab, 0, 0x82564557)
    struct.pack_into(order + "I", lab, 40, 512)           # d_secsize
    struct.pack_into(order + "I", lab, 132, 0x82564557)
    struct.pack_into(order + "H", lab, 138, npart)
    xor = 0
    for (w,) in struct.iter_unpack(order + "H", bytes(lab)):
        xor ^= w
    struct.pack_into(order + "H", lab, 136, xor)          # d_checksum makes the XOR zero
    return bytes(lab)


def _with(at: int, data: bytes, size: int = 1 << 19) -> bytes:
    buf = bytearray(size)
    buf[at:at + len(data)] = data
    return bytes(buf)


@pytest.mark.parametrize(("verify", "good", "bad"), [
    ("mbr", _with(510, b"\x55\xaa"), _with(510, b"\x55\xab")),
    ("disklabel", _with(512 + 64, _disklabel()), _with(512 + 64, _disklabel()[:-1] + b"\1")),
    ("disklabel", _with(1024, _disklabel(8, ">")), _with(1026, _disklabel(8))),  # misaligned
    ("ffs", _with(65536 + 1372, struct.pack("<I", 0x19540119)), _with(65536 + 1371, b"\1")),
    ("ffs", _with(8192 + 1372, struct.pack(">I", 0x011954)), bytes(1 << 19)),
])
def test_verify_methods(tmp_path: Path, fake: Path, verify: str, good: bytes, bad: bytes) -> None:
    params = _params(tmp_path, verify=verify, keylength=256)
    key = _key(256)
    cgd.open_cgd("c", _image(tmp_path, good, key), params, PASS)
    assert (fake / "stdin").read_bytes() == key
    (fake / "argv").unlink()
    with pytest.raises(WrongKey):
        cgd.open_cgd("c", _image(tmp_path, bad, key), params, PASS)
    assert not (fake / "argv").exists()
    # the right structure under the wrong key is no structure
    with pytest.raises(WrongKey):
        cgd.open_cgd("c", _image(tmp_path, good, _key(256, b"other")), params, PASS)


def test_verify_none_warns_and_maps(tmp_path: Path, fake: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(log._state, "stream", sys.stderr)
    params = _params(tmp_path, verify="none", keylength=256)
    cgd.open_cgd("c", _image(tmp_path, bytes(4096), _key(256)), params, b"anything")
    assert "verify_method none, so the key cannot be checked" in capsys.readouterr().err
    assert (fake / "stdin").read_bytes() == _key(256, b"anything")


def test_4k_sectors_use_large_iv(tmp_path: Path, fake: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """On a 4Kn disk cgd counts 4096-byte sectors: the check and the mapping must agree."""
    monkeypatch.setattr(cgd, "sector_size", lambda device: 4096)
    params = _params(tmp_path, verify="ffs", keylength=256)
    key = _key(256)
    plain = _with(65536 + 1372, struct.pack("<I", 0x011954))
    cgd.open_cgd("c", _image(tmp_path, plain, key, secsize=4096), params, PASS)
    argv = (fake / "argv").read_text().splitlines()
    assert argv[argv.index("--sector-size") + 1] == "4096" and "--iv-large-sectors" in argv
    (fake / "argv").unlink()
    with pytest.raises(WrongKey):  # the same data in 512-byte units does not verify
        cgd.open_cgd("c", _image(tmp_path, plain, key, secsize=512), params, PASS)


def test_cryptsetup_failure_is_a_command_error(tmp_path: Path, fake: Path) -> None:
    (fake / "exit").write_text("5")
    params = _params(tmp_path, verify="none", keylength=256)
    with pytest.raises(CommandError, match="cryptsetup failed with exit status 5"):
        cgd.open_cgd("c", _image(tmp_path, bytes(4096), _key(256)), params, PASS)


REFUSALS = [
    ("aes-cbc", "encblkno1", 128, "applied once to the sector number (iv-method encblkno1)"),
    ("aes-cbc", "encblkno8", 256, "applied eight times to the sector number"),
    ("3des-cbc", "encblkno1", 192, "cgd's 3des-cbc uses as each sector's IV"),
    ("blowfish-cbc", "encblkno1", 128, "cgd's blowfish-cbc uses as each sector's IV"),
    ("adiantum", "encblkno1", 256, "16-byte sector tweak and Linux's adiantum a 32-byte one"),
]


@pytest.mark.parametrize(("alg", "iv", "keylength", "why"), REFUSALS)
def test_refusals_say_why_and_what_works(tmp_path: Path, fake: Path, alg: str, iv: str,
                                         keylength: int, why: str) -> None:
    params = _params(tmp_path, verify="none", alg=alg, iv=iv, keylength=keylength)
    with pytest.raises(CryptbootError) as ei:
        cgd.open_cgd("cgd0", str(tmp_path / "wd0e"), params, PASS)
    msg = str(ei.value)
    assert msg.startswith(f"cgd volume cgd0: {params}: cgd algorithm {alg} has no dm-crypt "
                          "equivalent: ")
    assert why in msg
    assert msg.endswith("Linux can open cgd volumes made with 'algorithm aes-xts;' and "
                        "'keylength 256;' or 'keylength 512;' (any keygen, any verify_method)")
    assert not isinstance(ei.value, WrongKey)
    assert not (fake / "argv").exists()
    with pytest.raises(CryptbootError, match="has no dm-crypt equivalent") as e2:
        cgd.ensure_openable(params)  # before any passphrase is asked for
    assert e2.value.hint and "aes-xts" in e2.value.hint


def test_xts_with_odd_keylength_refused(tmp_path: Path) -> None:
    params = _params(tmp_path, verify="none", keylength=384)
    with pytest.raises(CryptbootError, match="keylength 384 is not a cgd setting"):
        cgd.ensure_openable(params)


def test_needs_passphrase(tmp_path: Path) -> None:
    assert cgd.needs_passphrase(_params(tmp_path, verify="none"))
    stored = tmp_path / "stored"
    stored.write_text(f"algorithm aes-xts;\nkeygen storedkey key {encode_bits(bytes(32))};\n")
    assert not cgd.needs_passphrase(str(stored))


def test_storedkey_volume_opens_without_passphrase(tmp_path: Path, fake: Path) -> None:
    key = bytes(range(32))
    stored = tmp_path / "stored"
    stored.write_text(f"algorithm aes-xts;\nverify_method mbr;\n"
                      f"keygen storedkey key {encode_bits(key)};\n")
    cgd.open_cgd("s", _image(tmp_path, _with(510, b"\x55\xaa"), key), str(stored), None)
    assert (fake / "stdin").read_bytes() == key


def test_sector_size_of_a_file_is_512(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"x")
    assert cgd.sector_size(str(f)) == 512
    with pytest.raises(CryptbootError, match="No such file"):
        cgd.sector_size(str(tmp_path / "missing"))


def test_check_cli_on_cbc_volume(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """`cryptboot cgd check` decrypts any CBC cgd in Python, even one Linux cannot map."""
    import io

    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    params = _params(tmp_path, verify="mbr", alg="aes-cbc", keylength=128)
    key = _key(128)
    plain = _with(510, b"\x55\xaa", 4096)
    ecb = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    sectors = []
    for n in range(8):
        iv = ecb.update(n.to_bytes(16, "little"))
        enc = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
        sectors.append(enc.update(plain[512 * n:512 * (n + 1)]) + enc.finalize())
    img = tmp_path / "cbc.img"
    img.write_bytes(b"".join(sectors))
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(PASS + b"\n")))
    assert cgd_cli.main(["check", "-p", params, str(img)]) == 0
    assert "key verified (MBR boot signature found)" in capsys.readouterr().out
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"wrong\n")))
    with pytest.raises(WrongKey):
        cgd_cli.main(["check", "-p", params, str(img)])
    assert cgd_cli.main(["info", params]) == 0
    assert "cannot be opened: " in capsys.readouterr().out


FAKE_DM = """#!/bin/sh
# 'open ... DEVICE NAME' shows the file "plain" as the mapping; 'close NAME' removes it
d="$(dirname "$0")"
echo "$*" >> "$d/calls"
cat > "$d/stdin"
mkdir -p "$d/mapper"
for last; do :; done
if [ "$1" = open ]; then cp "$d/plain" "$d/mapper/$last"; else rm -f "$d/mapper/$last"; fi
"""


@pytest.mark.parametrize(("plain", "right"), [(_with(510, b"\x55\xaa", 4096), True),
                                                (b"\x9c" * 4096, False)])
def test_without_cryptography_the_mapping_is_checked_and_closed(
        tmp_path: Path, fake: Path, monkeypatch: pytest.MonkeyPatch, plain: bytes,
        right: bool) -> None:
    """A lean initramfs without the cryptography package: check on the mapping, as cgdconfig."""
    (fake / "cryptsetup").write_text(FAKE_DM)
    (fake / "plain").write_bytes(plain)
    monkeypatch.setattr(cgd, "_python_cipher", lambda: False)
    monkeypatch.setattr(cgd, "MAPPER_DIR", str(fake / "mapper"))
    params = _params(tmp_path, verify="mbr", keylength=256)
    dev = _image(tmp_path, bytes(4096), bytes(range(32)))  # never read in Python here
    if right:
        cgd.open_cgd("c", dev, params, PASS)
        assert (fake / "mapper" / "c").exists()
        assert (fake / "calls").read_text().splitlines()[0].startswith("open --type plain")
    else:
        with pytest.raises(WrongKey, match="no MBR boot signature"):
            cgd.open_cgd("c", dev, params, PASS)
        assert (fake / "calls").read_text().splitlines()[-1] == "close c"
        assert not (fake / "mapper" / "c").exists()
    assert (fake / "stdin").read_bytes() in (_key(256), b"")  # the key went on stdin
