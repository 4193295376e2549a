"""NetBSD cgd(4) params files and cgd.conf, parsed into frozen values.

A cgd volume has no on-disk header: the cipher, the key length and how to make the key live in a
params file (``/etc/cgd/wd0e``), written by ``cgdconfig -g``. Its grammar (cgdconfig(8);
NetBSD ``sbin/cgdconfig/cgdlex.l`` and ``cgdparse.y``) is a list of statements ended by ``;`` or a
newline; ``\\``-newline continues a line (long base64 values wrap that way), ``#`` comments run
to the end of the statement, a ``keygen`` takes one setting or a ``{ ... }`` block, and bit
strings are base64 of a 32-bit big-endian bit count followed by the bits.

Unlike cgdconfig, which only warns about unknown words and then falls back to defaults, this
parser rejects them with ``FILE:LINE``: a boot helper that guesses a cipher or a verification
method would map garbage or accept a wrong passphrase.

Stdlib only: this runs on every boot.
"""

from __future__ import annotations

import base64
import binascii
import os
from dataclasses import dataclass

from cryptboot.errors import ConfigError

# cgdconfig's default key lengths (params.c ``crypto_defaults``), in bits.
DEFAULT_KEYLENGTH = {
    "adiantum": 256,
    "aes-cbc": 128,
    "aes-xts": 256,
    "3des-cbc": 192,
    "blowfish-cbc": 128,
}
IV_METHODS = ("encblkno", "encblkno1", "encblkno8")
VERIFY_METHODS = ("none", "disklabel", "ffs", "re-enter", "mbr", "gpt", "zfs")
KEYGEN_METHODS = (
    "pkcs5_pbkdf2/sha1", "pkcs5_pbkdf2", "argon2id", "storedkey",
    "randomkey", "urandomkey", "shell_cmd",
)
PASSPHRASE_METHODS = ("pkcs5_pbkdf2/sha1", "pkcs5_pbkdf2", "argon2id")
SHARED_ALGORITHMS = {"hkdf-hmac-sha256": 256}  # name -> length of the shared key in bits
CGD_DIR = "/etc/cgd"
INT_MAX = 2**31 - 1


@dataclass(frozen=True)
class Bits:
    """A cgd bit string: ``nbits`` bits held in ``data`` (ceil(nbits/8) bytes)."""

    nbits: int
    data: bytes

    def __repr__(self) -> str:  # never print key material by accident
        return f"Bits(nbits={self.nbits})"


@dataclass(frozen=True)
class Shared:
    """``shared "ID" algorithm hkdf-hmac-sha256 subkey B64;``: one disk's key from a shared key."""

    ident: str
    algorithm: str
    info: bytes
    line: int


@dataclass(frozen=True)
class Keygen:
    """One ``keygen`` block. Unused fields are None. ``line`` is where it starts."""

    method: str
    line: int
    iterations: int | None = None
    memory: int | None = None          # argon2id, KiB
    parallelism: int | None = None     # argon2id lanes
    version: int | None = None         # argon2id version (19 = 0x13)
    salt: Bits | None = None
    key: Bits | None = None            # storedkey
    cmd: str | None = None             # shell_cmd
    shared: Shared | None = None

    @property
    def needs_passphrase(self) -> bool:
        return self.method in PASSPHRASE_METHODS


@dataclass(frozen=True)
class Params:
    """A params file with cgdconfig's defaults filled in."""

    path: str
    algorithm: str
    iv_method: str
    keylength: int                     # bits
    verify_method: str
    keygens: tuple[Keygen, ...]
    blocksize: int | None = None       # cgd cipher block size in bits (``blocksize``), if given

    @property
    def needs_passphrase(self) -> bool:
        return any(kg.needs_passphrase for kg in self.keygens)


@dataclass(frozen=True)
class ConfEntry:
    """One cgd.conf line: ``cgdN TARGET [PARAMSFILE]``; ``params`` is resolved to a path."""

    unit: str
    target: str
    params: str
    line: int


# ---------------------------------------------------------------------------------------------
# tokens

_WORD, _EOL, _LBRACE, _RBRACE, _EOF = "word", "end of statement", "'{'", "'}'", "end of file"


@dataclass(frozen=True)
class _Tok:
    kind: str
    text: str
    line: int
    quoted: bool = False

    def describe(self) -> str:
        if self.kind == _WORD:
            return f'"{self.text}"' if self.quoted else repr(self.text)
        if self.kind == _EOL:
            return "';' or end of line"
        return self.kind


def _tokenize(text: str, path: str) -> list[_Tok]:
    toks: list[_Tok] = []
    i, n, line = 0, len(text), 1
    while i < n:
        c = text[i]
        if c == "\\" and text.startswith("\n", i + 1):
            i, line = i + 2, line + 1
        elif c == "\\" and text.startswith("\r\n", i + 1):
            i, line = i + 3, line + 1
        elif c in " \t\r":
            i += 1
        elif c == "#":
            while i < n and text[i] not in ";\n":
                i += 1
        elif c in ";\n":
            toks.append(_Tok(_EOL, c, line))
            if c == "\n":
                line += 1
            i += 1
        elif c == "{":
            toks.append(_Tok(_LBRACE, c, line))
            i += 1
        elif c == "}":
            toks.append(_Tok(_RBRACE, c, line))
            i += 1
        elif c == '"':
            end = text.find('"', i + 1)
            if end < 0:
                raise ConfigError("unterminated quoted string", file=path, line=line)
            s = text[i + 1:end]
            toks.append(_Tok(_WORD, s, line, quoted=True))
            line += s.count("\n")
            i = end + 1
        else:
            j, parts = i, []
            while j < n and text[j] not in ' \t\r\n;"{}':
                if text[j] == "\\" and text.startswith("\n", j + 1):
                    # a continuation glued to a word: cgdconfig would keep the backslash and
                    # fail on the base64; accept it as the wrap it was meant to be
                    parts.append(text[i:j])
                    line += 1
                    j += 2
                    i = j
                    continue
                j += 1
            parts.append(text[i:j])
            toks.append(_Tok(_WORD, "".join(parts), line))
            i = j
    toks.append(_Tok(_EOF, "", line))
    return toks


def decode_bits(b64: str, *, path: str = "", line: int | None = None, what: str = "value") -> Bits:
    """Decode cgdconfig's length-prefixed base64 (``AAAAgM...``: be32 bit count, then bits)."""
    try:
        raw = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(
            f"{what} is not valid base64: {b64[:24]}{'...' if len(b64) > 24 else ''}",
            file=path or None, line=line,
        ) from None
    if len(raw) < 4:
        raise ConfigError(f"{what} is too short for a cgd bit string (needs a 4-byte bit count)",
                          file=path or None, line=line)
    nbits = int.from_bytes(raw[:4], "big")
    if nbits > 8 * (len(raw) - 4):
        raise ConfigError(
            f"{what} claims {nbits} bits but holds only {8 * (len(raw) - 4)}",
            file=path or None, line=line,
        )
    return Bits(nbits, raw[4:4 + (nbits + 7) // 8])


def encode_bits(data: bytes, nbits: int | None = None) -> str:
    """The inverse of :func:`decode_bits` (used to write params files in tests and images)."""
    nbits = 8 * len(data) if nbits is None else nbits
    return base64.b64encode(nbits.to_bytes(4, "big") + data).decode()


# ---------------------------------------------------------------------------------------------
# parser


class _Parser:
    def __init__(self, toks: list[_Tok], path: str) -> None:
        self.toks = toks
        self.pos = 0
        self.path = path

    def peek(self) -> _Tok:
        return self.toks[self.pos]

    def next(self) -> _Tok:
        tok = self.toks[self.pos]
        if tok.kind != _EOF:
            self.pos += 1
        return tok

    def error(self, tok: _Tok, expected: str) -> ConfigError:
        return ConfigError(f"expected {expected}, found {tok.describe()}", file=self.path,
                           line=tok.line)

    def word(self, expected: str) -> _Tok:
        tok = self.next()
        if tok.kind != _WORD:
            raise self.error(tok, expected)
        return tok

    def integer(self, what: str) -> int:
        tok = self.next()
        if tok.kind != _WORD or tok.quoted or not tok.text.isdigit():
            raise self.error(tok, f"an integer after {what!r}")
        value = int(tok.text)
        if value > INT_MAX:
            raise ConfigError(f"{what} {value} is too large", file=self.path, line=tok.line)
        return value

    def eol(self, after: str) -> None:
        tok = self.next()
        if tok.kind not in (_EOL, _EOF):
            raise self.error(tok, f"';' or end of line after {after}")

    def bits(self, what: str) -> Bits:
        first = self.word(f"a base64 value after {what!r}")
        parts = [first.text]
        while self.peek().kind == _WORD:
            parts.append(self.next().text)
        self.eol(what)
        return decode_bits("".join(parts), path=self.path, line=first.line, what=what)


def _set(fields: dict[str, object], name: str, value: object, path: str, line: int) -> None:
    if name in fields:
        raise ConfigError(f"{name!r} given twice in one keygen", file=path, line=line)
    fields[name] = value


def _keygen_var(p: _Parser, fields: dict[str, object]) -> None:
    """One setting inside a keygen: ``salt``, ``iterations``, ``key``, ``cmd``, ``shared`` ..."""
    tok = p.peek()
    if tok.kind == _EOL:
        p.next()
        return
    word = p.word("a keygen setting (salt, iterations, memory, parallelism, version, key, cmd, "
                  "shared)")
    name = word.text
    if name in ("iterations", "memory", "parallelism", "version"):
        value: object = p.integer(name)
        p.eol(name)
    elif name in ("salt", "key"):
        value = p.bits(name)
    elif name == "cmd":
        value = p.word("a command after 'cmd'").text
        p.eol("cmd")
    elif name == "shared":
        ident = p.word('an identifier after \'shared\' (shared "ID" algorithm ALG subkey B64)')
        kw = p.word("'algorithm' after the shared identifier")
        if kw.text != "algorithm":
            raise p.error(kw, "'algorithm' after the shared identifier")
        alg = p.word("a shared-key algorithm (hkdf-hmac-sha256)")
        if alg.text not in SHARED_ALGORITHMS:
            raise ConfigError(
                f"unknown shared-key algorithm {alg.text!r}; expected one of "
                + ", ".join(SHARED_ALGORITHMS), file=p.path, line=alg.line)
        kw = p.word("'subkey' after the shared algorithm")
        if kw.text != "subkey":
            raise p.error(kw, "'subkey' after the shared algorithm")
        info = p.bits("subkey")
        value = Shared(ident.text, alg.text, info.data, word.line)
    else:
        raise ConfigError(
            f"unknown keygen setting {name!r}; expected salt, iterations, memory, parallelism, "
            "version, key, cmd or shared", file=p.path, line=word.line)
    _set(fields, name, value, p.path, word.line)


def _make_keygen(method: str, line: int, fields: dict[str, object], path: str) -> Keygen:
    def num(name: str) -> int | None:
        v = fields.get(name)
        return v if isinstance(v, int) else None

    def bits(name: str) -> Bits | None:
        v = fields.get(name)
        return v if isinstance(v, Bits) else None

    cmd, shared = fields.get("cmd"), fields.get("shared")
    kg = Keygen(
        method=method, line=line, iterations=num("iterations"), memory=num("memory"),
        parallelism=num("parallelism"), version=num("version"), salt=bits("salt"),
        key=bits("key"), cmd=cmd if isinstance(cmd, str) else None,
        shared=shared if isinstance(shared, Shared) else None,
    )
    _check_keygen(kg, path)
    return kg


def _check_keygen(kg: Keygen, path: str) -> None:
    """What cgdconfig's ``keygen_verify`` treats as fatal, as a located error."""
    def need(field: str, present: object) -> None:
        if present is None:
            raise ConfigError(f"keygen {kg.method} needs {field!r}", file=path, line=kg.line)

    if kg.method in ("pkcs5_pbkdf2/sha1", "pkcs5_pbkdf2"):
        need("iterations", kg.iterations)
        need("salt", kg.salt)
        if kg.iterations is not None and kg.iterations < 1:
            raise ConfigError(f"keygen {kg.method}: iterations must be at least 1", file=path,
                              line=kg.line)
    elif kg.method == "argon2id":
        for name in ("iterations", "memory", "parallelism", "version", "salt"):
            need(name, getattr(kg, name))
    elif kg.method == "storedkey":
        need("key", kg.key)
    elif kg.method == "shell_cmd":
        need("cmd", kg.cmd)
    elif kg.method in ("randomkey", "urandomkey") and kg.shared is not None:
        raise ConfigError(f"keygen {kg.method} cannot be shared", file=path, line=kg.line)


def _keygen_method(tok: _Tok, path: str) -> str:
    if tok.text not in KEYGEN_METHODS:
        raise ConfigError(
            f"unknown keygen method {tok.text!r}; expected one of " + ", ".join(KEYGEN_METHODS),
            file=path, line=tok.line)
    return tok.text


def parse_params(text: str, path: str = "<params>") -> Params:
    """Parse a params file's text; raise :class:`ConfigError` naming ``path`` and the line."""
    p = _Parser(_tokenize(text, path), path)
    top: dict[str, tuple[object, int]] = {}
    keygens: list[Keygen] = []
    dep: dict[str, object] = {}
    dep_line: int | None = None
    while True:
        tok = p.peek()
        if tok.kind == _EOF:
            break
        if tok.kind == _EOL:
            p.next()
            continue
        word = p.word("a statement (algorithm, keylength, iv-method, verify_method, keygen)")
        name = word.text
        if name in ("algorithm", "iv-method", "verify_method"):
            value: object = p.word(f"a value after {name!r}").text
            p.eol(name)
            top[name] = (value, word.line)
        elif name in ("keylength", "blocksize"):
            top[name] = (p.integer(name), word.line)
            p.eol(name)
        elif name == "keygen":
            method = _keygen_method(p.word("a keygen method after 'keygen'"), path)
            fields: dict[str, object] = {}
            if p.peek().kind == _LBRACE:
                p.next()
                while p.peek().kind != _RBRACE:
                    if p.peek().kind == _EOF:
                        raise p.error(p.peek(), "'}' closing the keygen block opened at line "
                                      f"{word.line}")
                    _keygen_var(p, fields)
                p.next()
                p.eol("'}'")
            else:
                _keygen_var(p, fields)
                if p.peek().kind == _EOL:
                    p.next()
            keygens.append(_make_keygen(method, word.line, fields, path))
        elif name in ("keygen_method", "keygen_salt", "keygen_iterations", "xor_key"):
            # the pre-2003 flat form: one pkcs5_pbkdf2 keygen, plus a stored XOR key
            dep_line = word.line if dep_line is None else dep_line
            if name == "keygen_method":
                dep["method"] = _keygen_method(p.word("a keygen method"), path)
                p.eol(name)
            elif name == "keygen_iterations":
                dep["iterations"] = p.integer(name)
                p.eol(name)
            else:
                dep["salt" if name == "keygen_salt" else "key"] = p.bits(name)
        else:
            raise ConfigError(
                f"unknown statement {name!r}; expected algorithm, keylength, iv-method, "
                "verify_method, blocksize or keygen", file=path, line=word.line)
    if dep_line is not None:
        keygens[:0] = _deprecated_keygens(dep, dep_line, path)
    return _fill_defaults(top, tuple(keygens), path)


def _deprecated_keygens(dep: dict[str, object], line: int, path: str) -> list[Keygen]:
    """As cgdconfig's ``params_fget``: the old flat keygen first, its xor_key before it."""
    out: list[Keygen] = []
    if dep.get("key") is not None:
        out.append(_make_keygen("storedkey", line, {"key": dep["key"]}, path))
    method = str(dep.get("method", "pkcs5_pbkdf2"))
    fields = {k: v for k, v in dep.items() if k in ("salt", "iterations")}
    fields.setdefault("iterations", 128)  # the old code's default
    out.append(_make_keygen(method, line, fields, path))
    return out


def _fill_defaults(top: dict[str, tuple[object, int]], keygens: tuple[Keygen, ...],
                   path: str) -> Params:
    if "algorithm" not in top:
        raise ConfigError("no 'algorithm' statement (e.g. 'algorithm aes-xts;')", file=path)
    algorithm = str(top["algorithm"][0])
    iv_method, iv_line = top.get("iv-method", ("encblkno1", 0))
    if iv_method not in IV_METHODS:
        raise ConfigError(f"unknown iv-method {iv_method!r}; expected one of "
                          + ", ".join(IV_METHODS), file=path, line=iv_line)
    verify, v_line = top.get("verify_method", ("none", 0))
    if verify not in VERIFY_METHODS:
        raise ConfigError(f"unknown verify_method {verify!r}; expected one of "
                          + ", ".join(VERIFY_METHODS), file=path, line=v_line)
    if "keylength" in top:
        keylength = int(str(top["keylength"][0]))
        if keylength < 8 or keylength % 8:
            raise ConfigError(f"keylength {keylength} is not a positive multiple of 8 bits",
                              file=path, line=top["keylength"][1])
    elif algorithm in DEFAULT_KEYLENGTH:
        keylength = DEFAULT_KEYLENGTH[algorithm]
    else:
        raise ConfigError(f"no keylength given and no default for algorithm {algorithm!r}",
                          file=path, line=top["algorithm"][1])
    if not keygens:
        raise ConfigError("no 'keygen' statement: nothing says how to make the key", file=path)
    blocksize = top.get("blocksize")
    return Params(
        path=path, algorithm=algorithm, iv_method=str(iv_method), keylength=keylength,
        verify_method=str(verify), keygens=keygens,
        blocksize=int(str(blocksize[0])) if blocksize else None,
    )


def load_params(path: str) -> Params:
    """Read and parse a params file. A relative name that is not found is looked up in
    /etc/cgd, as cgdconfig does."""
    candidates = [path]
    if not os.path.isabs(path):
        candidates.append(os.path.join(CGD_DIR, path))
    for cand in candidates:
        try:
            with open(cand, encoding="utf-8", errors="surrogateescape") as f:
                text = f.read()
        except FileNotFoundError:
            continue
        except OSError as e:
            raise ConfigError(f"cannot read cgd params file: {e.strerror}", file=cand) from None
        return parse_params(text, cand)
    raise ConfigError("cgd params file not found"
                      + (f" (also looked in {CGD_DIR})" if len(candidates) > 1 else ""),
                      file=path)


# ---------------------------------------------------------------------------------------------
# cgd.conf


def parse_cgd_conf(text: str, path: str = "/etc/cgd/cgd.conf") -> tuple[ConfEntry, ...]:
    """``cgdN TARGET [PARAMSFILE]`` per line; ``#`` comments, ``\\`` continues a line.

    A missing PARAMSFILE is ``/etc/cgd/<basename of TARGET>``; a relative one is taken from the
    directory holding cgd.conf (normally /etc/cgd, where cgdconfig looks too).
    """
    base = os.path.dirname(path) or "."
    entries: list[ConfEntry] = []
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        start = i + 1
        logical = lines[i]
        while logical.endswith("\\") and i + 1 < len(lines):
            i += 1
            logical = logical[:-1] + " " + lines[i]
        i += 1
        hash_at = logical.find("#")
        if hash_at >= 0:
            logical = logical[:hash_at]
        words = logical.split()
        if not words:
            continue
        if len(words) not in (2, 3):
            raise ConfigError(
                f"expected 'cgdN TARGET [PARAMSFILE]', found {len(words)} field(s)",
                file=path, line=start)
        unit, target = words[0], words[1]
        if not (unit.startswith("cgd") and unit[3:].isdigit()):
            raise ConfigError(f"expected a cgd unit like 'cgd0', found {unit!r}", file=path,
                              line=start)
        if len(words) == 3:
            params = words[2] if os.path.isabs(words[2]) else os.path.join(base, words[2])
        else:
            params = os.path.join(CGD_DIR, os.path.basename(target))
        entries.append(ConfEntry(unit, target, params, start))
    return tuple(entries)


def load_cgd_conf(path: str) -> tuple[ConfEntry, ...]:
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            return parse_cgd_conf(f.read(), path)
    except FileNotFoundError:
        raise ConfigError("cgd.conf not found", file=path) from None
    except OSError as e:
        raise ConfigError(f"cannot read cgd.conf: {e.strerror}", file=path) from None
