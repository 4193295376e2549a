"""cgd params files and cgd.conf: grammar, defaults, and located errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cryptboot.errors import ConfigError
from cryptboot.unlock.cgd_params import (
    decode_bits,
    encode_bits,
    load_cgd_conf,
    load_params,
    parse_cgd_conf,
    parse_params,
)

DATA = Path(__file__).parent / "data" / "cgd" / "t_cgdconfig"

# The example of cgdconfig(8) (NetBSD sbin/cgdconfig/cgdconfig.8): a params file as -g writes it.
MANPAGE_EXAMPLE = """\
algorithm aes-cbc;
iv-method encblkno1;
keylength 128;
verify_method none;
keygen pkcs5_pbkdf2/sha1 {
        iterations 39361;
        salt AAAAgMoHiYonye6KogdYJAobCHE=;
};
"""


def test_manpage_example() -> None:
    p = parse_params(MANPAGE_EXAMPLE, "wd0e")
    assert (p.algorithm, p.iv_method, p.keylength, p.verify_method) == (
        "aes-cbc", "encblkno1", 128, "none")
    (kg,) = p.keygens
    assert kg.method == "pkcs5_pbkdf2/sha1" and kg.iterations == 39361 and kg.line == 5
    assert kg.salt is not None and kg.salt.nbits == 128
    assert kg.salt.data == bytes.fromhex("ca07898a27c9ee8aa20758240a1b0871")
    assert p.needs_passphrase


def test_netbsd_test_file_with_wrapped_base64() -> None:
    p = load_params(str(DATA / "storedkey2a.params"))
    assert [kg.method for kg in p.keygens] == ["storedkey", "storedkey"]
    assert [kg.line for kg in p.keygens] == [5, 7]
    assert p.keygens[0].key is not None and p.keygens[0].key.nbits == 256
    assert not p.needs_passphrase


def test_shared_clause_parsed() -> None:
    p = load_params(str(DATA / "sharedstoredkey80.params"))
    (kg,) = p.keygens
    assert kg.shared is not None
    assert kg.shared.ident == "helloworld" and kg.shared.algorithm == "hkdf-hmac-sha256"
    assert kg.shared.info == bytes(range(0xb0, 0x100))  # the 80-byte subkey b0..ff


def test_defaults_filled_as_cgdconfig() -> None:
    p = parse_params("algorithm aes-xts;\nkeygen randomkey;\n")
    assert (p.keylength, p.iv_method, p.verify_method) == (256, "encblkno1", "none")
    p = parse_params("algorithm blowfish-cbc; keygen urandomkey;")  # ';' ends statements too
    assert p.keylength == 128 and p.keygens[0].method == "urandomkey"


def test_comments_quoted_cmd_and_argon2() -> None:
    text = (
        "# made by hand\n"
        "algorithm aes-xts; # trailing comment\n"
        "keylength 512;\n"
        "verify_method gpt;\n"
        "keygen argon2id {\n"
        "        iterations 3;\n"
        "        memory 1024;\n"
        "        parallelism 2;\n"
        "        version 19;\n"
        "        salt AAAAgAAAAAAAAAAAAAAAAAAAAAA=;\n"
        "};\n"
        'keygen shell_cmd cmd "printf \'%s\' x; echo";\n'
    )
    p = parse_params(text, "f")
    a, s = p.keygens
    assert (a.iterations, a.memory, a.parallelism, a.version) == (3, 1024, 2, 19)
    assert s.cmd == "printf '%s' x; echo" and s.line == 12


def test_deprecated_flat_keygen_becomes_pkcs5_pbkdf2_with_xor_key_first() -> None:
    text = (
        "algorithm aes-cbc;\n"
        "keygen_method pkcs5_pbkdf2;\n"
        "keygen_salt AAAAgMoHiYonye6KogdYJAobCHE=;\n"
        "xor_key AAAAgAAAAAAAAAAAAAAAAAAAAAA=;\n"
    )
    p = parse_params(text)
    assert [kg.method for kg in p.keygens] == ["storedkey", "pkcs5_pbkdf2"]
    assert p.keygens[1].iterations == 128  # the old code's default


@pytest.mark.parametrize(("text", "line", "words"), [
    ("algorithm aes-xts;\nkeygen pkcs5_pbkdf2/sha1 {\n iterations 10;\n};\n", 2, "needs 'salt'"),
    ("algorithm aes-xts;\nkeylenght 256;\nkeygen randomkey;\n", 2, "unknown statement"),
    ("algorithm aes-xts;\nverify_method fsck;\nkeygen randomkey;\n", 2, "unknown verify_method"),
    ("algorithm aes-xts;\nkeygen pbkdf2 { iterations 1; };\n", 2, "unknown keygen method"),
    ("algorithm aes-xts;\nkeygen storedkey key AAAA!!;\n", 2, "not valid base64"),
    ("algorithm aes-xts;\nkeygen storedkey key AAABAAAA;\n", 2, "claims 256 bits"),
    ("algorithm aes-xts;\nkeylength many;\n", 2, "an integer after 'keylength'"),
    ("algorithm aes-xts;\nkeylength 250;\nkeygen randomkey;\n", 2, "multiple of 8"),
    ("algorithm aes-xts;\nkeygen storedkey {\n key AAAAAA==;\n", 4, "'}' closing"),
    ("algorithm aes-xts;\nkeygen shell_cmd cmd \"echo\n", 2, "unterminated"),
    ("algorithm aes-xts;\nkeygen storedkey { bogus 1; };\n", 2, "unknown keygen setting"),
    ("algorithm serpent;\nkeygen randomkey;\n", 1, "no keylength given"),
    ("algorithm aes-xts;\nkeygen storedkey { key AAAAAA==; key AAAAAA==; };\n", 2, "twice"),
])
def test_errors_name_file_line_and_expectation(text: str, line: int, words: str) -> None:
    with pytest.raises(ConfigError) as ei:
        parse_params(text, "/etc/cgd/wd0e")
    assert ei.value.file == "/etc/cgd/wd0e"
    assert ei.value.line == line
    assert words in str(ei.value)
    assert str(ei.value).startswith(f"/etc/cgd/wd0e:{line}: ")


def test_file_level_errors() -> None:
    with pytest.raises(ConfigError, match="no 'algorithm'"):
        parse_params("keygen randomkey;\n", "p")
    with pytest.raises(ConfigError, match="no 'keygen'"):
        parse_params("algorithm aes-xts;\n", "p")


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found") as ei:
        load_params(str(tmp_path / "nope"))
    assert ei.value.file == str(tmp_path / "nope")


def test_bits_roundtrip_and_partial_bytes() -> None:
    assert decode_bits("AAAAgMoHiYonye6KogdYJAobCHE=").nbits == 128
    b = decode_bits(encode_bits(b"\xff\x80", 9))
    assert (b.nbits, b.data) == (9, b"\xff\x80")
    assert "nbits=9" in repr(b) and "ff" not in repr(b)  # no key material in reprs


def test_cgd_conf() -> None:
    text = (
        "# cgd.conf\n"
        "cgd0\t/dev/wd0e\twd0e\n"
        "\n"
        "cgd1 NAME=secret \\\n"
        "     /etc/cgd/other   # comment\n"
        "cgd2 /dev/sd0a\n"
    )
    e = parse_cgd_conf(text, "/etc/cgd/cgd.conf")
    assert [(x.unit, x.target, x.params, x.line) for x in e] == [
        ("cgd0", "/dev/wd0e", "/etc/cgd/wd0e", 2),
        ("cgd1", "NAME=secret", "/etc/cgd/other", 4),
        ("cgd2", "/dev/sd0a", "/etc/cgd/sd0a", 6),
    ]


@pytest.mark.parametrize(("text", "line", "words"), [
    ("cgd0\n", 1, "found 1 field"),
    ("# x\ncgd0 /dev/a p extra\n", 2, "found 4 field"),
    ("wd0 /dev/a p\n", 1, "a cgd unit like 'cgd0'"),
])
def test_cgd_conf_errors(text: str, line: int, words: str) -> None:
    with pytest.raises(ConfigError) as ei:
        parse_cgd_conf(text, "/etc/cgd/cgd.conf")
    assert (ei.value.file, ei.value.line) == ("/etc/cgd/cgd.conf", line)
    assert words in str(ei.value)


def test_cgd_conf_relative_params_from_its_directory() -> None:
    (a, b) = load_cgd_conf(str(DATA / "storedkeys" / "cgd.conf"))
    assert a.params == str(DATA / "storedkeys" / "wd0e")
    assert load_params(b.params).keygens[0].method == "storedkey"


# --- any input: a located ConfigError or a result, never a crash -------------------------

_WORDS = st.sampled_from([
    "algorithm", "aes-xts", "keylength", "256", "iv-method", "encblkno8", "verify_method", "gpt",
    "keygen", "storedkey", "pkcs5_pbkdf2/sha1", "argon2id", "shell_cmd", "key", "salt",
    "iterations", "cmd", "shared", "subkey", "hkdf-hmac-sha256", "AAAAgMoHiYonye6KogdYJAobCHE=",
    "xor_key", "keygen_salt", "{", "}", ";", "\n", "\\\n", '"', "#", " ", "\t", "99999999999",
])


@settings(max_examples=300, deadline=None)
@given(st.lists(_WORDS, max_size=40).map(" ".join) | st.text(max_size=200))
def test_parser_only_raises_located_config_errors(text: str) -> None:
    try:
        p = parse_params(text, "fuzz")
    except ConfigError as e:
        assert e.file == "fuzz"
        assert str(e).startswith("fuzz:")
    else:
        assert p.keygens and p.keylength % 8 == 0


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64), st.integers(min_value=0, max_value=8))
def test_bits_roundtrip(data: bytes, drop: int) -> None:
    nbits = max(0, 8 * len(data) - drop)
    b = decode_bits(encode_bits(data[:(nbits + 7) // 8], nbits))
    assert b.nbits == nbits and b.data == data[:(nbits + 7) // 8]
