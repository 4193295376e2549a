"""NetBSD cgd aes-xts volumes in a real kernel: dm-crypt plain mode reads them.

``test_cryptsetup_argv_reads_cgd_xts`` needs only the distribution's dracut: a minimal initramfs
runs the ``cryptsetup open`` command line that cryptboot builds (``cgd.cryptsetup_argv``), with the
key on stdin, on two disks written here in cgd's format with 512- and 4096-byte sectors, and
checks the decrypted contents; two variants that leave out ``--hash plain`` or
``--iv-large-sectors`` must read garbage, which shows those options are needed.
"""

from __future__ import annotations

import hashlib
import shlex
import subprocess
from pathlib import Path

import pytest

from cryptboot.unlock import cgd
from cryptboot.unlock.cgd_params import encode_bits, parse_params

pytestmark = pytest.mark.vm


def kernel() -> tuple[str, str]:
    """(path, version) of the Debian cloud kernel (globbed, never a fixed version)."""
    found = sorted(Path("/boot").glob("vmlinuz-*-cloud-amd64"))
    assert found, "no /boot/vmlinuz-*-cloud-amd64"
    return str(found[-1]), found[-1].name[len("vmlinuz-"):]


def xts_sectors(plain: bytes, key: bytes, secsize: int) -> bytes:
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    out = bytearray()
    for n in range(len(plain) // secsize):
        enc = Cipher(algorithms.AES(key), modes.XTS(n.to_bytes(16, "little"))).encryptor()
        out += enc.update(plain[secsize * n:secsize * (n + 1)]) + enc.finalize()
    return bytes(out)


def test_cryptsetup_argv_reads_cgd_xts(tmp_path: Path) -> None:
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
    path, _ = kernel()
    qemu = subprocess.run(
        ["qemu-system-x86_64", "-accel", "tcg", "-cpu", "max", "-m", "512", "-nographic",
         "-nodefaults", "-serial", "stdio", "-net", "none", "-no-reboot", "-kernel", path,
         "-initrd", str(image), "-append", "console=ttyS0 panic=-1 quiet rd.shell=0 "
         "rd.emergency=poweroff root=/dev/mapper/c512 rd.retry=60",
         "-drive", f"file={tmp_path / 'd512.img'},format=raw,if=none,id=d0,snapshot=on",
         "-device", "virtio-blk-pci,drive=d0",
         "-drive", f"file={tmp_path / 'd4096.img'},format=raw,if=none,id=d1,snapshot=on",
         "-device", "virtio-blk-pci,drive=d1,logical_block_size=4096,physical_block_size=4096"],
        capture_output=True, timeout=600)
    console = qemu.stdout.decode(errors="replace").replace("\r", "")
    assert "CGDTEST_END" in console, console[-4000:]
    got = {}
    for line in console.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] in runs:
            got[words[0]] = words[1]
    assert set(got) == set(runs), console[-4000:]
    assert got["c512"] == want and got["c4096"] == want     # cryptboot's command reads cgd
    assert got["nohash"] != want and got["nolarge"] != want  # and both options matter
