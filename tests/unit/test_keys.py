"""Key sources: order, tries, the passphrase cache, keyfile offset/size, keyfiles on devices."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import pytest

from cryptboot.config.model import (
    DeviceSpec,
    KeyKind,
    KeySource,
    SpecKind,
    Volume,
    VolumeOptions,
)
from cryptboot.errors import DeviceTimeout, WrongKey
from cryptboot.keys import Key, KeyEnv, sources, unlock_with_keys
from cryptboot.keys.cache import PassphraseCache
from cryptboot.keys.keydev import read_from_device
from cryptboot.keys.keyfile import KeyUnavailable, read_keyfile, read_raw
from cryptboot.keys.prompt import Answer

DEV = DeviceSpec(SpecKind.PATH, "/dev/vdz2")


class Script:
    """Scripted prompt answers and a lock that opens with one key; records everything."""

    def __init__(self, answers: Sequence[bytes | None], right: bytes) -> None:
        self.answers = list(answers)
        self.right = right
        self.prompts: list[str] = []
        self.tried: list[tuple[str, bytes]] = []

    def ask(self, text: str, consoles: Sequence[str], timeout: float | None) -> Answer:
        self.prompts.append(text)
        value = self.answers.pop(0)
        return Answer(value, consoles[0], "ok" if value is not None else "eof")

    def opener(self, key: Key) -> None:
        self.tried.append((key.kind.value, key.data))
        if key.data != self.right:
            raise WrongKey("No key available with this passphrase.")


def env_for(script: Script, cache: PassphraseCache | None = None) -> KeyEnv:
    return KeyEnv(cache=cache or PassphraseCache(), consoles=["/dev/null"], ask=script.ask)


def vol(name: str = "cryptroot", keys: tuple[KeySource, ...] = (), **opts: object) -> Volume:
    return Volume(name, DEV, keys, VolumeOptions(**opts))  # type: ignore[arg-type]


def test_sources_append_cache_and_prompt_once() -> None:
    f = KeySource(KeyKind.FILE, path="/k")
    assert [s.kind for s in sources(vol(keys=(f,)))] == [KeyKind.FILE, KeyKind.CACHED,
                                                          KeyKind.PROMPT]
    planned = (f, KeySource(KeyKind.CACHED), KeySource(KeyKind.PROMPT))
    assert sources(vol(keys=planned)) == planned
    assert [s.kind for s in sources(vol(keys=(f,), headless=True))] == [KeyKind.FILE,
                                                                         KeyKind.CACHED]


def test_order_keyfile_then_device_then_cache_then_prompt(tmp_path: Path) -> None:
    wrong_file = tmp_path / "wrong.key"
    wrong_file.write_bytes(b"not it")
    raw_dev = tmp_path / "rawdev"
    raw_dev.write_bytes(b"....RAWKEY....")
    script = Script([b"typed"], right=b"typed")
    cache = PassphraseCache()
    cache.add(b"from an earlier volume")
    env = env_for(script, cache)
    env.wait_device = lambda spec, timeout: str(raw_dev)
    keys = (KeySource(KeyKind.FILE, path=str(wrong_file)),
            KeySource(KeyKind.DEVRAW, device=DeviceSpec(SpecKind.LABEL, "usb"), offset=4,
                      size=6))
    key = unlock_with_keys(vol(keys=keys), "/dev/vdz2", env, script.opener)
    assert script.tried == [("file", b"not it"), ("devraw", b"RAWKEY"),
                            ("cached", b"from an earlier volume"), ("prompt", b"typed")]
    assert key.kind is KeyKind.PROMPT
    assert cache.candidates()[0] == b"typed"


def test_keyfile_that_opens_means_no_prompt(tmp_path: Path) -> None:
    kf = tmp_path / "root.key"
    kf.write_bytes(b"HEADERkey\nbytesTRAILER")
    script = Script([], right=b"key\nbytes")
    keys = (KeySource(KeyKind.FILE, path=str(kf), offset=6, size=9),)
    key = unlock_with_keys(vol(keys=keys), "/dev/vdz2", env_for(script), script.opener)
    assert key.binary and key.data == b"key\nbytes"
    assert script.prompts == []


def test_cached_passphrase_that_fails_does_not_eat_a_try() -> None:
    cache = PassphraseCache()
    cache.add(b"stale")
    script = Script([b"w1", b"w2", b"right"], right=b"right")
    unlock_with_keys(vol(tries=3), "/dev/vdz2", env_for(script, cache), script.opener)
    assert [k for k, _ in script.tried] == ["cached", "prompt", "prompt", "prompt"]
    assert len(script.prompts) == 3
    assert "wrong passphrase for cryptroot (try 2 of 3)" in script.prompts[2]


@pytest.fixture
def logs(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    """What cryptboot.log writes (its stream is bound at import, so capsys cannot see it)."""
    from cryptboot import log

    buf = io.StringIO()
    monkeypatch.setattr(log._state, "stream", buf)
    return buf


def test_tries_exhausted(logs: io.StringIO) -> None:
    script = Script([b"a", None, b"c", b"never asked"], right=b"right")
    with pytest.raises(WrongKey, match="could not unlock cryptroot: 3 passphrase tries"):
        unlock_with_keys(vol(tries=3), "/dev/vdz2", env_for(script), script.opener)
    assert len(script.prompts) == 3
    err = logs.getvalue()
    assert "wrong passphrase for cryptroot (try 1 of 3)" in err
    assert "no passphrase given (end of input) for cryptroot (try 2 of 3)" in err
    assert "maximum number of tries (3) exceeded" in err


def test_tries_zero_means_forever() -> None:
    script = Script([b"x"] * 7 + [b"right"], right=b"right")
    unlock_with_keys(vol(tries=0), "/dev/vdz2", env_for(script), script.opener)
    assert len(script.prompts) == 8
    assert "(try 7)" in script.prompts[7]


def test_second_volume_uses_the_cached_passphrase_without_asking() -> None:
    script = Script([b"shared"], right=b"shared")
    env = env_for(script)
    unlock_with_keys(vol("root"), "/dev/vdz2", env, script.opener)
    unlock_with_keys(vol("home"), "/dev/vdz3", env, script.opener)
    assert len(script.prompts) == 1
    assert script.tried[-1] == ("cached", b"shared")


def test_headless_never_prompts() -> None:
    script = Script([b"would be right"], right=b"would be right")
    with pytest.raises(WrongKey, match="headless"):
        unlock_with_keys(vol(headless=True), "/dev/vdz2", env_for(script), script.opener)
    assert script.prompts == []


def test_key_device_missing_falls_back_to_the_prompt(logs: io.StringIO) -> None:
    script = Script([b"typed"], right=b"typed")
    env = env_for(script)
    waited: list[float | None] = []

    def never(spec: DeviceSpec, timeout: float | None) -> str:
        waited.append(timeout)
        raise DeviceTimeout(f"device {spec} did not appear (waited {timeout} s)")

    env.wait_device = never
    keys = (KeySource(KeyKind.DEVFILE, path="/k", device=DeviceSpec(SpecKind.LABEL, "usbkey"),
                      timeout=2.5),)
    unlock_with_keys(vol(keys=keys), "/dev/vdz2", env, script.opener)
    assert waited == [2.5]  # keyfile-timeout, not the device timeout
    assert script.tried == [("prompt", b"typed")]
    assert ("cryptroot: key device LABEL=usbkey did not appear within 2.5 s; trying the next "
            "key source") in logs.getvalue()


def test_other_errors_are_not_retried() -> None:
    from cryptboot.errors import CommandError

    def broken(key: Key) -> None:
        raise CommandError("cannot unlock cryptroot: Device does not exist", argv0="cryptsetup")

    script = Script([b"x", b"y"], right=b"z")
    with pytest.raises(CommandError):
        unlock_with_keys(vol(), "/dev/vdz2", env_for(script), broken)
    assert len(script.prompts) == 1


# --- keyfiles ---------------------------------------------------------------------------------


def test_read_keyfile_offset_size(tmp_path: Path) -> None:
    kf = tmp_path / "k"
    kf.write_bytes(bytes(range(100)))
    assert read_keyfile(str(kf)) == bytes(range(100))
    assert read_keyfile(str(kf), 10, 5) == bytes(range(10, 15))
    with pytest.raises(KeyUnavailable, match="only 10 bytes after offset 90, keyfile-size=20"):
        read_keyfile(str(kf), 90, 20)
    with pytest.raises(KeyUnavailable, match="No such file"):
        read_keyfile(str(tmp_path / "missing"))
    with pytest.raises(KeyUnavailable, match="empty after offset 100"):
        read_keyfile(str(kf), 100)


def test_read_raw_needs_a_size(tmp_path: Path) -> None:
    dev = tmp_path / "dev"
    dev.write_bytes(b"x" * 600)
    assert read_raw(str(dev), 512, 16) == b"x" * 16
    with pytest.raises(KeyUnavailable, match="size is needed"):
        read_raw(str(dev), 0, None)


def test_keyfile_on_a_device_is_mounted_read_only_and_unmounted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """mount(2) read-only, read, umount2(2) (the real thing on a loop device: tests/root)."""
    from cryptboot import syscalls

    calls: list[tuple[object, ...]] = []

    def mount(source: str, target: str, fstype: str, flags: int = 0,
              data: str | None = None) -> None:  # "mounts" by putting the key file there
        calls.append(("mount", source, target, fstype, flags))
        os.makedirs(f"{target}/keys")
        Path(f"{target}/keys/root.key").write_bytes(b"XXsecretYY")

    def umount2(target: str, flags: int = 0) -> None:
        calls.append(("umount", target))
        os.unlink(f"{target}/keys/root.key")
        os.rmdir(f"{target}/keys")

    monkeypatch.setattr(syscalls, "mount", mount)
    monkeypatch.setattr(syscalls, "umount2", umount2)
    mp = tmp_path / "mnt"
    key = read_from_device("/dev/sdz1", "/keys/root.key", "vfat", 2, 6, mountpoint=str(mp))
    assert key == b"secret"
    ro = syscalls.MS_RDONLY | syscalls.MS_NOSUID | syscalls.MS_NODEV | syscalls.MS_NOEXEC
    assert calls == [("mount", "/dev/sdz1", str(mp), "vfat", ro), ("umount", str(mp))]
    assert not (mp / "keys").exists()


def test_cache_wipe() -> None:
    cache = PassphraseCache()
    cache.add(b"a")
    cache.add(b"b")
    cache.add(b"a")
    assert cache.candidates() == [b"a", b"b"]
    cache.wipe()
    assert cache.candidates() == [] and len(cache) == 0
