"""crypttab(5), systemd's and Debian's: ``NAME DEVICE [KEYFILE [OPTIONS]]`` lines into entries.

The same option and key-field readers serve ``rd.luks.options=`` and Debian's ``cryptopts=``, so
an option means one thing wherever it is written. Options cryptboot knows but does not carry out
become warnings naming FILE:LINE; unknown options too. Nothing is dropped silently.
"""

from __future__ import annotations

from cryptboot.config.devspec import parse_devspec, split_file_device
from cryptboot.config.model import CryptType, DeviceSpec, KeyKind, KeySource
from cryptboot.config.values import Where, has_control, parse_bool, parse_seconds, parse_uint

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# Known to systemd or Debian, not carried out by cryptboot: named in a warning.
UNIMPLEMENTED = frozenset({
    "keyfile-erase", "verify", "password-echo", "try-empty-password", "pkcs11-uri",
    "fido2-device", "fido2-cid", "fido2-rp", "tpm2-signature", "tpm2-measure-pcr",
    "tpm2-measure-bank", "tpm2-pcrlock",
    "tpm2-public-key", "tpm2-public-key-pcrs", "link-volume-key",
    "same-cpu-crypt", "submit-from-crypt-cpus", "no-read-workqueue", "no-write-workqueue",
    "swap", "tmp", "check", "checkargs", "noearly", "loud", "quiet", "fvault2",
    "veracrypt", "tcrypt-veracrypt", "tcrypt-hidden", "tcrypthidden", "tcrypt-system",
    "tcrypt-keyfile", "fixed-iv", "bitlk-iv", "integrity", "force", "luks2-token",
    "x-systemd.after", "x-systemd.before", "x-systemd.wants", "x-systemd.requires",
    "x-systemd.requires-mounts-for", "x-systemd.wanted-by", "x-systemd.required-by",
})
_TYPES = {"luks": CryptType.LUKS, "plain": CryptType.PLAIN, "bitlk": CryptType.BITLK,
          "tcrypt": CryptType.TCRYPT}
# keyword -> the type it implies when no type keyword is given
_IMPLIES = {"veracrypt": CryptType.TCRYPT, "tcrypt-veracrypt": CryptType.TCRYPT,
            "tcrypt-hidden": CryptType.TCRYPT, "tcrypthidden": CryptType.TCRYPT,
            "tcrypt-system": CryptType.TCRYPT, "tcrypt-keyfile": CryptType.TCRYPT,
            "swap": CryptType.PLAIN, "tmp": CryptType.PLAIN, "key-slot": CryptType.LUKS,
            "keyslot": CryptType.LUKS}
_FLAGS = {"discard": "discard", "allow-discards": "discard", "readonly": "readonly",
          "read-only": "readonly", "noauto": "noauto", "nofail": "nofail", "_netdev": "netdev",
          "initramfs": "initramfs", "x-initrd.attach": "initramfs"}
_INTS = {"size": "key_size", "offset": "offset", "skip": "skip", "key-slot": "key_slot",
         "keyslot": "key_slot", "tries": "tries", "sector-size": "sector_size"}
_RANDOM_KEYS = frozenset({"/dev/urandom", "/dev/random", "/dev/hw_random"})


def decode_octal(text: str) -> str:
    """Debian's ``\\0NNN`` octal escapes (``\\040`` is a space), as ``printf %b`` reads them."""
    if "\\0" not in text:
        return text
    out, i = [], 0
    while i < len(text):
        if text.startswith("\\0", i):
            j = i + 2
            while j < len(text) and j < i + 5 and text[j] in "01234567":
                j += 1
            if j > i + 2:
                out.append(chr(int(text[i + 2:j], 8)))
                i = j
                continue
        out.append(text[i])
        i += 1
    return "".join(out)


def split_options(text: str) -> list[str]:
    """Split on commas; ``\\,`` is a comma inside a value (systemd), then decode octal escapes."""
    items: list[str] = []
    cur: list[str] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text) and text[i + 1] == ",":
            cur.append(",")
            i += 2
            continue
        if c == ",":
            items.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    items.append("".join(cur))
    return [decode_octal(item) for item in items if item]


class Options:
    """Options as written: only the explicitly given ``VolumeOptions`` fields are in ``fields``,
    so command-line defaults (``cryptboot.tries=``) can fill in the rest later."""

    __slots__ = ("fields", "key_offset", "key_size", "key_timeout", "keyscript", "warnings")

    def __init__(self) -> None:
        self.fields: dict[str, Any] = {}
        self.key_offset = 0
        self.key_size: int | None = None
        self.key_timeout: float | None = None
        self.keyscript: str | None = None
        self.warnings: list[str] = []


def _type_of(words: list[str], where: Where) -> CryptType | None:
    explicit = [w for w in words if w in _TYPES or w == "cgd"]
    kinds = {CryptType.CGD if w == "cgd" else _TYPES[w] for w in explicit}
    if len(kinds) > 1:
        names = " and ".join(sorted({w for w in explicit}))
        raise where.error(f"expected one volume type (luks, plain, bitlk, tcrypt or cgd=), "
                          f"found {names}")
    if kinds:
        return kinds.pop()
    for w in words:
        if w in _IMPLIES:
            return _IMPLIES[w]
    if "cipher" in words:
        return CryptType.PLAIN     # a cipher only matters without a header: plain mode
    return None


def parse_options(text: str, where: Where) -> Options:
    """Parse a crypttab options field (or ``rd.luks.options`` / ``cryptopts`` remainder)."""
    out = Options()
    items = split_options(text)
    keys = [item.split("=", 1)[0] for item in items]
    ctype = _type_of(keys, where)
    if ctype is not None:
        out.fields["type"] = ctype
    for item in items:
        key, eq, value = item.partition("=")
        what = f"option {key}="
        if key in _TYPES:
            _no_value(key, eq, where)
        elif key in _FLAGS:
            _no_value(key, eq, where)
            out.fields[_FLAGS[key]] = True
        elif key == "headless":
            out.fields["headless"] = parse_bool(value, where, what) if eq else True
        elif key in _INTS:
            num = parse_uint(_need(key, eq, value, where), where, what)
            if key == "sector-size" and (num < 512 or num > 4096 or num & (num - 1)):
                raise where.error(f"{what}: expected a power of two from 512 to 4096, "
                                  f"found {value!r}")
            out.fields[_INTS[key]] = num
            if key in ("key-slot", "keyslot") and out.fields.get("type", CryptType.LUKS) \
                    is not CryptType.LUKS:
                raise where.error(f"{what}: a key slot needs a LUKS volume, found type "
                                  f"{out.fields['type']}")
        elif key in ("cipher", "hash"):
            out.fields[key] = _need(key, eq, value, where)
        elif key == "timeout":
            out.fields["timeout"] = parse_seconds(_need(key, eq, value, where), where, what)
        elif key == "x-systemd.device-timeout":
            out.fields["device_timeout"] = parse_seconds(_need(key, eq, value, where), where,
                                                         what)
        elif key == "keyfile-offset":
            out.key_offset = parse_uint(_need(key, eq, value, where), where, what)
        elif key == "keyfile-size":
            out.key_size = parse_uint(_need(key, eq, value, where), where, what)
        elif key == "keyfile-timeout":
            out.key_timeout = parse_seconds(_need(key, eq, value, where), where, what)
        elif key == "header":
            path, dev = split_file_device(_need(key, eq, value, where), where)
            if not path.startswith("/") and dev is None:
                raise where.error(f"{what}: expected an absolute path to a detached header "
                                  f"(optionally :DEVICE), found {value!r}")
            out.fields["header"] = path
            out.fields["header_device"] = dev
        elif key == "cgd":
            out.fields["cgd_params"] = _need(key, eq, value, where)
        elif key == "token-timeout":  # issue 13: TPM2 / tang tokens
            out.fields["token_timeout"] = parse_seconds(_need(key, eq, value, where), where,
                                                        what)
        elif key == "tpm2-pin":
            out.fields["tpm2_pin"] = parse_bool(value, where, what) if eq else True
        elif key in ("tpm2-device", "tpm2-pcrs"):
            out.fields[key.replace("-", "_")] = _need(key, eq, value, where)
        elif key == "keyscript":
            out.keyscript = _need(key, eq, value, where)
        elif key in UNIMPLEMENTED or key.startswith("x-systemd."):
            out.warnings.append(f"{where}: option '{item}' is not implemented by cryptboot; "
                                "ignored")
        else:
            out.warnings.append(f"{where}: unknown option '{item}'; ignored")
    if out.fields.get("type") is CryptType.PLAIN and "cipher" not in out.fields:
        out.warnings.append(f"{where}: plain volume without cipher=: cryptsetup's compiled-in "
                            "default cipher, size and hash will be used")
    return out


def _no_value(key: str, eq: str, where: Where) -> None:
    if eq:
        raise where.error(f"option {key}: expected no value, found {key}=...")


def _need(key: str, eq: str, value: str, where: Where) -> str:
    if not eq or not value:
        raise where.error(f"option {key}=: expected {key}=VALUE, found {key}{eq} with no value")
    return value


def parse_key_field(text: str, opts: Options, where: Where) -> tuple[KeySource, ...]:
    """The third crypttab field (and ``key=`` of ``cryptopts``) as key sources to try.

    ``none``, ``-`` or empty: none (the passphrase is asked). With Debian's ``keyscript=passdev``
    the field is ``DEVICE:PATH[:TIMEOUT]``, a keyfile on another device; with
    ``decrypt_keyctl`` the passphrase cache does the same job; other keyscripts are warned about.
    """
    script = opts.keyscript.rsplit("/", 1)[-1] if opts.keyscript is not None else None
    has_file = text not in ("", "none", "-") and script in (None, "passdev")
    if not has_file and (opts.key_offset or opts.key_size is not None
                         or opts.key_timeout is not None):
        opts.warnings.append(f"{where}: keyfile-offset=, keyfile-size= and keyfile-timeout= "
                             "apply to a key file, and there is none; ignored")
    if text in ("", "none", "-"):
        return ()
    if opts.keyscript is not None:
        if script == "passdev":
            return (_passdev(text, opts, where),)
        if script != "decrypt_keyctl":
            opts.warnings.append(f"{where}: keyscript={opts.keyscript} is not implemented by "
                                 "cryptboot; the passphrase will be asked instead")
        return ()
    path, dev = split_file_device(text, where)
    if not path or (dev is None and not path.startswith("/")):
        raise where.error(f"expected an absolute key file path (optionally :DEVICE), 'none' or "
                          f"'-' as the key field, found {text!r}")
    if dev is None and path in _RANDOM_KEYS:
        opts.warnings.append(f"{where}: random key {path} only suits swap or tmp volumes, "
                             "which cryptboot does not set up")
    kind = KeyKind.FILE if dev is None else KeyKind.DEVFILE
    if dev is not None and not path.startswith("/"):
        path = "/" + path            # relative to the key device's root (systemd)
    return (KeySource(kind, path=path, device=dev, offset=opts.key_offset, size=opts.key_size,
                      timeout=opts.key_timeout if dev is not None else None),)


def _passdev(text: str, opts: Options, where: Where) -> KeySource:
    parts = text.split(":")
    timeout: float | None = opts.key_timeout
    if len(parts) >= 3 and parts[-1].isdigit():
        timeout = float(parse_uint(parts.pop(), where, "passdev timeout"))
    if len(parts) < 2 or not parts[-1].startswith("/"):
        raise where.error(f"keyscript=passdev: expected DEVICE:/PATH[:TIMEOUT], found {text!r}")
    dev = parse_devspec(":".join(parts[:-1]), where)
    return KeySource(KeyKind.DEVFILE, path=parts[-1], device=dev, offset=opts.key_offset,
                     size=opts.key_size, timeout=timeout)


class Entry:
    """One crypttab line (or ``cryptopts=`` word), parsed but not yet merged into the plan."""

    __slots__ = ("name", "source", "keys", "options", "where", "warnings")

    def __init__(self, name: str, source: DeviceSpec, keys: tuple[KeySource, ...],
                 options: dict[str, Any], where: Where, warnings: tuple[str, ...] = ()) -> None:
        self.name = name
        self.source = source
        self.keys = keys
        self.options = options
        self.where = where
        self.warnings = warnings

    def __repr__(self) -> str:
        return f"Entry({self.name!r}, {self.source}, {self.keys!r}, {self.options!r}, {self.where})"


def check_name(name: str, where: Where) -> str:
    """A mapping name: a plain file name, at most 127 bytes (device-mapper's limit)."""
    if not name or name in (".", "..") or "/" in name or has_control(name) or \
            any(c.isspace() for c in name) or len(name.encode("utf-8", "surrogateescape")) > 127:
        raise where.error(f"expected a volume name (a plain file name without '/' or spaces, at "
                          f"most 127 bytes), found {name!r}")
    return name


def make_entry(name: str, device: str, key: str, options: str, where: Where) -> Entry:
    """Build an :class:`Entry` from the four crypttab fields (already split)."""
    check_name(name, where)
    source = parse_devspec(device, where)
    opts = parse_options(options, where)
    keys = parse_key_field(key, opts, where)
    return Entry(name, source, keys, opts.fields, where, tuple(opts.warnings))


def parse_crypttab(text: str, path: str = "/etc/crypttab") -> tuple[Entry, ...]:
    """Parse crypttab text; a malformed line raises ConfigError at FILE:LINE, as do two lines
    with one name."""
    entries: list[Entry] = []
    seen: dict[str, Where] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = Where(path, number)
        fields = line.split()
        if len(fields) < 2 or len(fields) > 4:
            raise where.error(f"expected NAME DEVICE [KEYFILE [OPTIONS]] (2 to 4 fields), "
                              f"found {len(fields)} field{'s' if len(fields) != 1 else ''}: "
                              f"{line!r}")
        fields += [""] * (4 - len(fields))
        name = decode_octal(fields[0])
        if name in seen:
            raise where.error(f"duplicate volume name {name!r}: expected each name once, "
                              f"found it already at {seen[name]}")
        entry = make_entry(name, decode_octal(fields[1]), decode_octal(fields[2]), fields[3],
                           where)
        seen[name] = where
        entries.append(entry)
    return tuple(entries)
