"""cryptsetup open: argv, key on stdin, error mapping — with a fake ``cryptsetup`` on PATH.

The fake records every call's argv and the exact bytes on its stdin, accepts only the key
written in its ``accept`` file (exit 2 with cryptsetup's message otherwise) or exits as told by
its ``rc``/``stderr`` files. The real cryptsetup opening a real volume is proven in the VM tier;
the Argon2 memory check reads a real LUKS2 header made here by the real cryptsetup.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cryptboot.config.model import CryptType, VolumeOptions
from cryptboot.errors import CommandError, CryptbootError, WrongKey
from cryptboot.unlock import dmcrypt

FAKE = r"""#!{python}
import json, os, sys
here = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(here, "started"), "a") as f:  # before reading the key
    f.write(str(os.getpid()) + "\n")
data = sys.stdin.buffer.read() if "--key-file=-" in sys.argv else b""
calls = os.path.join(here, "calls.jsonl")
with open(calls, "a") as f:
    f.write(json.dumps({{"argv": sys.argv[1:], "stdin": data.hex(),
                        "env": sorted(os.environ)}}) + "\n")
def read(name):
    try:
        with open(os.path.join(here, name), "rb") as f:
            return f.read()
    except OSError:
        return None
if sys.argv[1:2] == ["close"]:
    sys.exit(0)
rc, err = read("rc"), read("stderr")
if rc is not None:
    if err:
        sys.stderr.buffer.write(err)
    if rc.strip() == b"kill":
        os.kill(os.getpid(), 9)
    sys.exit(int(rc))
accept = read("accept")
if accept is not None and data != accept:
    sys.stderr.write("No key available with this passphrase.\n")
    sys.exit(2)
sys.exit(0)
"""


class FakeCryptsetup:
    """A fake cryptsetup in its own directory, put first on PATH."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        directory.mkdir(parents=True, exist_ok=True)
        script = directory / "cryptsetup"
        script.write_text(FAKE.format(python=sys.executable))
        script.chmod(0o755)
        # blkid is used to check plain volumes; make it "find" nothing or ext4 as told
        blkid = directory / "blkid"
        blkid.write_text("#!/bin/sh\ncat \"$(dirname \"$0\")/blkid.out\" 2>/dev/null\n")
        blkid.chmod(0o755)

    def accept(self, key: bytes) -> None:
        (self.dir / "accept").write_bytes(key)

    def fail(self, rc: int | str, stderr: str = "") -> None:
        (self.dir / "rc").write_text(str(rc))
        (self.dir / "stderr").write_text(stderr)

    def calls(self) -> list[dict[str, object]]:
        path = self.dir / "calls.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines()]

    def open_calls(self) -> list[dict[str, object]]:
        return [c for c in self.calls() if "open" in list(c["argv"])]  # type: ignore[call-overload]


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeCryptsetup]:
    fc = FakeCryptsetup(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{fc.dir}:{os.environ.get('PATH', '')}")
    monkeypatch.setattr(dmcrypt, "active_name", lambda name: False)
    yield fc


def argv_of(call: dict[str, object]) -> list[str]:
    argv = call["argv"]
    assert isinstance(argv, list)
    return [str(a) for a in argv]


KEY = b"correct horse\nbattery staple "  # a newline and a trailing space: every byte counts


def test_luks_key_goes_to_stdin_exactly_never_argv(fake: FakeCryptsetup) -> None:
    fake.accept(KEY)
    assert dmcrypt.open_volume("cryptroot", "/dev/vdz2", KEY, VolumeOptions()) is True
    (call,) = fake.open_calls()
    argv = argv_of(call)
    assert bytes.fromhex(str(call["stdin"])) == KEY
    assert "--key-file=-" in argv
    assert argv[-2:] == ["/dev/vdz2", "cryptroot"]
    assert argv[argv.index("--type") + 1] == "luks"
    for arg in argv:
        assert b"horse" not in arg.encode() and b"battery" not in arg.encode()
    assert call["env"] == ["LC_ALL", "PATH"]  # nothing (no key) in the environment


def test_luks_options(fake: FakeCryptsetup) -> None:
    opts = VolumeOptions(header="/run/hdr.img", key_slot=3, discard=True, readonly=True)
    dmcrypt.open_volume("data", "/dev/vdz3", b"k", opts)
    argv = argv_of(fake.open_calls()[0])
    assert argv[argv.index("--header") + 1] == "/run/hdr.img"
    assert argv[argv.index("--key-slot") + 1] == "3"
    assert "--allow-discards" in argv and "--readonly" in argv


def test_plain_options_and_passphrase_hash(fake: FakeCryptsetup) -> None:
    (fake.dir / "blkid.out").write_text("ID_FS_TYPE=ext4\n")
    opts = VolumeOptions(type=CryptType.PLAIN, cipher="aes-xts-plain64", key_size=512,
                         hash="sha512", offset=2048, skip=16, sector_size=4096)
    dmcrypt.open_volume("swapish", "/dev/vdz4", b"typed", opts)
    argv = argv_of(fake.open_calls()[0])
    pairs = {argv[i]: argv[i + 1] for i in range(len(argv) - 1)}
    assert pairs["--type"] == "plain" and pairs["--cipher"] == "aes-xts-plain64"
    assert pairs["--key-size"] == "512" and pairs["--hash"] == "sha512"
    assert pairs["--offset"] == "2048" and pairs["--skip"] == "16"
    assert pairs["--sector-size"] == "4096"


def test_plain_keyfile_is_a_raw_key(fake: FakeCryptsetup) -> None:
    opts = VolumeOptions(type=CryptType.PLAIN, key_size=256, hash="sha256")
    key = bytes(range(32))
    dmcrypt.open_volume("p", "/dev/vdz4", key, opts, binary=True)
    call = fake.open_calls()[0]
    argv = argv_of(call)
    assert argv[argv.index("--hash") + 1] == "plain"
    assert bytes.fromhex(str(call["stdin"])) == key


def test_plain_keyfile_shorter_than_the_key_is_refused(fake: FakeCryptsetup) -> None:
    opts = VolumeOptions(type=CryptType.PLAIN, key_size=512)
    with pytest.raises(CryptbootError, match="has 10 bytes; plain mode with a 512-bit key"):
        dmcrypt.open_volume("p", "/dev/vdz4", b"0123456789", opts, binary=True)
    assert fake.open_calls() == []


def test_exit_2_is_wrong_key(fake: FakeCryptsetup) -> None:
    fake.accept(b"right")
    with pytest.raises(WrongKey, match="wrong key for cryptroot: No key available"):
        dmcrypt.open_volume("cryptroot", "/dev/vdz2", b"wrong", VolumeOptions())


def test_other_failures_show_cryptsetups_message(fake: FakeCryptsetup) -> None:
    fake.fail(4, "Device /dev/vdz2 does not exist or access denied.\n")
    with pytest.raises(CommandError) as exc:
        dmcrypt.open_volume("cryptroot", "/dev/vdz2", b"k", VolumeOptions())
    assert not isinstance(exc.value, WrongKey)
    assert "cannot unlock cryptroot (/dev/vdz2)" in exc.value.message
    assert "Device /dev/vdz2 does not exist or access denied." in exc.value.message
    assert exc.value.returncode == 4


def test_killed_cryptsetup_gets_a_memory_hint(fake: FakeCryptsetup) -> None:
    fake.fail("kill")
    with pytest.raises(CommandError) as exc:
        dmcrypt.open_volume("cryptroot", "/dev/vdz2", b"k", VolumeOptions())
    assert "killed by SIGKILL" in exc.value.message
    assert exc.value.hint and "memory" in exc.value.hint


def test_exit_5_when_not_active_is_an_error(fake: FakeCryptsetup) -> None:
    fake.fail(5, "Device cryptroot already exists.\n")
    with pytest.raises(CommandError, match="already exists"):
        dmcrypt.open_volume("cryptroot", "/dev/vdz2", b"k", VolumeOptions())


def test_active_mapping_is_left_alone(fake: FakeCryptsetup,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dmcrypt, "active_name", lambda name: name == "cryptroot")
    assert dmcrypt.open_volume("cryptroot", "/dev/vdz2", b"k", VolumeOptions()) is False
    assert fake.open_calls() == []


def test_plain_without_filesystem_counts_as_wrong_key(fake: FakeCryptsetup,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os.path, "exists",
                        lambda p: p == "/dev/mapper/p" or os.access(p, os.F_OK))
    opts = VolumeOptions(type=CryptType.PLAIN)
    with pytest.raises(WrongKey, match="no filesystem found"):
        dmcrypt.open_volume("p", "/dev/vdz4", b"typed", opts)
    assert ["close", "p"] in [argv_of(c) for c in fake.calls()]


# --- Argon2 memory check on a real LUKS2 header ---------------------------------------------


@pytest.fixture(scope="module")
def argon_header(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("cryptsetup") is None:
        pytest.skip("needs cryptsetup (apt-get install cryptsetup-bin)")
    img = tmp_path_factory.mktemp("luks") / "hdr.img"
    with open(img, "wb") as f:
        f.truncate(20 * 1024 * 1024)
    subprocess.run(["cryptsetup", "luksFormat", "--batch-mode", "--type", "luks2",
                    "--pbkdf", "argon2id", "--pbkdf-memory", "65536",
                    "--pbkdf-force-iterations", "4", "--pbkdf-parallel", "1",
                    "--key-file=-", str(img)], input=b"pw", check=True)
    return img


def meminfo(tmp_path: Path, kib: int) -> str:
    path = tmp_path / "meminfo"
    path.write_text(f"MemTotal: {kib * 2} kB\nMemFree: {kib} kB\nMemAvailable: {kib} kB\n")
    return str(path)


def test_argon2_keyslot_bigger_than_memory_is_refused(
        fake: FakeCryptsetup, argon_header: Path, tmp_path: Path) -> None:
    assert dmcrypt.luks2_argon2_slots(dmcrypt.luks2_metadata(str(argon_header)) or {}) == \
        {0: 65536}
    with pytest.raises(CryptbootError) as exc:
        dmcrypt.open_volume("big", str(argon_header), b"pw", VolumeOptions(),
                            meminfo=meminfo(tmp_path, 40 * 1024))
    assert "needs 64 MiB of memory for Argon2 but only 40 MiB are available" in exc.value.message
    assert exc.value.hint and "luksAddKey" in exc.value.hint
    assert fake.open_calls() == []


def test_argon2_keyslot_that_fits_is_opened(
        fake: FakeCryptsetup, argon_header: Path, tmp_path: Path) -> None:
    dmcrypt.open_volume("big", str(argon_header), b"pw", VolumeOptions(),
                        meminfo=meminfo(tmp_path, 1024 * 1024))
    assert len(fake.open_calls()) == 1


def test_detached_header_is_the_one_checked(
        fake: FakeCryptsetup, argon_header: Path, tmp_path: Path) -> None:
    data = tmp_path / "data.img"
    data.write_bytes(b"\0" * 8192)
    opts = VolumeOptions()._replace(header=str(argon_header))
    with pytest.raises(CryptbootError, match="needs 64 MiB"):
        dmcrypt.open_volume("big", str(data), b"pw", opts, meminfo=meminfo(tmp_path, 1024))


# -- cryptsetup started ahead of its key (while the prompt waits) -------------------------------


def _wait_started(fake: FakeCryptsetup, n: int = 1) -> list[int]:
    import time

    for _ in range(500):
        path = fake.dir / "started"
        if path.exists() and len(path.read_text().split()) >= n:
            return [int(p) for p in path.read_text().split()]
        time.sleep(0.01)
    raise AssertionError("the prepared cryptsetup never started")


def test_prepared_cryptsetup_waits_then_gets_the_key(fake: FakeCryptsetup) -> None:
    prepared = dmcrypt.Prepared()
    fake.accept(KEY)
    try:
        assert prepared.start("root", "/dev/vdz2", VolumeOptions()) is True
        (pid,) = _wait_started(fake)
        assert fake.open_calls() == []  # running, and waiting for its key on stdin
        os.kill(pid, 0)
        assert dmcrypt.open_volume("root", "/dev/vdz2", KEY, VolumeOptions(),
                                   prepared=prepared) is True
        (call,) = fake.open_calls()  # that process, not a second one
        assert bytes.fromhex(str(call["stdin"])) == KEY
        assert argv_of(call) == dmcrypt.open_argv("root", "/dev/vdz2", VolumeOptions(),
                                                  binary=False)[1:]
        assert len((fake.dir / "started").read_text().split()) == 1
    finally:
        prepared.cancel()


def test_prepared_cryptsetup_wrong_key_then_a_fresh_one(fake: FakeCryptsetup) -> None:
    prepared = dmcrypt.Prepared()
    fake.accept(KEY)
    try:
        prepared.start("root", "/dev/vdz2", VolumeOptions())
        with pytest.raises(WrongKey):
            dmcrypt.open_volume("root", "/dev/vdz2", b"wrong", VolumeOptions(),
                                prepared=prepared)
        assert dmcrypt.open_volume("root", "/dev/vdz2", KEY, VolumeOptions(),
                                   prepared=prepared) is True
        assert [bytes.fromhex(str(c["stdin"])) for c in fake.open_calls()] == [b"wrong", KEY]
    finally:
        prepared.cancel()


def test_prepared_for_other_options_is_stopped_and_unused(fake: FakeCryptsetup) -> None:
    prepared = dmcrypt.Prepared()
    prepared.start("root", "/dev/vdz2", VolumeOptions())
    (pid,) = _wait_started(fake)
    dmcrypt.open_volume("root", "/dev/vdz2", b"k", VolumeOptions(readonly=True),
                        prepared=prepared)
    (call,) = fake.open_calls()  # the killed one never recorded a call
    assert "--readonly" in argv_of(call)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_unused_prepared_cryptsetup_is_cancelled(fake: FakeCryptsetup) -> None:
    prepared = dmcrypt.Prepared()
    assert prepared.start("root", "/dev/vdz2", VolumeOptions()) is True
    assert prepared.start("root", "/dev/vdz2", VolumeOptions()) is False  # one is enough
    (pid,) = _wait_started(fake)
    prepared.cancel()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # killed and reaped
    assert fake.open_calls() == []


@pytest.mark.parametrize("opts", [
    VolumeOptions(type=CryptType.PLAIN),
    VolumeOptions(header="/run/hdr.img"),
])
def test_only_luks_with_its_header_on_the_device_is_prepared(fake: FakeCryptsetup,
                                                              opts: VolumeOptions) -> None:
    prepared = dmcrypt.Prepared()
    assert prepared.start("root", "/dev/vdz2", opts) is False
    assert not (fake.dir / "started").exists()
