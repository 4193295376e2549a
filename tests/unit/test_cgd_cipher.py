"""The Python cgd sector cipher against NetBSD's t_cgd_aes.c vectors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cryptboot.errors import CryptbootError
from cryptboot.unlock import cgd_cipher

VECTORS: list[dict[str, Any]] = json.loads(
    (Path(__file__).parent / "data" / "cgd" / "t_cgd_aes.json").read_text())["vectors"]


def test_vector_set_covers_what_matters() -> None:
    kinds = {(v["algorithm"], v["iv_method"], v["keylength"]) for v in VECTORS}
    assert kinds == {("aes-cbc", "encblkno1", 128), ("aes-cbc", "encblkno8", 128),
                     ("aes-xts", "encblkno1", 256), ("aes-xts", "encblkno1", 512)}
    assert {v["blkno"] for v in VECTORS} >= {0, 1, 3, 0xffff}


@pytest.mark.parametrize("v", VECTORS, ids=[v["name"] for v in VECTORS])
def test_decrypt_netbsd_vector(v: dict[str, Any]) -> None:
    key, ptxt, ctxt = (bytes.fromhex(v[k]) for k in ("key_hex", "ptxt_hex", "ctxt_hex"))
    got = cgd_cipher.decrypt(v["algorithm"], v["iv_method"], key, v["blkno"], ctxt)
    assert got == ptxt


@pytest.mark.parametrize("v", VECTORS, ids=[v["name"] for v in VECTORS])
def test_encrypt_netbsd_vector(v: dict[str, Any]) -> None:
    key, ptxt, ctxt = (bytes.fromhex(v[k]) for k in ("key_hex", "ptxt_hex", "ctxt_hex"))
    assert cgd_cipher.encrypt(v["algorithm"], v["iv_method"], key, v["blkno"], ptxt) == ctxt


def test_sector_number_matters() -> None:
    v = VECTORS[0]
    key, ptxt, ctxt = (bytes.fromhex(v[k]) for k in ("key_hex", "ptxt_hex", "ctxt_hex"))
    assert cgd_cipher.decrypt(v["algorithm"], v["iv_method"], key, v["blkno"] + 1, ctxt) != ptxt


def test_multi_sector_numbering() -> None:
    """Sector i of a run starting at blkno b is encrypted as sector b+i."""
    xts = [v for v in VECTORS if v["name"] in ("aes_xts_256_vec4", "aes_xts_256_vec5")]
    key = bytes.fromhex(xts[0]["key_hex"])
    ctxt = b"".join(bytes.fromhex(v["ctxt_hex"]) for v in xts)
    ptxt = b"".join(bytes.fromhex(v["ptxt_hex"]) for v in xts)
    assert cgd_cipher.decrypt("aes-xts", "encblkno1", key, 0, ctxt) == ptxt


@pytest.mark.parametrize(("alg", "keylen"), [("3des-cbc", 24), ("blowfish-cbc", 16),
                                              ("blowfish-cbc", 56)])
def test_other_cbc_ciphers_round_trip(alg: str, keylen: int) -> None:
    key = bytes(range(1, keylen + 1))
    data = bytes(range(256)) * 8
    enc = cgd_cipher.encrypt(alg, "encblkno1", key, 5, data)
    assert enc != data and cgd_cipher.decrypt(alg, "encblkno1", key, 5, enc) == data
    assert cgd_cipher.decrypt(alg, "encblkno8", key, 5, enc) != data


def test_refusals() -> None:
    with pytest.raises(CryptbootError, match="no Adiantum implementation"):
        cgd_cipher.decrypt("adiantum", "encblkno1", bytes(32), 0, bytes(512))
    with pytest.raises(CryptbootError, match="256- or 512-bit key"):
        cgd_cipher.decrypt("aes-xts", "encblkno1", bytes(16), 0, bytes(512))
    with pytest.raises(CryptbootError, match="two equal halves"):
        cgd_cipher.decrypt("aes-xts", "encblkno1", bytes(32), 0, bytes(512))
    with pytest.raises(CryptbootError, match="not whole 512-byte sectors"):
        cgd_cipher.decrypt("aes-xts", "encblkno1", bytes(range(32)), 0, bytes(100))
