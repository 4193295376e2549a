"""Key sources that must wait race the prompt, on a real pty.

A raw key on a device that is not there yet is waited for up to its keyfile-timeout, then the
prompt shows and the device is still waited for beside it; when the device "appears" its key
opens the volume and the prompt is withdrawn with one line naming what unlocked it. A racing
source that fails says why on the prompt, and the prompt stays.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cryptboot.config.model import DeviceSpec, KeyKind, KeySource, SpecKind, Volume, VolumeOptions
from cryptboot.errors import Cancelled, DeviceTimeout, WrongKey
from cryptboot.keys import Key, KeyEnv, unlock_with_keys
from cryptboot.keys.cache import PassphraseCache

USB = DeviceSpec(SpecKind.LABEL, "usb")
PROMPT = "Please enter passphrase for disk cryptroot (/dev/vdz2): "


class Pty:
    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        self.path = os.ttyname(self.slave)
        self.seen = b""

    def expect(self, text: str, timeout: float = 10.0) -> None:
        end = time.monotonic() + timeout
        want = text.encode()
        while want not in self.seen:
            if time.monotonic() > end:
                raise AssertionError(f"{text!r} not seen on the pty; seen: {self.seen!r}")
            import select

            if select.select([self.master], [], [], 0.1)[0]:
                self.seen += os.read(self.master, 4096)

    def type(self, text: str) -> None:
        os.write(self.master, text.encode())

    def close(self) -> None:
        os.close(self.master)
        os.close(self.slave)


@pytest.fixture
def pty() -> Iterator[Pty]:
    p = Pty()
    yield p
    p.close()


class Plug:
    """A key device that appears when the test says so (a file standing in for it)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.plugged = threading.Event()
        self.waits: list[float | None] = []

    def find(self, spec: DeviceSpec) -> str | None:
        return str(self.path) if self.plugged.is_set() else None

    def wait(self, spec: DeviceSpec, timeout: float | None,
             cancelled: threading.Event | None = None) -> str:
        self.waits.append(timeout)
        end = None if timeout is None else time.monotonic() + timeout
        while not self.plugged.wait(0.05):
            if cancelled is not None and cancelled.is_set():
                raise Cancelled("called off")
            if end is not None and time.monotonic() > end:
                raise DeviceTimeout(f"device {spec} did not appear (waited {timeout} s)")
        return str(self.path)


def run_unlock(volume: Volume, env: KeyEnv, right: bytes
               ) -> tuple[threading.Thread, dict[str, object]]:
    out: dict[str, object] = {"tried": []}

    def opener(key: Key) -> None:
        out["tried"].append((key.kind, key.data))  # type: ignore[attr-defined]
        if key.data != right:
            raise WrongKey("No key available with this passphrase.")

    def target() -> None:
        try:
            out["key"] = unlock_with_keys(volume, "/dev/vdz2", env, opener)
        except Exception as e:  # noqa: BLE001 - the test asserts on it
            out["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t, out


def setup(tmp_path: Path, pty: Pty, raw: bytes) -> tuple[Volume, KeyEnv, Plug]:
    dev = tmp_path / "usb"
    dev.write_bytes(raw)
    plug = Plug(dev)
    env = KeyEnv(cache=PassphraseCache(), consoles=[pty.path], wait_device=plug.wait,
                 find_device=plug.find)
    vol = Volume("cryptroot", DeviceSpec(SpecKind.PATH, "/dev/vdz2"),
                 (KeySource(KeyKind.DEVRAW, device=USB, offset=0, size=6, timeout=0.5),),
                 VolumeOptions(tries=3))
    return vol, env, plug


def test_key_device_plugged_while_the_prompt_is_open_withdraws_it(tmp_path: Path,
                                                                  pty: Pty) -> None:
    vol, env, plug = setup(tmp_path, pty, b"secret")
    t, out = run_unlock(vol, env, right=b"secret")
    pty.expect(PROMPT)            # after keyfile-timeout; the key device is still awaited
    assert t.is_alive()
    plug.plugged.set()
    pty.expect("(cryptroot unlocked with raw key on LABEL=usb)")
    t.join(10)
    assert not t.is_alive()
    key = out.get("key")
    assert isinstance(key, Key), out
    assert key.kind is KeyKind.DEVRAW and key.data == b"secret"
    assert out["tried"] == [(KeyKind.DEVRAW, b"secret")]  # nothing typed, nothing else tried
    assert plug.waits == [0.5, None]  # in order up to keyfile-timeout, then beside the prompt


def test_a_racing_source_that_fails_says_why_and_the_prompt_stays(tmp_path: Path,
                                                                   pty: Pty) -> None:
    vol, env, plug = setup(tmp_path, pty, b"wrong!")
    t, out = run_unlock(vol, env, right=b"typed it")
    pty.expect(PROMPT)
    plug.plugged.set()
    pty.expect("raw key on LABEL=usb does not open cryptroot")
    pty.expect("does not open cryptroot\r\r\n" + PROMPT)  # said, then asked again
    assert t.is_alive()           # still asking
    pty.type("typed it\r")
    t.join(10)
    key = out.get("key")
    assert isinstance(key, Key), out
    assert key.kind is KeyKind.PROMPT
    assert out["tried"] == [(KeyKind.DEVRAW, b"wrong!"), (KeyKind.PROMPT, b"typed it")]
    assert "unlocked with" not in pty.seen.decode()


def test_a_device_already_there_is_tried_in_order_without_racing(tmp_path: Path,
                                                                 pty: Pty) -> None:
    vol, env, plug = setup(tmp_path, pty, b"secret")
    plug.plugged.set()
    t, out = run_unlock(vol, env, right=b"secret")
    t.join(10)
    assert isinstance(out.get("key"), Key), out
    assert PROMPT.encode() not in pty.seen  # never asked


def test_a_key_device_plugged_within_keyfile_timeout_means_no_prompt(tmp_path: Path,
                                                                     pty: Pty) -> None:
    vol, env, plug = setup(tmp_path, pty, b"secret")
    vol = vol._replace(keys=(vol.keys[0]._replace(timeout=10.0),))
    t, out = run_unlock(vol, env, right=b"secret")
    time.sleep(0.3)
    assert t.is_alive()
    plug.plugged.set()
    t.join(10)
    key = out.get("key")
    assert isinstance(key, Key) and key.kind is KeyKind.DEVRAW, out
    assert PROMPT.encode() not in pty.seen


def test_when_the_prompt_ends_without_a_key_the_key_device_wait_ends_too(tmp_path: Path,
                                                                         pty: Pty) -> None:
    vol, env, plug = setup(tmp_path, pty, b"secret")
    vol = vol._replace(options=vol.options._replace(tries=1))
    t, out = run_unlock(vol, env, right=b"secret")
    pty.expect(PROMPT)
    pty.type("\x04")             # Ctrl-D: no passphrase, the only try
    t.join(10)
    assert not t.is_alive()       # not left waiting for the key device
    error = out.get("error")
    assert isinstance(error, WrongKey), out
    assert "devraw key (unavailable)" in error.message and "1 passphrase try" in error.message


def test_headless_with_the_key_device_absent_fails_after_keyfile_timeout(tmp_path: Path,
                                                                          pty: Pty) -> None:
    vol, env, plug = setup(tmp_path, pty, b"secret")
    vol = vol._replace(options=vol.options._replace(headless=True))
    t0 = time.monotonic()
    t, out = run_unlock(vol, env, right=b"secret")
    t.join(10)
    assert 0.5 <= time.monotonic() - t0 < 5
    assert isinstance(out.get("error"), WrongKey), out
    assert PROMPT.encode() not in pty.seen
