"""NetBSD cgd aes-xts volumes in a real kernel: dm-crypt plain mode reads them.

``test_cryptsetup_argv_reads_cgd_xts`` needs only the distribution's dracut: a minimal initramfs
runs the ``cryptsetup open`` command line that cryptboot builds (``cgd.cryptsetup_argv``), with the
key on stdin, on two disks written here in cgd's format with 512- and 4096-byte sectors, and
checks the decrypted contents; two variants that leave out ``--hash plain`` or
``--iv-large-sectors`` must read garbage, which shows those options are needed.

The boot tests run cryptboot itself. The disk is an ext4 root (with the MBR boot signature in
its unused first sector, so the params file can say ``verify_method mbr``) encrypted in cgd's
format under the key that the params file's ``pkcs5_pbkdf2/sha1`` keygen makes from the
passphrase, with ``cryptography`` directly, not cryptboot's cgd code. The initramfs is built by
the distribution's real dracut with the cryptboot module (as in tests/vm/test_hooks_dracut.py),
the params file included at /etc/cgd/vda, and the volume declared with ``cryptboot.cgd=`` on the
kernel command line. A wrong passphrase must be caught by the key check and asked again, then the
real init on the cgd root must come up. cryptboot's images carry no ``cryptography`` package, so
this also runs the check-on-the-mapping path. A cgd aes-cbc disk must be refused, with the
reason, before any passphrase is asked for.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import subprocess
from pathlib import Path

import pytest

from cryptboot.unlock import cgd
from cryptboot.unlock.cgd_params import encode_bits, parse_params
from tests.vm.conftest import PASSPHRASE, Machine, Vm, kernel, make_root_tree
from tests.vm.hooks_helpers import (
    CRYPTBOOT,
    unlock_wrong_then_right,
)
from tests.vm.hooks_helpers import (
    dracut_base as make_dracut_base,
)

pytestmark = pytest.mark.vm


def xts_sectors(plain: bytes, key: bytes, secsize: int) -> bytes:
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    out = bytearray()
    for n in range(len(plain) // secsize):
        enc = Cipher(algorithms.AES(key), modes.XTS(n.to_bytes(16, "little"))).encryptor()
        out += enc.update(plain[secsize * n:secsize * (n + 1)]) + enc.finalize()
    return bytes(out)


def test_cryptsetup_argv_reads_cgd_xts(tmp_path: Path, machine: Machine) -> None:
    key = hashlib.sha512(b"cgd test key").digest()            # 512 bits: AES-256-XTS
    params = parse_params(f"algorithm aes-xts;\nkeylength 512;\n"
                          f"keygen storedkey key {encode_bits(key)};\n", "p")
    plain = b"".join(hashlib.sha256(i.to_bytes(4, "little")).digest() for i in range(1 << 15))
    want = hashlib.sha256(plain).hexdigest()
    (tmp_path / "d512.img").write_bytes(xts_sectors(plain, key, 512))
    (tmp_path / "d4096.img").write_bytes(xts_sectors(plain, key, 4096))
    keyfile = tmp_path / "key"
    keyfile.write_bytes(key)
    keyfile.chmod(0o600)
    runs = {
        "c512": cgd.cryptsetup_argv(params, "/dev/vda", "c512", 512),
        "c4096": cgd.cryptsetup_argv(params, "/dev/vdb", "c4096", 4096),
    }
    # what a stdin key gets without "--hash plain": hashed (sha256 here; the default, ripemd160,
    # is not in this OpenSSL)
    hashed = list(runs["c512"])
    hashed[hashed.index("--hash") + 1] = "sha256"
    runs["nohash"] = hashed[:-1] + ["nohash"]
    runs["nolarge"] = [a for a in runs["c4096"] if a != "--iv-large-sectors"][:-1] + ["nolarge"]
    assert "--iv-large-sectors" in runs["c4096"]
    lines = ["#!/bin/sh", "echo CGDTEST_START"]
    for name, argv in runs.items():
        lines.append(f"{shlex.join(argv)} < /cgdkey && echo \"{name} "
                     f"$(head -c {len(plain)} /dev/mapper/{name} | sha256sum)\" && "
                     f"cryptsetup close {name}")
    lines += ["echo CGDTEST_END", "poweroff -f"]
    script = tmp_path / "cgdtest"
    script.write_text("\n".join(lines) + "\n")
    script.chmod(0o755)
    hook = tmp_path / "hook.sh"
    hook.write_text("/sbin/initqueue --onetime --settled --name cgdtest /sbin/cgdtest\n")
    image = tmp_path / "test.img"
    _, kver = kernel()
    subprocess.run(
        ["dracut", "-q", "--no-hostonly", "--kver", kver,
         "-m", "base dm udev-rules kernel-modules rootfs-block",
         "--omit", "systemd systemd-initrd dracut-systemd",
         "--add-drivers", "dm_crypt xts virtio_blk virtio_pci",
         "--install", "cryptsetup head sha256sum poweroff",
         "--include", str(keyfile), "/cgdkey", "--include", str(script), "/sbin/cgdtest",
         "--include", str(hook), "/lib/dracut/hooks/cmdline/99-cgdtest.sh", "-f", str(image)],
        check=True, capture_output=True)
    vm = machine.boot("cgd-sectors", image, [], "quiet rd.shell=0 rd.emergency=poweroff "
                      "root=/dev/mapper/c512 rd.retry=60", extra=[
        "-drive", f"file={tmp_path / 'd512.img'},format=raw,if=none,id=d0,snapshot=on",
        "-device", "virtio-blk-pci,drive=d0",
        "-drive", f"file={tmp_path / 'd4096.img'},format=raw,if=none,id=d1,snapshot=on",
        "-device", "virtio-blk-pci,drive=d1,logical_block_size=4096,physical_block_size=4096"])
    try:
        vm.expect("CGDTEST_END")
        console = vm.transcript.replace("\r", "")
    finally:
        vm.close()
    got = {}
    for line in console.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] in runs:
            got[words[0]] = words[1]
    assert set(got) == set(runs), console[-4000:]
    assert got["c512"] == want and got["c4096"] == want     # cryptboot's command reads cgd
    assert got["nohash"] != want and got["nolarge"] != want  # and both options matter


# --- booting cryptboot --------------------------------------------------------------------

OMIT = "crypt systemd systemd-initrd dracut-systemd"
APPEND = "quiet rd.shell=0 rd.emergency=poweroff rd.retry=60 rootfstype=ext4"
SALT = bytes.fromhex("0f1e2d3c4b5a69788796a5b4c3d2e1f0")
ITERATIONS = 1000


def params_text(algorithm: str, keylength: int) -> str:
    return (f"algorithm {algorithm};\niv-method encblkno1;\nkeylength {keylength};\n"
            f"verify_method mbr;\nkeygen pkcs5_pbkdf2/sha1 {{\n        iterations {ITERATIONS};\n"
            f"        salt {encode_bits(SALT)};\n}};\n")


def rootfs_image(work: Path) -> bytes:
    root = make_root_tree(work / "rootfs")
    img = work / "plain.img"
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "cgdroot", "-d", str(root), str(img), "24M"],
                   check=True)
    data = bytearray(img.read_bytes())
    img.unlink()
    assert data[510:512] == b"\0\0"  # ext4 leaves its first 1024 bytes to boot loaders
    data[510:512] = b"\x55\xaa"
    return bytes(data)


def cgd_sector(algorithm: str, key: bytes, blkno: int, sector: bytes) -> bytes:
    """One 512-byte sector as NetBSD's cgd writes it, with OpenSSL (``cryptography``), not
    cryptboot's cgd code: the tweak / IV input is the sector number, 64-bit little-endian in a
    16-byte block (encblkno1). tests/unit/test_cgd_disk_model.py checks it against NetBSD's
    published vectors."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    blk = blkno.to_bytes(16, "little")
    if algorithm == "aes-xts":
        enc = Cipher(algorithms.AES(key), modes.XTS(blk)).encryptor()
    else:  # aes-cbc, encblkno1: IV = AES_K(sector number)
        iv = Cipher(algorithms.AES(key), modes.ECB()).encryptor().update(blk)
        enc = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return enc.update(sector) + enc.finalize()


def cgd_encrypt(plain: bytes, algorithm: str, key: bytes) -> bytes:
    return b"".join(cgd_sector(algorithm, key, n, plain[512 * n:512 * (n + 1)])
                    for n in range(len(plain) // 512))


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cgd-boot")


@pytest.fixture(scope="module")
def plain(work: Path) -> bytes:
    return rootfs_image(work)


def make_cgd_disk(work: Path, plain: bytes, algorithm: str, keylength: int) -> tuple[Path, Path]:
    params = work / f"params-{algorithm}"
    params.write_text(params_text(algorithm, keylength))
    key = hashlib.pbkdf2_hmac("sha1", PASSPHRASE.encode(), SALT, ITERATIONS, keylength // 8)
    disk = work / f"cgd-{algorithm}.img"
    disk.write_bytes(cgd_encrypt(plain, algorithm, key))
    return disk, params


@pytest.fixture(scope="module")
def dracut_base(work: Path) -> Path:
    return make_dracut_base(work)


def build_image(work: Path, base: Path, params: Path, name: str) -> Path:
    empty = work / "crypttab-empty"
    empty.write_text("")
    out = work / f"{name}.img"
    env = dict(os.environ, dracutbasedir=str(base), CRYPTBOOT=CRYPTBOOT,
               CRYPTBOOT_CRYPTTAB=str(empty))
    _, kver = kernel()
    proc = subprocess.run(
        ["dracut", "-q", "--no-hostonly", "--kver", kver, "--add", "cryptboot", "--omit", OMIT,
         "--include", str(params), "/etc/cgd/vda", "-f", str(out)],
        env=env, capture_output=True)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-4000:]
    return out


def test_cgd_xts_root_boots_after_a_wrong_passphrase(work: Path, plain: bytes,
                                                     dracut_base: Path, machine: Machine,
                                                     vm_cleanup: list[Vm]) -> None:
    disk, params = make_cgd_disk(work, plain, "aes-xts", 512)
    image = build_image(work, dracut_base, params, "cgd-xts")
    vm = machine.boot("cgd-xts", image, [disk], "root=/dev/mapper/cgdroot "
                      "cryptboot.cgd=cgdroot:/dev/vda:/etc/cgd/vda " + APPEND)
    vm_cleanup.append(vm)
    facts = unlock_wrong_then_right(vm, "cgdroot")
    assert facts["pid"] == "1" and facts["root_dm"] == "cgdroot", vm.transcript


def test_cgd_cbc_root_is_refused_with_the_reason(work: Path, plain: bytes,
                                                 dracut_base: Path, machine: Machine,
                                                 vm_cleanup: list[Vm]) -> None:
    disk, params = make_cgd_disk(work, plain, "aes-cbc", 128)
    image = build_image(work, dracut_base, params, "cgd-cbc")
    vm = machine.boot("cgd-cbc", image, [disk], "root=/dev/mapper/cgdroot "
                      "cryptboot.cgd=cgdroot:/dev/vda:/etc/cgd/vda " + APPEND)
    vm_cleanup.append(vm)
    vm.expect(r"cgd algorithm aes-cbc has no dm-crypt\s+equivalent")
    vm.expect(r"Boot has failed")
    vm.close()  # dracut's emergency poweroff needs systemd: stop QEMU here
    console = vm.transcript
    assert "REAL_INIT_REACHED" not in console
    # refused before asking: the prompt (keys/prompt.py's words) never came
    assert "Please enter passphrase" not in console, console[-6000:]
