"""The VM tier's harness: disk images built on the host, images built with ``cryptboot
mkinitramfs``, and a QEMU (TCG) runner driving the serial console with pexpect.

Disks are encrypted in place on files (``cryptsetup reencrypt --encrypt``: no device-mapper on
the host). The real root's ``/sbin/init`` is a small script that prints a sentinel and facts
(its PID, the root's device-mapper name, every mapping) and powers off. Every boot runs with
``-no-reboot``, ``panic=-1`` and an outer deadline; a failed expectation shows the console
transcript. Images and disks are built once per session and shared.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pexpect
import pytest

REPO = Path(__file__).resolve().parents[2]
CRYPTBOOT = [str(REPO / ".venv/bin/python"), "-m", "cryptboot"]
PASSPHRASE = "hunter2"
LUKS_UUID = "5e1f0000-aaaa-4bbb-8ccc-000000000001"
LUKS_UUID2 = "5e1f0000-aaaa-4bbb-8ccc-000000000002"
FS_UUID = "5e1f0000-aaaa-4bbb-8ccc-0000000000f5"
FS_UUID2 = "5e1f0000-aaaa-4bbb-8ccc-0000000000f6"
BOOT_TIMEOUT = float(os.environ.get("CRYPTBOOT_VM_TIMEOUT", "180"))
TYPE_DELAY = 0.5  # type after the prompt settled: a program switching echo off may flush input

REAL_INIT = r"""#!/bin/sh
# The real root's init: prove we got here, say what we see, power off.
export PATH=/bin:/sbin
[ -c /dev/console ] || mount -t devtmpfs devtmpfs /dev 2>/dev/null
exec </dev/console >/dev/console 2>&1
[ -r /proc/uptime ] || mount -t proc proc /proc 2>/dev/null
[ -d /sys/block ] || mount -t sysfs sysfs /sys 2>/dev/null
echo "REAL_INIT_REACHED pid=$$"
dev=$(awk '$5 == "/" { d = $3 } END { print d }' /proc/self/mountinfo)
name=$(cat /sys/dev/block/$dev/dm/name 2>/dev/null)
src=$(awk '$2 == "/" { s = $1 } END { print s }' /proc/mounts)
echo "FACT root dev=$dev dm=${name:-none} src=$src"
echo "FACT rootopts $(awk '$2 == "/" { o = $4 } END { print o }' /proc/mounts)"
# the initramfs' udev database entry of the root mapping, kept for the real system's udevd
grep -qs '^E:DM_UDEV_PRIMARY_SOURCE_FLAG=1' "/run/udev/data/b$dev" && echo "FACT udevdb kept"
for d in /sys/block/dm-*; do
    [ -e "$d/dm/name" ] && echo "FACT mapping name=$(cat $d/dm/name) uuid=$(cat $d/dm/uuid)"
done
# the network the initramfs left (issues 13, 14): state and IPv4 addresses of each interface
for i in /sys/class/net/*; do
    n=${i##*/}; [ "$n" = lo ] && continue
    addrs=$(ip -o -4 addr show dev "$n" | awk '{print $4}' | tr '\n' ' ')
    echo "FACT netif $n $(cat "$i/operstate") $addrs"
done
echo "FACT uptime $(cut -d' ' -f1 /proc/uptime)"
echo "REAL_INIT_DONE"
poweroff -f
"""


def kernel() -> tuple[Path, str]:
    """The newest Debian cloud kernel and its version (never a hard-coded one)."""
    found = sorted(Path("/boot").glob("vmlinuz-*-cloud-amd64"))
    if not found:
        pytest.skip("no /boot/vmlinuz-*-cloud-amd64 (apt-get install linux-image-cloud-amd64)")
    k = found[-1]
    return k, k.name[len("vmlinuz-"):]


# ---------------------------------------------------------------------------------------------
# Disks


def sh(argv: Sequence[str], *, input: bytes | None = None) -> str:
    proc = subprocess.run(list(argv), input=input, capture_output=True, check=False)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({proc.returncode}): "
                             f"{proc.stderr.decode(errors='replace')}")
    return proc.stdout.decode(errors="replace")


def make_root_tree(dest: Path) -> Path:
    """A tiny root: static busybox and the fact-printing init."""
    for d in ("bin", "sbin", "dev", "proc", "sys", "run", "tmp", "etc"):
        (dest / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2("/bin/busybox", dest / "bin/busybox")
    for applet in sh([str(dest / "bin/busybox"), "--list"]).split():
        link = dest / "bin" / applet
        if not link.exists():
            link.symlink_to("busybox")
    init = dest / "sbin/init"
    init.write_text(REAL_INIT)
    init.chmod(0o755)
    (dest / "etc/os-release").write_text("NAME=cryptboot-test-root\nID=cryptboot-test\n")
    return dest


def make_ext4(out: Path, tree: Path | None, *, label: str, uuid: str | None = None,
              size_mb: int = 48, fs_mb: int = 32) -> Path:
    """An ext4 filesystem of ``fs_mb`` in a file of ``size_mb`` (room for a LUKS header)."""
    with open(out, "wb") as f:
        f.truncate(size_mb << 20)
    argv = ["mkfs.ext4", "-q", "-F", "-L", label]
    if uuid:
        argv += ["-U", uuid]
    if tree is not None:
        argv += ["-d", str(tree)]
    sh([*argv, str(out), f"{fs_mb}M"])
    return out


def luks_encrypt(img: Path, *, uuid: str, luks_type: str = "luks2", pbkdf: str = "pbkdf2",
                 passphrase: str = PASSPHRASE, header: Path | None = None) -> Path:
    """Encrypt ``img`` in place (no device-mapper needed); pbkdf2 with 1000 iterations for speed,
    or argon2id with 64 MiB and 4 iterations."""
    # LUKS1 in-place encryption needs device-mapper: encrypt as LUKS2 (512-byte sectors, a
    # pbkdf2 keyslot) and convert the header to LUKS1, all offline on the file.
    argv = ["cryptsetup", "reencrypt", "--encrypt", "--type", "luks2", "-q", "--key-file=-",
            "--uuid", uuid]
    if header is not None:
        argv += ["--header", str(header)]
    else:
        argv += ["--reduce-device-size", "16M"]
    if pbkdf == "pbkdf2":
        argv += ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"]
    else:
        argv += ["--pbkdf", "argon2id", "--pbkdf-memory", "65536", "--pbkdf-force-iterations",
                 "4", "--pbkdf-parallel", "1"]
    if luks_type == "luks1":
        argv += ["--sector-size", "512", "--hash", "sha256"]
    sh([*argv, str(img)], input=passphrase.encode())
    if luks_type == "luks1":
        sh(["cryptsetup", "convert", "-q", "--type", "luks1", str(header or img)])
    return img


# ---------------------------------------------------------------------------------------------
# The QEMU runner


class BootFailed(AssertionError):
    pass


@dataclass
class Vm:
    """One QEMU boot on the serial console; ``transcript`` keeps everything the guest said."""

    child: pexpect.spawn
    deadline: float
    log: Path
    extra_ports: list[str] = field(default_factory=list)

    @property
    def transcript(self) -> str:
        self.child.logfile_read.flush()
        return self.log.read_text(errors="replace")

    def fail(self, what: str) -> BootFailed:
        tail = self.transcript[-6000:]
        return BootFailed(f"{what}\n--- console transcript (last 6000 chars, full log: "
                          f"{self.log}) ---\n{tail}")

    def expect(self, pattern: str | list[str], timeout: float | None = None) -> int:
        """Wait for a regex (or any of several); raise with the transcript on timeout/EOF."""
        left = self.deadline - time.monotonic()
        t = min(timeout, left) if timeout is not None else left
        try:
            return int(self.child.expect(pattern, timeout=max(t, 1)))
        except pexpect.TIMEOUT:
            raise self.fail(f"timed out after {t:.0f} s waiting for {pattern!r}") from None
        except pexpect.EOF:
            raise self.fail(f"QEMU exited while waiting for {pattern!r}") from None

    def type(self, text: str) -> None:
        time.sleep(TYPE_DELAY)
        self.child.send(text + "\r")

    def wait_exit(self, timeout: float = 60) -> None:
        self.expect(pexpect.EOF, timeout)

    def real_init(self) -> dict[str, str]:
        """Wait for the real init's facts and the power-off; return them."""
        self.expect(r"REAL_INIT_REACHED pid=(\d+)")
        facts = {"pid": self.child.match.group(1).decode()}
        self.expect("REAL_INIT_DONE")
        text = self.child.before.decode(errors="replace")
        m = re.search(r"FACT root dev=(\S*) dm=(\S*) src=(\S*)", text)
        if m:
            facts.update(root_dev=m.group(1), root_dm=m.group(2), root_src=m.group(3))
        m = re.search(r"FACT rootopts (\S*)", text)
        facts["root_options"] = m.group(1) if m else ""
        facts["udev_db"] = "kept" if "FACT udevdb kept" in text else "gone"
        facts["mappings"] = " ".join(sorted(re.findall(r"FACT mapping name=(\S+)", text)))
        facts["uuids"] = " ".join(sorted(re.findall(r"FACT mapping name=\S+ uuid=(\S+)", text)))
        facts["netifs"] = " ".join(f"{m[0]}={m[1]}:{m[2].strip().replace(' ', ',')}"
                                   for m in re.findall(r"FACT netif (\S+) (\S+) ?([^\r\n]*)",
                                                       text))
        self.wait_exit()
        return facts

    def close(self) -> None:
        if self.child.isalive():
            self.child.terminate(force=True)
        self.child.close(force=True)


@dataclass(frozen=True)
class Machine:
    """Kernel + image + disks; :meth:`boot` starts QEMU with the project's fixed flags."""

    kernel: Path
    logdir: Path

    def argv(self, initrd: Path, disks: Sequence[Path], append: str,
             extra: Sequence[str] = ()) -> list[str]:
        argv = ["qemu-system-x86_64", "-accel", "tcg", "-cpu", "max", "-m", "512",
                "-nographic", "-nodefaults", "-serial", "stdio", *extra, "-net", "none",
                "-no-reboot", "-kernel", str(self.kernel), "-initrd", str(initrd),
                "-append", f"console=ttyS0 panic=-1 {append}"]
        for d in disks:
            argv += ["-drive", f"file={d},format=raw,if=virtio,snapshot=on"]
        return argv

    def boot(self, name: str, initrd: Path, disks: Sequence[Path], append: str,
             extra: Sequence[str] = (), timeout: float = BOOT_TIMEOUT) -> Vm:
        argv = self.argv(initrd, disks, append, extra)
        log = self.logdir / f"{name}.log"
        child = pexpect.spawn(argv[0], argv[1:], timeout=timeout, maxread=65536,
                              searchwindowsize=None)
        child.logfile_read = open(log, "wb")  # noqa: SIM115 (closed with the child)
        return Vm(child, time.monotonic() + timeout, log)


# ---------------------------------------------------------------------------------------------
# Fixtures (session-scoped: every test shares what it can)


@pytest.fixture(scope="session")
def vmdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("vm")


@pytest.fixture(scope="session")
def machine(vmdir: Path) -> Machine:
    k, _ = kernel()
    logs = vmdir / "logs"
    logs.mkdir(exist_ok=True)
    return Machine(k, logs)


@pytest.fixture(scope="session")
def kver() -> str:
    return kernel()[1]


@pytest.fixture(scope="session")
def root_tree(vmdir: Path) -> Path:
    return make_root_tree(vmdir / "roottree")


@pytest.fixture(scope="session")
def plain_root(vmdir: Path, root_tree: Path) -> Path:
    """The unencrypted ext4 root (label realroot), copied before each encryption."""
    return make_ext4(vmdir / "plain-root.img", root_tree, label="realroot", uuid=FS_UUID)


def encrypted_copy(plain: Path, out: Path, **kw: object) -> Path:
    shutil.copyfile(plain, out)
    return luks_encrypt(out, **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def luks2_root(vmdir: Path, plain_root: Path) -> Path:
    return encrypted_copy(plain_root, vmdir / "root-luks2.img", uuid=LUKS_UUID)


def mkinitramfs(out: Path, kver: str, *args: str, cache: Path) -> Path:
    proc = subprocess.run(
        [*CRYPTBOOT, "mkinitramfs", "-o", str(out), "--kver", kver, "--cache-dir", str(cache),
         "--vconsole", "none", "--keyboard", "none",  # not this machine's keymap (args may)
         *args], capture_output=True, check=False,
        env={**os.environ, "SOURCE_DATE_EPOCH": "1700000000"},
    )
    if proc.returncode != 0:
        raise AssertionError(f"mkinitramfs failed: {proc.stderr.decode(errors='replace')}")
    return out


@pytest.fixture(scope="session")
def pyc_cache(vmdir: Path) -> Path:
    return vmdir / "pyc"


@pytest.fixture(scope="session")
def image(vmdir: Path, kver: str, pyc_cache: Path) -> Path:
    """The default image: no crypttab, everything from the kernel command line."""
    return mkinitramfs(vmdir / "cryptboot.img", kver, "--crypttab", "none", cache=pyc_cache)


def luks_args(uuid: str = LUKS_UUID, name: str = "root") -> str:
    return f"rd.luks.uuid={uuid} rd.luks.name={uuid}={name}"


@pytest.fixture
def vm_cleanup() -> Iterator[list[Vm]]:
    """Tests append their VMs here; any still running at the end is killed."""
    vms: list[Vm] = []
    yield vms
    for vm in vms:
        vm.close()


# ---------------------------------------------------------------------------------------------
# More disks and images for scenarios 4-9 (built on first use, shared)

KEYFILE = b"0123456789abcdef-a keyfile for the vm tier-\x00\x01\x02\xff"
PLAIN_KEY = bytes(range(0x20, 0x60))  # 512-bit aes-xts key of the plain dm-crypt volume


@pytest.fixture(scope="session")
def keyed_root(vmdir: Path, plain_root: Path) -> Path:
    """LUKS2 root that opens with the passphrase and with :data:`KEYFILE`."""
    img = encrypted_copy(plain_root, vmdir / "root-keyed.img", uuid=LUKS_UUID)
    keyfile = vmdir / "keyfile"
    keyfile.write_bytes(KEYFILE)
    pw = vmdir / "pw"
    pw.write_text(PASSPHRASE)
    sh(["cryptsetup", "luksAddKey", "-q", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations",
        "1000", "--key-file", str(pw), str(img), str(keyfile)])
    return img


@pytest.fixture(scope="session")
def keys_disk(vmdir: Path) -> Path:
    """A small ext4 disk labelled ``keys`` holding /keyfile."""
    tree = vmdir / "keystree"
    tree.mkdir(exist_ok=True)
    (tree / "keyfile").write_bytes(KEYFILE)
    return make_ext4(vmdir / "keys.img", tree, label="keys", size_mb=8, fs_mb=8)


@pytest.fixture(scope="session")
def second_volume(vmdir: Path) -> Path:
    """Another LUKS2 volume (an empty ext4) with the same passphrase."""
    img = make_ext4(vmdir / "data.img", None, label="data", uuid=FS_UUID2, size_mb=24,
                    fs_mb=8)
    return luks_encrypt(img, uuid=LUKS_UUID2)


def write_crypttab(vmdir: Path, name: str, text: str) -> Path:
    path = vmdir / f"crypttab-{name}"
    path.write_text(text)
    return path


def variant_image(vmdir: Path, kver: str, cache: Path, name: str, *args: str) -> Path:
    """An image with other inputs (gzip: quicker to build; the default image tests zstd)."""
    return mkinitramfs(vmdir / f"cryptboot-{name}.img", kver, "--compress", "gzip", *args,
                       cache=cache)


def plain_encrypt(plain: Path, out: Path, key: bytes, fs_mb: int = 32) -> Path:
    """dm-crypt plain mode done on the host: aes-xts-plain64, 512-byte sectors, IV = sector
    number (64-bit little-endian), no header: what ``cryptsetup open --type plain`` maps."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    data = plain.read_bytes()
    enc = bytearray(data)
    for sector in range((fs_mb << 20) // 512):
        off = sector * 512
        tweak = sector.to_bytes(16, "little")
        c = Cipher(algorithms.AES(key), modes.XTS(tweak)).encryptor()
        enc[off:off + 512] = c.update(data[off:off + 512]) + c.finalize()
    out.write_bytes(bytes(enc))
    return out
