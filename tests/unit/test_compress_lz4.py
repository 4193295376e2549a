"""mkinitramfs --compress lz4: the kernel's unpacker reads only lz4's legacy frame format."""

from __future__ import annotations

import subprocess

from cryptboot.initramfs import build

LZ4_LEGACY_MAGIC = bytes.fromhex("02214c18")  # 0x184C2102, little-endian
LZ4_FRAME_MAGIC = bytes.fromhex("04224d18")  # the default format, which the kernel rejects


def test_lz4_is_the_legacy_format_and_round_trips() -> None:
    data = b"070701" + bytes(range(256)) * 4096 + b"TRAILER!!!"
    packed = build.compress(data, "lz4")
    assert packed[:4] == LZ4_LEGACY_MAGIC
    assert packed[:4] != LZ4_FRAME_MAGIC
    assert len(packed) < len(data) // 10
    out = subprocess.run(["lz4", "-q", "-d", "-c", "-"], input=packed, capture_output=True,
                         check=True).stdout
    assert out == data


def test_lz4_is_a_choice_of_the_cli() -> None:
    from cryptboot.initramfs import cli

    assert "lz4" in build.COMPRESSORS
    args = cli._parser().parse_args(["-o", "/x", "--compress", "lz4"])
    assert args.compress == "lz4"
