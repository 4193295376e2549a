"""crypttab(5): lines, fields, options, key fields and the FILE:LINE of every complaint."""

from __future__ import annotations

import pytest

from cryptboot.config.crypttab import Entry, parse_crypttab, split_options
from cryptboot.config.model import CryptType, DeviceSpec, KeyKind, KeySource, SpecKind
from cryptboot.errors import ConfigError

CT = "/etc/crypttab"


def one(line: str) -> Entry:
    (entry,) = parse_crypttab(line + "\n", CT)
    return entry


def test_comments_blank_lines_and_line_numbers() -> None:
    text = "# comment\n\n   \n  # indented comment\na /dev/sda1\n\tb\t/dev/sdb1  none  luks\n"
    a, b = parse_crypttab(text, CT)
    assert (a.name, str(a.where)) == ("a", "/etc/crypttab:5")
    assert (b.name, str(b.where)) == ("b", "/etc/crypttab:6")
    assert a.keys == () and a.options == {}


@pytest.mark.parametrize("key", ["none", "-", ""])
def test_no_key_means_prompt(key: str) -> None:
    assert one(f"x /dev/sda1 {key}").keys == ()


def test_keyfile_with_offset_size() -> None:
    e = one("x /dev/sda1 /etc/keys/x.key keyfile-offset=512,keyfile-size=64")
    assert e.keys == (KeySource(KeyKind.FILE, path="/etc/keys/x.key", offset=512, size=64),)


def test_octal_escapes_and_escaped_commas() -> None:
    e = one(r"my\055disk LABEL=my\040label /keys/a\040b.key cipher=aes\,x,hash=sha256")
    assert e.name == "my-disk"
    assert e.source == DeviceSpec(SpecKind.LABEL, "my label")
    assert e.keys[0].path == "/keys/a b.key"
    assert e.options["cipher"] == "aes,x"
    assert split_options("a,,b\\,c,d") == ["a", "b,c", "d"]


@pytest.mark.parametrize(("opts", "ctype"), [
    ("", None), ("luks", CryptType.LUKS), ("plain", CryptType.PLAIN), ("bitlk", CryptType.BITLK),
    ("tcrypt", CryptType.TCRYPT), ("cgd=/etc/cgd/wd0a", CryptType.CGD),
    ("cipher=aes-xts-plain64", CryptType.PLAIN),     # a cipher without a type: plain (Debian)
    ("luks,cipher=aes", CryptType.LUKS),
    ("tcrypt-hidden", CryptType.TCRYPT), ("swap", CryptType.PLAIN), ("key-slot=1", CryptType.LUKS),
])
def test_type(opts: str, ctype: CryptType | None) -> None:
    assert one(f"x /dev/sda1 none {opts}").options.get("type") == ctype


def test_all_implemented_options() -> None:
    e = one("x UUID=2505567a9e274efea4d515ad146c258b none "
            "luks,discard,readonly,noauto,nofail,tries=0,timeout=1min,headless,initramfs,"
            "x-systemd.device-timeout=20s,key-slot=2,sector-size=4096,"
            "header=/hdr.img:LABEL=boot,size=512,offset=8,skip=16,hash=sha512")
    o = e.options
    assert o["discard"] and o["readonly"] and o["noauto"] and o["nofail"] and o["headless"]
    assert o["initramfs"] is True
    assert (o["tries"], o["timeout"], o["device_timeout"]) == (0, 60.0, 20.0)
    assert (o["key_slot"], o["sector_size"], o["key_size"]) == (2, 4096, 512)
    assert (o["offset"], o["skip"], o["hash"]) == (8, 16, "sha512")
    assert (o["header"], o["header_device"]) == ("/hdr.img", DeviceSpec(SpecKind.LABEL, "boot"))
    assert e.source == DeviceSpec(SpecKind.UUID, "2505567a-9e27-4efe-a4d5-15ad146c258b")
    assert one("x /dev/sda1 none x-initrd.attach,read-only,headless=no").options == {
        "initramfs": True, "readonly": True, "headless": False}


def test_unimplemented_and_unknown_options_are_warned_with_line() -> None:
    (e,) = parse_crypttab("\n\nx /dev/sda1 none fido2-device=auto,pkcs11-uri=x,frob,"
                          "keyfile-erase\n", CT)
    assert e.warnings == (
        "/etc/crypttab:3: option 'fido2-device=auto' is not implemented by cryptboot; ignored",
        "/etc/crypttab:3: option 'pkcs11-uri=x' is not implemented by cryptboot; ignored",
        "/etc/crypttab:3: unknown option 'frob'; ignored",
        "/etc/crypttab:3: option 'keyfile-erase' is not implemented by cryptboot; ignored",
    )


def test_keyscripts() -> None:
    e = one("cryptroot /dev/sda2 /dev/disk/by-label/usb:/keys/root.key:30 keyscript=passdev")
    assert e.keys == (KeySource(KeyKind.DEVFILE, path="/keys/root.key",
                                device=DeviceSpec(SpecKind.LABEL, "usb"), timeout=30.0),)
    assert e.warnings == ()
    e = one("cryptroot /dev/sda2 cryptroot keyscript=decrypt_keyctl")
    assert e.keys == () and e.warnings == ()   # the passphrase cache does its job
    e = one("cryptroot /dev/sda2 arg keyscript=/usr/local/sbin/cryptkey")
    assert e.keys == ()
    assert e.warnings == ("/etc/crypttab:1: keyscript=/usr/local/sbin/cryptkey is not "
                          "implemented by cryptboot; the passphrase will be asked instead",)


@pytest.mark.parametrize(("text", "message"), [
    ("justone", "/etc/crypttab:1: expected NAME DEVICE [KEYFILE [OPTIONS]] (2 to 4 fields), "
                "found 1 field: 'justone'"),
    ("a b c d e", "/etc/crypttab:1: expected NAME DEVICE [KEYFILE [OPTIONS]] (2 to 4 fields), "
                  "found 5 fields: 'a b c d e'"),
    ("a sda1", "/etc/crypttab:1: expected UUID=, PARTUUID=, LABEL=, PARTLABEL=, ID= or an "
               "absolute path like /dev/sda2, found 'sda1'"),
    ("a/b /dev/sda1", "/etc/crypttab:1: expected a volume name (a plain file name without '/' "
                      "or spaces, at most 127 bytes), found 'a/b'"),
    ("a /dev/sda1 none tries=many", "/etc/crypttab:1: option tries=: expected a non-negative "
                                    "whole number, found 'many'"),
    ("a /dev/sda1 none timeout=soon", "/etc/crypttab:1: option timeout=: expected a time span"),
    ("a /dev/sda1 none luks,plain", "/etc/crypttab:1: expected one volume type (luks, plain, "
                                    "bitlk, tcrypt or cgd=), found luks and plain"),
    ("a /dev/sda1 none sector-size=1000", "/etc/crypttab:1: option sector-size=: expected a "
                                          "power of two from 512 to 4096, found '1000'"),
    ("a /dev/sda1 none discard=yes", "/etc/crypttab:1: option discard: expected no value"),
    ("a /dev/sda1 none cipher=", "/etc/crypttab:1: option cipher=: expected cipher=VALUE"),
    ("a /dev/sda1 none plain,key-slot=1", "/etc/crypttab:1: option key-slot=: a key slot needs "
                                          "a LUKS volume, found type plain"),
    ("a /dev/sda1 key.txt", "/etc/crypttab:1: expected an absolute key file path (optionally "
                            ":DEVICE), 'none' or '-' as the key field, found 'key.txt'"),
    ("a /dev/sda1 /k:LABEL= luks", "/etc/crypttab:1: expected UUID="),
    ("a /dev/sda1 none header=hdr", "/etc/crypttab:1: option header=: expected an absolute "
                                    "path to a detached header"),
    ("a /dev/sda1 x:y keyscript=passdev", "/etc/crypttab:1: keyscript=passdev: expected "
                                          "DEVICE:/PATH[:TIMEOUT], found 'x:y'"),
])
def test_errors_name_file_line_expected_found(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_crypttab(text + "\n", CT)
    assert str(e.value).startswith(message)
    assert e.value.file == CT and e.value.line == 1


def test_duplicate_name_points_at_both_lines() -> None:
    with pytest.raises(ConfigError) as e:
        parse_crypttab("a /dev/sda1\n# x\na /dev/sdb1\n", CT)
    assert str(e.value) == ("/etc/crypttab:3: duplicate volume name 'a': expected each name "
                            "once, found it already at /etc/crypttab:1")


def test_names_with_undecodable_bytes_and_the_length_limit() -> None:
    # load_plan decodes with surrogateescape: such a name is measured in its original bytes
    assert one("v\udcff /dev/sda1").name == "v\udcff"
    assert one("x" * 127 + " /dev/sda1").name == "x" * 127
    with pytest.raises(ConfigError) as e:
        one("x" * 126 + "\udcff\udcff /dev/sda1")
    assert "at most 127 bytes" in str(e.value)


def test_keyfile_options_without_a_key_file_are_warned() -> None:
    e = one("a /dev/sda1 none keyfile-size=32")
    assert e.warnings == ("/etc/crypttab:1: keyfile-offset=, keyfile-size= and keyfile-timeout= "
                          "apply to a key file, and there is none; ignored",)
    assert one("a /dev/sda1 /k keyfile-size=32").warnings == ()
    assert one("a /dev/sda1 LABEL=u:/k:5 keyscript=passdev,keyfile-offset=2").warnings == ()
