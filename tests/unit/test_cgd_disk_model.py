"""The cgd boot test's disk writer (tests/vm/test_cgd_boot.py: OpenSSL's AES through
``cryptography``, independent of cryptboot's cgd code) against NetBSD's published per-sector
vectors (t_cgd_aes.c): its sector numbering is NetBSD's."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.vm.test_cgd_boot import cgd_encrypt, cgd_sector

VECTORS: list[dict[str, Any]] = [
    v for v in json.loads((Path(__file__).parent / "data" / "cgd" / "t_cgd_aes.json")
                          .read_text())["vectors"]
    if v["iv_method"] == "encblkno1"  # what the boot test writes (its params say encblkno1)
]


def test_both_algorithms_are_covered() -> None:
    assert {v["algorithm"] for v in VECTORS} == {"aes-xts", "aes-cbc"}
    assert max(v["blkno"] for v in VECTORS) == 0xffff


@pytest.mark.parametrize("v", VECTORS, ids=[v["name"] for v in VECTORS])
def test_disk_writer_matches_netbsd_vector(v: dict[str, Any]) -> None:
    key, ptxt, ctxt = (bytes.fromhex(v[k]) for k in ("key_hex", "ptxt_hex", "ctxt_hex"))
    assert cgd_sector(v["algorithm"], key, v["blkno"], ptxt) == ctxt
    assert cgd_sector(v["algorithm"], key, v["blkno"] + 1, ptxt) != ctxt


def test_disk_writer_numbers_sectors_from_zero() -> None:
    v = next(v for v in VECTORS if v["algorithm"] == "aes-xts" and v["blkno"] == 1)
    key, ptxt, ctxt = (bytes.fromhex(v[k]) for k in ("key_hex", "ptxt_hex", "ctxt_hex"))
    disk = cgd_encrypt(bytes(512) + ptxt, "aes-xts", key)
    assert disk[512:] == ctxt
