"""``cryptboot check``'s image reader (cryptboot/check/image.py) and its bad-input errors, and
the system readers (cryptboot/check/system.py) on a facts tree."""

from __future__ import annotations

import gzip
import io
import lzma
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cryptboot.check import system
from cryptboot.check.image import read_image
from cryptboot.initramfs import cpio
from tests.check_facts import VIRTIO_LUKS_ROOT, build_tree

CRYPTBOOT = [sys.executable, "-m", "cryptboot"]


def archive(*entries: cpio.Entry) -> bytes:
    buf = io.BytesIO()
    cpio.write(buf, entries, 0)
    return buf.getvalue()


EARLY = archive(cpio.Entry.directory("kernel"), cpio.Entry.file("kernel/x86/microcode/a.bin",
                                                               b"ucode"))
MAIN = archive(cpio.Entry.directory("usr"), cpio.Entry.directory("usr/sbin"),
               cpio.Entry.file("usr/sbin/cryptsetup", b"\x7fELF", 0o755),
               cpio.Entry.symlink("sbin", "usr/sbin"),
               cpio.Entry.file("etc/crypttab", b"root UUID=x none luks\n"),
               cpio.Entry.file("usr/lib/modules/6.1.0-9-amd64/kernel/crypto/xts.ko.xz", b"m"),
               cpio.Entry.symlink("lib", "usr/lib"))


def external(prog: str, data: bytes) -> bytes:
    if shutil.which(prog) is None:
        pytest.skip(f"{prog} not installed (tools/setup.sh installs it)")
    args = [prog, "-c", "-q"] if prog == "zstd" else [prog, "-l", "-c", "-q"]
    return subprocess.run(args, input=data, capture_output=True, check=True).stdout


COMPRESS = {
    "gzip": lambda d: gzip.compress(d),
    "xz": lambda d: lzma.compress(d, check=lzma.CHECK_CRC32),
    "zstd": lambda d: external("zstd", d),
    "lz4": lambda d: external("lz4", d),
}


@pytest.mark.parametrize("how", sorted(COMPRESS))
def test_early_part_then_compressed_part(tmp_path: Path, how: str) -> None:
    path = tmp_path / "initrd"
    pad = b"\0" * (-len(EARLY) % 512)
    path.write_bytes(EARLY + pad + COMPRESS[how](MAIN))
    img = read_image(str(path))
    assert img.parts == ["cpio", how, "cpio"]
    assert img.read("kernel/x86/microcode/a.bin") == b"ucode"
    assert img.read("/etc/crypttab") == b"root UUID=x none luks\n"
    assert img.has_file_exec("cryptsetup")          # through sbin -> usr/sbin
    assert img.lookup("sbin/cryptsetup") is not None
    assert img.kernel_versions() == ["6.1.0-9-amd64"]
    assert img.modules("6.1.0-9-amd64") == {"xts"}


def test_list(tmp_path: Path) -> None:
    path = tmp_path / "initrd"
    path.write_bytes(EARLY + gzip.compress(MAIN))
    proc = subprocess.run([*CRYPTBOOT, "check", "--list", str(path)], capture_output=True,
                          text=True, check=True)
    lines = proc.stdout.splitlines()
    assert lines[0] == f"# {path}: cpio + gzip + cpio"
    assert "-rwxr-xr-x          4 usr/sbin/cryptsetup" in lines
    assert "lrwxrwxrwx          8 sbin -> usr/sbin" in lines
    assert "-rw-r--r--          5 kernel/x86/microcode/a.bin" in lines


def bad(tmp_path: Path, data: bytes) -> str:
    path = tmp_path / "bad.img"
    path.write_bytes(data)
    proc = subprocess.run([*CRYPTBOOT, "check", str(path), "--kver", "6.1.0-9-amd64",
                           "--cmdline", "root=/dev/vda"], capture_output=True, text=True)
    assert proc.returncode == 2, proc
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0].replace(str(path), "IMG")


def test_not_an_initramfs(tmp_path: Path) -> None:
    assert bad(tmp_path, b"root:x:0:0:root:/root:/bin/bash\n") == (
        "cryptboot: error: IMG: not an initramfs: it starts with 726f6f743a78, neither a cpio "
        "archive (070701) nor a compressed one")


def test_truncated_cpio(tmp_path: Path) -> None:
    assert "truncated cpio archive at offset 0" in bad(tmp_path, MAIN[:300])


def test_truncated_compressed_part(tmp_path: Path) -> None:
    data = gzip.compress(MAIN)
    assert bad(tmp_path, EARLY + data[:len(data) // 2]) == (
        f"cryptboot: error: IMG: truncated gzip stream at offset {len(EARLY)} (the file ends "
        "before the compressed data does)")


def test_truncated_zstd_part(tmp_path: Path) -> None:
    data = external("zstd", MAIN)
    line = bad(tmp_path, EARLY + data[:len(data) // 2])
    assert line.startswith(f"cryptboot: error: IMG: truncated or corrupt zstd stream at offset "
                           f"{len(EARLY)}: zstd -d said: "), line


def test_unknown_compression(tmp_path: Path) -> None:
    assert bad(tmp_path, EARLY + b"\x42\x42\x42\x42garbage") == (
        f"cryptboot: error: IMG: unknown compression at offset {len(EARLY)}: magic "
        "424242426761 is none of gzip, zstd, xz, lzma, bzip2, lz4, lzo")


def test_unreadable_compression(tmp_path: Path) -> None:
    assert bad(tmp_path, EARLY + b"\x89LZO\x00\x0d\x0a\x1a") == (
        f"cryptboot: error: IMG: lzo-compressed part at offset {len(EARLY)}: cryptboot check "
        "cannot read this compression (it reads gzip, zstd, xz, lzma, bzip2 and lz4)")


def test_missing_image(tmp_path: Path) -> None:
    proc = subprocess.run([*CRYPTBOOT, "check", str(tmp_path / "nope")], capture_output=True,
                          text=True)
    assert proc.returncode == 2
    assert proc.stderr == (f"cryptboot: error: {tmp_path / 'nope'}: cannot read the image: No "
                           "such file or directory\n")


# --- system readers on a facts tree ----------------------------------------------------------


def test_stack_and_drivers_from_facts(tmp_path: Path) -> None:
    sr = system.SystemRoot(build_tree(tmp_path, VIRTIO_LUKS_ROOT))
    m = system.mounts(sr)["/"]
    assert (m.devnum, m.fstype) == ("253:0", "ext4")
    top = system.mount_block(sr, m)
    assert top == "dm-0"
    layers = system.stack(sr, top)
    assert [(b.name, b.kind, b.node) for b in layers] == [
        ("dm-0", "crypt", "/dev/mapper/root"), ("vda", "disk", "/dev/vda")]
    assert system.drivers(sr, "vda") == [("virtio0", "virtio_blk", "virtio_blk"),
                                         ("0000:00:02.0", "virtio-pci", "virtio_pci")]


def test_partition_and_builtin_driver(tmp_path: Path) -> None:
    facts = ("B sda 8:0 pci0000:00/0000:00:1f.2/ata1/host0/target0:0:0/0:0:0:0/block/sda 0\n"
             "B sda2 8:2 pci0000:00/0000:00:1f.2/ata1/host0/target0:0:0/0:0:0:0/block/sda/sda2"
             " 1\n"
             "D pci0000:00/0000:00:1f.2/ata1/host0/target0:0:0/0:0:0:0 sd sd_mod\n"
             "D pci0000:00/0000:00:1f.2 ahci -\n"
             "I 1 0 8:2 / / rw - ext4 /dev/sda2 rw\n")
    sr = system.SystemRoot(build_tree(tmp_path, facts))
    assert [(b.name, b.kind) for b in system.stack(sr, "sda2")] == [("sda2", "part"),
                                                                   ("sda", "disk")]
    assert system.drivers(sr, "sda") == [("0:0:0:0", "sd", "sd_mod"),
                                         ("0000:00:1f.2", "ahci", None)]


@pytest.mark.parametrize(("spec", "algs"), [
    ("aes-xts-plain64", ["aes", "xts"]),
    ("aes-cbc-essiv:sha256", ["aes", "cbc", "essiv", "sha256"]),
    ("serpent-xts-plain", ["serpent", "xts"]),
    ("capi:xts(aes)-plain64", ["xts", "aes"]),
    ("twofish", ["twofish", "cbc"]),
])
def test_cipher_algorithms(spec: str, algs: list[str]) -> None:
    assert system.cipher_algorithms(spec) == algs


def test_luks1_and_luks2_headers(tmp_path: Path) -> None:
    if shutil.which("cryptsetup") is None:
        pytest.skip("cryptsetup not installed")
    key = tmp_path / "key"
    key.write_bytes(b"k" * 32)
    # LUKS1 is formatted as LUKS2 and converted: writing a LUKS1 keyslot needs the kernel's
    # crypto (device-mapper or AF_ALG), which this host lacks
    for t, cipher in (("luks1", "aes-cbc-essiv:sha256"), ("luks2", "aes-xts-plain64")):
        disk = tmp_path / f"{t}.img"
        with open(disk, "wb") as f:
            f.truncate(20 << 20)
        subprocess.run(["cryptsetup", "luksFormat", "-q", "--type", "luks2", "--cipher", cipher,
                        "--key-size", "256", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations",
                        "1000", "--hash", "sha256", "--sector-size", "512", str(disk),
                        str(key)], check=True, capture_output=True)
        if t == "luks1":
            subprocess.run(["cryptsetup", "convert", "-q", "--type", "luks1", str(disk)],
                           check=True, capture_output=True)
        info = system.luks_dump(str(disk))
        assert info is not None
        assert (info.version, info.ciphers, info.hashes) == (t[-1], (cipher,), ("sha256",))
    assert system.luks_dump(str(key)) is None


def test_newest_kernel(tmp_path: Path) -> None:
    for v in ("6.1.0-9-amd64", "6.1.0-10-amd64", "5.10.0-30-amd64"):
        (tmp_path / f"vmlinuz-{v}").write_text("")
    assert system.newest_kernel(tmp_path) == "6.1.0-10-amd64"
