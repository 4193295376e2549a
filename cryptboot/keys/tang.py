"""A tang client: the McCallum-Relyea exchange (``GET /adv``, ``POST /rec/KID``), natively.

Binding (done by ``clevis encrypt tang`` on the running system) left in the JWE header the
client's public key ``C = cG`` as ``epk`` and the server's exchange key ``S = sG`` (its ``kid``
and the advertisement, ``clevis.tang.adv``); the content key came from the ECDH point ``K = cS =
sC``, and ``c`` was thrown away. Recovery here, as tang's README describes it: pick a fresh ``e``,
send ``X = C + eG`` to ``/rec/KID``, the server answers ``Y = sX = K + eS``, and ``K = Y - eS``.
The server never sees ``K`` nor anything that would let it compute ``K`` without ``C``.

``cryptography`` (OpenSSL) gives ``eG`` and the x coordinate of ``eS`` (ECDH); the two affine
point additions it does not offer are below, in plain integers (P-256, P-384, P-521). ``eS``'s y
is recovered from the curve equation up to its sign: both candidates for ``K`` are returned and
the JWE's AES-GCM tag tells which one is right. HTTP is ``http.client`` (stdlib).

Imported only when a volume has a clevis token (it pulls in ``cryptography`` and ``http.client``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time

from cryptboot.errors import CryptbootError

TYPE_CHECKING = False
if TYPE_CHECKING:  # not imported at run time: typing is slow to import
    from typing import Any

Point = tuple[int, int]


class TangError(CryptbootError):
    """A tang server answered wrongly, or its keys do not verify."""


class TangUnreachable(TangError):
    """No answer from the server (connection refused, timed out, no route, DNS)."""


# ---------------------------------------------------------------------------------------------
# curves: (p, a, b, n, coordinate bytes); a = -3 for all three


def _curve(p: int, b: int, n: int, size: int) -> tuple[int, int, int, int, int]:
    return (p, p - 3, b, n, size)


CURVES = {
    "P-256": _curve(
        2**256 - 2**224 + 2**192 + 2**96 - 1,
        0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B,
        0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551, 32),
    "P-384": _curve(
        2**384 - 2**128 - 2**96 + 2**32 - 1,
        int("B3312FA7E23EE7E4988E056BE3F82D19181D9C6EFE8141120314088F5013875A"
            "C656398D8A2ED19D2A85C8EDD3EC2AEF", 16),
        int("FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF"
            "581A0DB248B0A77AECEC196ACCC52973", 16), 48),
    "P-521": _curve(
        2**521 - 1,
        int("0051953EB9618E1C9A1F929A21A0B68540EEA2DA725B99B315F3B8B489918EF1"
            "09E156193951EC7E937B1652C0BD3BB1BF073573DF883D2C34F1EF451FD46B503F00", 16),
        int("01FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF"
            "FA51868783BF2F966B7FCC0148F709A5D03BB5C9B8899C47AEBB6FB71E91386409", 16), 66),
}


def on_curve(crv: str, pt: Point) -> bool:
    p, a, b, _n, _size = CURVES[crv]
    x, y = pt
    return 0 <= x < p and 0 <= y < p and (y * y - (x * x * x + a * x + b)) % p == 0


def point_add(crv: str, p1: Point | None, p2: Point | None) -> Point | None:
    """``p1 + p2`` in affine coordinates; None is the point at infinity."""
    p, a, _b, _n, _size = CURVES[crv]
    if p1 is None:
        return p2
    if p2 is None:
        return p1
    (x1, y1), (x2, y2) = p1, p2
    if x1 == x2:
        if (y1 + y2) % p == 0:
            return None
        lam = (3 * x1 * x1 + a) * pow(2 * y1, -1, p) % p
    else:
        lam = (y2 - y1) * pow(x2 - x1, -1, p) % p
    x3 = (lam * lam - x1 - x2) % p
    return x3, (lam * (x1 - x3) - y1) % p


def lift_x(crv: str, x: int) -> tuple[Point, Point]:
    """The two points with abscissa ``x`` (these curves have p = 3 mod 4: one exponentiation)."""
    p, a, b, _n, _size = CURVES[crv]
    rhs = (x * x * x + a * x + b) % p
    y = pow(rhs, (p + 1) // 4, p)
    if y * y % p != rhs:
        raise TangError(f"{crv}: x is not on the curve")
    return (x, y), (x, (p - y) % p)


# ---------------------------------------------------------------------------------------------
# JWK helpers


def b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwk_point(jwk: dict[str, Any]) -> tuple[str, Point]:
    """(curve, point) of an EC JWK, checked to be on its curve."""
    crv = jwk.get("crv")
    if jwk.get("kty") != "EC" or crv not in CURVES:
        raise TangError(f"not an EC key on P-256/384/521: kty={jwk.get('kty')} crv={crv}")
    try:
        pt = (int.from_bytes(b64d(jwk["x"]), "big"), int.from_bytes(b64d(jwk["y"]), "big"))
    except (KeyError, ValueError, TypeError):
        raise TangError("EC key without valid x/y") from None
    if not on_curve(crv, pt):
        raise TangError(f"{crv} key is not on its curve")
    return crv, pt


def point_jwk(crv: str, pt: Point, alg: str = "ECMR") -> dict[str, Any]:
    size = CURVES[crv][4]
    return {"alg": alg, "crv": crv, "kty": "EC",
            "x": b64e(pt[0].to_bytes(size, "big")), "y": b64e(pt[1].to_bytes(size, "big"))}


def thumbprint(jwk: dict[str, Any], hash_name: str = "sha256") -> str:
    """RFC 7638 thumbprint of an EC JWK (tang names its keys by it)."""
    members = {k: jwk[k] for k in ("crv", "kty", "x", "y")}
    text = json.dumps(members, separators=(",", ":"), sort_keys=True).encode()
    return b64e(hashlib.new(hash_name, text).digest())


def has_op(jwk: dict[str, Any], op: str) -> bool:
    ops = jwk.get("key_ops")
    return isinstance(ops, list) and op in ops


def find_exchange_key(keys: list[dict[str, Any]], kid: str | None) -> dict[str, Any]:
    """The ECMR (``deriveKey``) key of an advertisement whose thumbprint is ``kid``."""
    candidates = [k for k in keys if isinstance(k, dict) and has_op(k, "deriveKey")]
    for key in candidates:
        if kid is None or kid in (thumbprint(key), thumbprint(key, "sha1")):
            return key
    raise TangError(f"the advertisement has no exchange key {kid}")


# ---------------------------------------------------------------------------------------------
# signed advertisement (what a binding trusts; recovery uses the key pinned in the JWE)


def verify_adv(jws: dict[str, Any]) -> list[dict[str, Any]]:
    """Check a ``/adv`` answer: a JWS whose payload is a JWK set, signed (ES512 and kin) by
    every signing key in the set. Returns the keys; raises :class:`TangError` otherwise."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    try:
        payload = jws["payload"]
        sigs = jws.get("signatures") or [{"protected": jws["protected"],
                                          "signature": jws["signature"]}]
        keys: list[dict[str, Any]] = json.loads(b64d(payload))["keys"]
    except (KeyError, TypeError, ValueError):
        raise TangError("the advertisement is not a signed JWK set") from None
    verifiers = [k for k in keys if isinstance(k, dict) and has_op(k, "verify")]
    if not verifiers:
        raise TangError("the advertisement has no signing key")
    algs = {"ES256": ("P-256", hashes.SHA256()), "ES384": ("P-384", hashes.SHA384()),
            "ES512": ("P-521", hashes.SHA512())}
    curves = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1(), "P-521": ec.SECP521R1()}
    for key in verifiers:
        crv, (x, y) = jwk_point(key)
        pub = ec.EllipticCurvePublicNumbers(x, y, curves[crv]).public_key()
        size = CURVES[crv][4]
        ok = False
        for sig in sigs:
            try:
                header = json.loads(b64d(sig["protected"]))
                want_crv, digest = algs[header["alg"]]
                raw = b64d(sig["signature"])
            except (KeyError, TypeError, ValueError):
                continue
            if want_crv != crv or len(raw) != 2 * size:
                continue
            der = encode_dss_signature(int.from_bytes(raw[:size], "big"),
                                       int.from_bytes(raw[size:], "big"))
            try:
                pub.verify(der, f"{sig['protected']}.{payload}".encode(), ec.ECDSA(digest))
            except InvalidSignature:
                continue
            ok = True
            break
        if not ok:
            raise TangError(f"the advertisement is not signed by its key {thumbprint(key)}")
    return keys


# ---------------------------------------------------------------------------------------------
# HTTP


def _http(url: str, method: str, path: str, body: bytes | None, ctype: str | None,
          timeout: float) -> bytes:
    import http.client
    from urllib.parse import urlsplit

    u = urlsplit(url)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise TangError(f"tang URL {url}: only http:// and https:// URLs are supported")
    conn: http.client.HTTPConnection
    if u.scheme == "https":
        conn = http.client.HTTPSConnection(u.hostname, u.port, timeout=timeout)
    else:
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    full = u.path.rstrip("/") + path
    headers = {"Content-Type": ctype} if ctype else {}
    try:
        conn.request(method, full, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
    except (OSError, http.client.HTTPException) as e:
        raise TangUnreachable(_oserror_text(e)) from None
    finally:
        conn.close()
    if resp.status != 200:
        raise TangError(f"HTTP {resp.status} {resp.reason} for {method} {full}")
    return data


def _oserror_text(e: BaseException) -> str:
    """One line: an OS error's text, or what was wrong with an answer that was not HTTP (its
    first bytes, whitespace folded: a status line may hold anything)."""
    if isinstance(e, TimeoutError):
        return "timed out"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    text = " ".join(str(e).split())
    if not isinstance(e, OSError):  # http.client.HTTPException: BadStatusLine, ...
        short = text if len(text) <= 80 else text[:77] + "..."
        return f"no HTTP answer ({type(e).__name__}: {short})" if short else \
            f"no HTTP answer ({type(e).__name__})"
    return text or type(e).__name__


def fetch_adv(url: str, timeout: float = 10.0) -> list[dict[str, Any]]:
    """``GET URL/adv``, verified; the keys of the advertisement."""
    data = _http(url, "GET", "/adv", None, None, timeout)
    try:
        jws = json.loads(data)
    except ValueError:
        raise TangError(f"{url}/adv did not answer JSON") from None
    return verify_adv(jws)


# ---------------------------------------------------------------------------------------------
# recovery


def recover(url: str, server_key: dict[str, Any], kid: str, epk: dict[str, Any],
            timeout: float = 10.0) -> list[bytes]:
    """The candidates for the ECDH shared secret ``Z`` (x of ``K``, big-endian) of a JWE bound
    to ``server_key`` with client key ``epk``: one exchange with ``URL/rec/KID``."""
    from cryptography.hazmat.primitives.asymmetric import ec

    crv, spt = jwk_point(server_key)
    ccrv, cpt = jwk_point(epk)
    if ccrv != crv:
        raise TangError(f"the JWE's key is on {ccrv}, the server's on {crv}")
    curve = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1(), "P-521": ec.SECP521R1()}[crv]
    eph = ec.generate_private_key(curve)
    epub = eph.public_key().public_numbers()
    x = point_add(crv, cpt, (epub.x, epub.y))
    if x is None:  # e = -c: astronomically unlikely; a new e would do
        raise TangError("ephemeral key cancelled the client key; try again")
    body = json.dumps(point_jwk(crv, x)).encode()
    answer = _http(url, "POST", f"/rec/{kid}", body, "application/jwk+json", timeout)
    try:
        y_jwk = json.loads(answer)
    except ValueError:
        raise TangError(f"{url}/rec/{kid} did not answer a JWK") from None
    ycrv, ypt = jwk_point(y_jwk)
    if ycrv != crv:
        raise TangError(f"{url} answered a key on {ycrv}, not {crv}")
    spub = ec.EllipticCurvePublicNumbers(spt[0], spt[1], curve).public_key()
    es_x = int.from_bytes(eph.exchange(ec.ECDH(), spub), "big")
    size = CURVES[crv][4]
    out: list[bytes] = []
    p = CURVES[crv][0]
    for es in lift_x(crv, es_x):
        k = point_add(crv, ypt, (es[0], (p - es[1]) % p))
        if k is not None:
            out.append(k[0].to_bytes(size, "big"))
    return out


def recover_with_retry(url: str, server_key: dict[str, Any], kid: str, epk: dict[str, Any],
                       deadline: float | None, cancelled: threading.Event | None = None,
                       first_wait: float = 0.5, max_wait: float = 5.0) -> list[bytes]:
    """:func:`recover`, retried with back-off while the server does not answer, until
    ``deadline`` (``time.monotonic()``; None: forever) or ``cancelled`` is set. A server that
    answers wrongly is not retried. Raises :class:`TangUnreachable` naming the URL, the time
    waited and the last error."""
    start = time.monotonic()
    wait = first_wait
    while True:
        left = None if deadline is None else deadline - time.monotonic()
        per_try = 10.0 if left is None else max(0.5, min(10.0, left))
        try:
            return recover(url, server_key, kid, epk, timeout=per_try)
        except TangUnreachable as e:
            err = e.message
        now = time.monotonic()
        if cancelled is not None and cancelled.is_set():
            raise TangUnreachable(f"tang {url}: cancelled ({err})")
        if deadline is not None and now >= deadline:
            raise TangUnreachable(f"tang server {url} did not answer within "
                                  f"{now - start:.0f} s: {err}")
        pause = wait if deadline is None else min(wait, deadline - now)
        if cancelled is not None:
            if cancelled.wait(pause):
                raise TangUnreachable(f"tang {url}: cancelled ({err})")
        else:
            time.sleep(pause)
        wait = min(max_wait, wait * 2)
