"""clevis JWEs, as ``clevis luks bind`` leaves them in a LUKS2 token: the pins and the provider.

A LUKS2 token ``{"type": "clevis", "keyslots": ["N"], "jwe": {...}}`` holds a JWE (flattened
JSON, or compact) whose plaintext is the passphrase of keyslot N. Its protected header names
the pin (``clevis.pin``):

- ``tang``: ``alg`` ECDH-ES, ``enc`` A256GCM (A128/A192GCM too); the ECDH secret comes from the
  tang server (:mod:`cryptboot.keys.tang`); the content key from it by the Concat KDF of
  RFC 7518 4.6 (SHA-256, AlgorithmID = ``enc``, ``apu``/``apv`` from the header).
- ``sss``: Shamir's secret sharing (``alg`` dir): ``clevis.sss`` holds the prime ``p``, the
  threshold ``t`` and one compact JWE per share, each of any pin; each share's plaintext is a
  point (x, y) of a polynomial over GF(p), and ``t`` of them give its value at 0, the content
  key. The shares are asked for at the same time, so a server that is down costs nothing when
  enough others answer.
- ``tpm2`` (clevis's own TPM2 pin) is refused with the reason: systemd-cryptenroll's
  ``systemd-tpm2`` tokens are the TPM2 way here (docs/tpm2.md).

The AES-GCM tag authenticates the protected header (it is the additional data), so the tang
URL and key pinned at bind time cannot be swapped without the decryption failing.
"""

from __future__ import annotations

import hashlib
import json
import struct
import threading
import time

from cryptboot.config.model import KeyKind
from cryptboot.errors import CryptbootError, WrongKey
from cryptboot.keys.providers import Provider
from cryptboot.keys.tang import TangError, b64d

TYPE_CHECKING = False
if TYPE_CHECKING:  # not imported at run time: typing is slow to import
    from typing import Any

    from cryptboot.keys import KeyRequest

GCM_KEY_BITS = {"A128GCM": 128, "A192GCM": 192, "A256GCM": 256}


class ClevisError(CryptbootError):
    """The JWE cannot be decrypted (malformed, unsupported pin, no share answered)."""


class Jwe:
    """One JWE: the protected header (parsed and as sent), IV, ciphertext and tag."""

    __slots__ = ("header", "protected", "iv", "ciphertext", "tag")

    def __init__(self, header: dict[str, Any], protected: str, iv: bytes, ciphertext: bytes,
                 tag: bytes) -> None:
        self.header = header
        self.protected = protected
        self.iv = iv
        self.ciphertext = ciphertext
        self.tag = tag

    @classmethod
    def parse(cls, data: str | dict[str, Any]) -> Jwe:
        """From the compact form (``a.b.c.d.e``) or the flattened JSON form."""
        try:
            if isinstance(data, str):
                parts = data.strip().split(".")
                if len(parts) != 5:
                    raise ValueError("not five parts")
                prot, _ek, iv, ct, tag = parts
            else:
                prot, iv, ct, tag = (data["protected"], data["iv"], data["ciphertext"],
                                     data["tag"])
            header = json.loads(b64d(prot))
            if not isinstance(header, dict):
                raise ValueError("header is not an object")
            return cls(header, prot, b64d(iv), b64d(ct), b64d(tag))
        except (KeyError, TypeError, ValueError) as e:
            raise ClevisError(f"malformed clevis JWE: {e}") from None

    @property
    def pin(self) -> str:
        c = self.header.get("clevis")
        return str(c.get("pin")) if isinstance(c, dict) else "?"

    def pin_config(self) -> dict[str, Any]:
        c = self.header.get("clevis")
        conf = c.get(self.pin) if isinstance(c, dict) else None
        if not isinstance(conf, dict):
            raise ClevisError(f"clevis JWE without its {self.pin} configuration")
        return conf

    def open(self, cek: bytes) -> bytes:
        """The plaintext, decrypted with ``cek``; :class:`ClevisError` when the tag fails."""
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        enc = self.header.get("enc")
        if enc not in GCM_KEY_BITS or len(cek) * 8 != GCM_KEY_BITS[str(enc)]:
            raise ClevisError(f"unsupported JWE encryption {enc!r}")
        if self.header.get("zip"):
            raise ClevisError(f"compressed JWE (zip={self.header['zip']}) is not supported")
        try:
            return AESGCM(cek).decrypt(self.iv, self.ciphertext + self.tag,
                                       self.protected.encode())
        except InvalidTag:
            raise ClevisError("the JWE does not decrypt with the recovered key") from None

    def describe(self) -> str:
        """The pin and its servers, for the log: ``tang http://…``, ``sss 1 of [tang …, …]``."""
        try:
            conf = self.pin_config()
        except ClevisError:
            return self.pin
        if self.pin == "tang":
            return f"tang {conf.get('url')}"
        if self.pin == "sss":
            inner = []
            for j in conf.get("jwe") or []:
                try:
                    inner.append(Jwe.parse(j).describe())
                except ClevisError:
                    inner.append("?")
            return f"sss {conf.get('t')} of [{', '.join(inner)}]"
        return self.pin


def concat_kdf(z: bytes, enc: str, apu: bytes, apv: bytes, bits: int) -> bytes:
    """RFC 7518 4.6.2 / NIST SP 800-56A Concat KDF with SHA-256 (ECDH-ES direct agreement)."""
    def field(b: bytes) -> bytes:
        return struct.pack(">I", len(b)) + b

    other = field(enc.encode()) + field(apu) + field(apv) + struct.pack(">I", bits)
    out = b""
    counter = 1
    while len(out) * 8 < bits:
        out += hashlib.sha256(struct.pack(">I", counter) + z + other).digest()
        counter += 1
    return out[: bits // 8]


class Context:
    """How long a decryption may wait for its servers, and the flag that stops it."""

    def __init__(self, deadline: float | None = None,
                 cancelled: threading.Event | None = None) -> None:
        self.deadline = deadline
        self.cancelled = cancelled if cancelled is not None else threading.Event()


def decrypt(jwe: Jwe, ctx: Context) -> bytes:
    """The plaintext of a clevis JWE, by its pin."""
    pin = jwe.pin
    if pin == "tang":
        return _tang(jwe, ctx)
    if pin == "sss":
        return _sss(jwe, ctx)
    if pin == "tpm2":
        raise ClevisError("clevis's tpm2 pin is not supported: enroll the TPM2 with "
                          "systemd-cryptenroll --tpm2-device=auto instead (docs/tpm2.md)")
    raise ClevisError(f"unknown clevis pin {pin!r}")


def _tang(jwe: Jwe, ctx: Context) -> bytes:
    from cryptboot.keys import tang

    conf = jwe.pin_config()
    url = conf.get("url")
    adv = conf.get("adv")
    if not isinstance(url, str) or not isinstance(adv, dict):
        raise ClevisError("tang JWE without url or adv")
    h = jwe.header
    if h.get("alg") != "ECDH-ES":
        raise ClevisError(f"tang JWE with alg {h.get('alg')!r}, expected ECDH-ES")
    kid = h.get("kid")
    epk = h.get("epk")
    if not isinstance(kid, str) or not isinstance(epk, dict):
        raise ClevisError("tang JWE without kid or epk")
    enc = str(h.get("enc"))
    bits = GCM_KEY_BITS.get(enc)
    if bits is None:
        raise ClevisError(f"unsupported JWE encryption {enc!r}")
    keys = adv.get("keys")
    try:
        server_key = tang.find_exchange_key(keys if isinstance(keys, list) else [], kid)
        zs = tang.recover_with_retry(url, server_key, kid, epk, ctx.deadline, ctx.cancelled)
    except TangError as e:
        raise ClevisError(e.message if url in e.message else f"tang {url}: {e.message}") \
            from None
    apu = b64d(h["apu"]) if isinstance(h.get("apu"), str) else b""
    apv = b64d(h["apv"]) if isinstance(h.get("apv"), str) else b""
    for z in zs:
        try:
            return jwe.open(concat_kdf(z, enc, apu, apv, bits))
        except ClevisError:
            continue
    raise ClevisError(f"tang {url}: the recovered key does not decrypt the JWE "
                      "(server keys replaced, not rotated?)")


def lagrange_at_zero(points: list[tuple[int, int]], p: int) -> int:
    """The value at 0 of the polynomial through ``points`` over GF(p)."""
    k = 0
    for i, (xi, yi) in enumerate(points):
        acc = 1
        for j, (xj, _yj) in enumerate(points):
            if i != j:
                acc = acc * (-xj) * pow(xi - xj, -1, p) % p
        k = (k + acc * yi) % p
    return k


def _sss(jwe: Jwe, ctx: Context) -> bytes:
    conf = jwe.pin_config()
    try:
        praw = b64d(conf["p"])
        t = int(conf["t"])
        shares = [Jwe.parse(j) for j in conf["jwe"]]
    except (KeyError, TypeError, ValueError):
        raise ClevisError("sss JWE without p, t or jwe") from None
    if jwe.header.get("alg") != "dir":
        raise ClevisError(f"sss JWE with alg {jwe.header.get('alg')!r}, expected dir")
    if not 1 <= t <= len(shares):
        raise ClevisError(f"sss threshold {t} with {len(shares)} shares")
    p = int.from_bytes(praw, "big")
    size = len(praw)
    lock = threading.Condition()
    points: list[tuple[int, int]] = []
    errors: list[str] = []
    stop = threading.Event()  # enough shares: the rest give up

    def one(share: Jwe) -> None:
        sub = Context(ctx.deadline, stop)
        try:
            data = decrypt(share, sub)
            if len(data) != 2 * size:
                raise ClevisError(f"sss share of {len(data)} bytes, expected {2 * size}")
            pt = (int.from_bytes(data[:size], "big"), int.from_bytes(data[size:], "big"))
            with lock:
                points.append(pt)
                lock.notify_all()
        except CryptbootError as e:
            with lock:
                errors.append(e.message)
                lock.notify_all()

    threads = [threading.Thread(target=one, args=(s,), daemon=True, name="sss-share")
               for s in shares]
    for th in threads:
        th.start()
    try:
        with lock:
            while len(points) < t and len(points) + len(errors) < len(shares):
                if ctx.cancelled.is_set():
                    raise ClevisError("cancelled")
                lock.wait(0.2)
            got = list(points[:t])
            failed = list(errors)
    finally:
        stop.set()
    if len(got) < t:
        raise ClevisError(f"sss: {len(got)} of the {t} shares needed; " + "; ".join(failed))
    key = lagrange_at_zero(got, p).to_bytes(size, "big")
    return jwe.open(key)


# ---------------------------------------------------------------------------------------------
# the key provider (KeyKind.CLEVIS): one LUKS2 clevis token


class ClevisProvider(Provider):
    name = "clevis"
    background = True

    def attempt(self, req: KeyRequest) -> str | None:
        from cryptboot.keys import Key, KeyUnavailable
        from cryptboot.keys.tokens import read_tokens

        header = req.volume.options.header or req.device
        tid = req.source.token
        token = read_tokens(header).get(tid) if tid is not None else None
        if not token or token.get("type") != "clevis" or "jwe" not in token:
            raise KeyUnavailable(f"no clevis token {tid} in the LUKS2 header of {header}")
        try:
            jwe = Jwe.parse(token["jwe"])
        except ClevisError as e:
            raise KeyUnavailable(f"clevis token {tid}: {e.message}") from None
        what = f"the clevis token {tid} ({jwe.describe()})"
        timeout = req.volume.options.token_timeout
        deadline = time.monotonic() + timeout if timeout else None
        need_network(req, deadline)
        try:
            passphrase = decrypt(jwe, Context(deadline, req.cancelled))
        except ClevisError as e:
            raise KeyUnavailable(f"clevis token {tid}: {e.message}") from None
        key = Key(passphrase, KeyKind.CLEVIS, what)
        try:
            req.open(key)
        except WrongKey:
            req.tried.append(what)
            raise WrongKey(f"{what} does not open {req.volume.name}") from None
        return what


def need_network(req: KeyRequest, deadline: float | None) -> None:
    """The initramfs network (:mod:`cryptboot.network`, issue 14) is brought up, if the plan
    did not already, and waited for before a server is asked. Only as ``/init`` (PID 1):
    ``cryptboot unlock`` inside another initramfs or on a running system uses the network
    that is there."""
    import os

    plan = req.env.plan
    if plan is None or os.getpid() != 1:
        return
    from cryptboot import network
    from cryptboot.keys import KeyUnavailable

    left = None if deadline is None else max(0.1, deadline - time.monotonic())
    if not network.ensure(plan, left):
        waited = f" within {left:.0f} s" if left is not None else ""
        raise KeyUnavailable(f"the network did not come up{waited} (no interface got an "
                             "address), so no tang server can be asked")


def provider() -> Provider:
    return ClevisProvider()
