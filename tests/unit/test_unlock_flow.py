"""The unlock step end to end: plan volumes -> device -> prompt on a pty -> cryptsetup.

The device wait is replaced by a fake watcher (real waits are the root tier's job); the prompt is
real, on a pty driven with pexpect; cryptsetup is the fake from test_dmcrypt, which records argv
and stdin and accepts one passphrase.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pexpect
import pexpect.fdpexpect
import pytest

from cryptboot.boot import Unlocker, volumes_to_unlock
from cryptboot.config.model import (
    DeviceSpec,
    KeyKind,
    KeySource,
    Plan,
    Root,
    SpecKind,
    Volume,
    VolumeOptions,
)
from cryptboot.devices import BlockDevice
from cryptboot.errors import CryptbootError, DeviceTimeout
from tests.unit.test_dmcrypt import FakeCryptsetup

REPO = Path(__file__).resolve().parents[2]

CHILD = r"""
import json, sys
from cryptboot.boot import Unlocker, volumes_to_unlock
from cryptboot.config.model import *
from cryptboot.devices import BlockDevice
from cryptboot.errors import CryptbootError

class FakeWatcher:
    def wait(self, spec, timeout, on_device=None):
        return BlockDevice(node="/dev/fake-" + spec.value, name="x", size=1,
                           props={"ID_FS_TYPE": "crypto_LUKS", "ID_FS_UUID": spec.value})
    def close(self):
        pass

vols = tuple(Volume(n, DeviceSpec(SpecKind.UUID, n + "-uuid"),
                    (KeySource(KeyKind.CACHED), KeySource(KeyKind.PROMPT)),
                    VolumeOptions(tries=3)) for n in ("root", "home"))
plan = Plan(volumes=vols, root=Root(DeviceSpec(SpecKind.PATH, "/dev/mapper/root")))
u = Unlocker(plan, consoles=[sys.argv[1]], watcher=FakeWatcher())
try:
    u.unlock_all(volumes_to_unlock(plan))
    print(json.dumps({"opened": u.opened}))
except CryptbootError as e:
    print(json.dumps({"error": e.message}))
"""


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeCryptsetup:
    fc = FakeCryptsetup(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{fc.dir}:{os.environ.get('PATH', '')}")
    return fc


def run_child(fake: FakeCryptsetup) -> tuple[subprocess.Popen[str], pexpect.fdpexpect.fdspawn,
                                             int, int]:
    master, slave = os.openpty()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-c", CHILD, os.ttyname(slave)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    # the slave stays open here too: with no slave open, reading the master gives EOF
    return proc, pexpect.fdpexpect.fdspawn(master, timeout=15), master, slave


def test_wrong_wrong_right_then_second_volume_from_cache(fake: FakeCryptsetup) -> None:
    fake.accept(b"open sesame")
    proc, con, master, slave = run_child(fake)
    try:
        con.expect("Please enter passphrase for disk root \\(/dev/fake-root-uuid\\): ")
        con.send("wrong\r")
        con.expect("wrong passphrase for root \\(try 1 of 3\\)")
        con.send("wronger\r")
        con.expect("wrong passphrase for root \\(try 2 of 3\\)")
        con.send("open sesame\r")
        out, err = proc.communicate(timeout=30)
    finally:
        os.close(master)
        os.close(slave)
    assert json.loads(out) == {"opened": ["root", "home"]}, err
    calls = fake.open_calls()
    stdins = [bytes.fromhex(str(c["stdin"])) for c in calls]
    # three typed for root, then the cached one opens home without a prompt
    assert stdins == [b"wrong", b"wronger", b"open sesame", b"open sesame"]
    assert [list(c["argv"])[-1] for c in calls] == ["root"] * 3 + ["home"]  # type: ignore[call-overload]
    for c in calls:
        assert not any("sesame" in a or "wrong" in a for a in list(c["argv"]))  # type: ignore[call-overload]
    assert "home: unlocked with the passphrase typed earlier" in err
    assert err.count("Please enter passphrase") == 0  # the prompt went to the console only


def test_three_wrong_stops_with_a_clear_message(fake: FakeCryptsetup) -> None:
    fake.accept(b"right")
    proc, con, master, slave = run_child(fake)
    try:
        for n in (1, 2, 3):
            con.expect("Please enter passphrase for disk root")
            con.send(f"bad{n}\r")
        out, err = proc.communicate(timeout=30)
    finally:
        os.close(master)
        os.close(slave)
    assert json.loads(out)["error"] == "could not unlock root: 3 passphrase tries"
    assert "maximum number of tries (3) exceeded" in err
    assert len(fake.open_calls()) == 3  # home was never tried


# --- in-process: selection, nofail, rd.auto, names from devices ------------------------------


class Watcher:
    def __init__(self, devices: dict[str, BlockDevice]) -> None:
        self.devices = devices
        self.waits: list[tuple[str, float | None]] = []

    def wait(self, spec: DeviceSpec, timeout: float | None, *, on_device: object = None
             ) -> BlockDevice:
        self.waits.append((str(spec), timeout))
        if spec.value not in self.devices:
            raise DeviceTimeout(f"device {spec} did not appear (waited {timeout} s)")
        return self.devices[spec.value]

    def close(self) -> None:
        pass


def luks(uuid: str) -> BlockDevice:
    return BlockDevice(node=f"/dev/disk-{uuid}", name=uuid, size=1,
                       props={"ID_FS_TYPE": "crypto_LUKS", "ID_FS_UUID": uuid})


KEYFILE_ONLY = (KeySource(KeyKind.CACHED),)


def test_volumes_to_unlock_skips_noauto_unless_named() -> None:
    a = Volume("a", DeviceSpec(SpecKind.UUID, "a"), ())
    b = Volume("b", DeviceSpec(SpecKind.UUID, "b"), (), VolumeOptions(noauto=True))
    plan = Plan(volumes=(a, b), root=Root(None))
    assert volumes_to_unlock(plan) == (a,)
    assert volumes_to_unlock(plan, ["b"]) == (b,)
    with pytest.raises(CryptbootError, match="no volume named c in the plan \\(volumes: a, b\\)"):
        volumes_to_unlock(plan, ["c"])


def test_device_timeouts_and_nofail(fake: FakeCryptsetup, tmp_path: Path) -> None:
    key = tmp_path / "k"
    key.write_bytes(b"kk")
    fake.accept(b"kk")
    kf = (KeySource(KeyKind.FILE, path=str(key)),)
    present = Volume("present", DeviceSpec(SpecKind.UUID, "p1"), kf,
                     VolumeOptions(device_timeout=7.0))
    missing = Volume("missing", DeviceSpec(SpecKind.UUID, "m1"), kf,
                     VolumeOptions(nofail=True, headless=True))
    plan = Plan(volumes=(missing, present), root=Root(None), device_timeout=42.0)
    w = Watcher({"p1": luks("p1")})
    u = Unlocker(plan, watcher=w)  # type: ignore[arg-type]
    u.unlock_all(plan.volumes)
    assert u.opened == ["present"] and u.failed == ["missing"]
    assert w.waits == [("UUID=m1", 42.0), ("UUID=p1", 7.0)]


def test_missing_device_without_nofail_raises(fake: FakeCryptsetup) -> None:
    v = Volume("root", DeviceSpec(SpecKind.UUID, "r1"), KEYFILE_ONLY)
    u = Unlocker(Plan(volumes=(v,), root=Root(None)), watcher=Watcher({}))  # type: ignore[arg-type]
    with pytest.raises(DeviceTimeout, match="device UUID=r1 did not appear"):
        u.unlock_all((v,))


def test_name_from_device_and_rd_auto(fake: FakeCryptsetup, tmp_path: Path) -> None:
    key = tmp_path / "k"
    key.write_bytes(b"kk")
    fake.accept(b"kk")
    v = Volume("luks-1234", DeviceSpec(SpecKind.UUID, "1234", prefix=True),
               (KeySource(KeyKind.FILE, path=str(key)),), name_from_device=True)
    full = "12345678-aaaa-bbbb-cccc-1234567890ab"
    w = Watcher({"1234": luks(full)})
    u = Unlocker(Plan(volumes=(v,), root=Root(None)), watcher=w)  # type: ignore[arg-type]
    u.unlock_all((v,))
    assert u.opened == [f"luks-{full}"]
    assert list(fake.open_calls()[-1]["argv"])[-1] == f"luks-{full}"  # type: ignore[call-overload]
    # rd.auto: a LUKS device seen while waiting for the root is opened with the cached key
    u.env.cache.add(b"kk")
    other = "99999999-aaaa-bbbb-cccc-1234567890ab"
    w.devices[other] = luks(other)
    u.auto_unlock(luks(other))
    u.auto_unlock(BlockDevice(node="/dev/plain", name="plain", size=1,
                              props={"ID_FS_TYPE": "ext4", "ID_FS_UUID": "e"}))
    assert u.opened[-1] == f"luks-{other}"
    assert len(fake.open_calls()) == 2


# --- matching a device spec, and the wait's clock --------------------------------------------


def bdev(**props: str) -> BlockDevice:
    return BlockDevice(node="/dev/vdz1", name="vdz1", devnum=(254, 1), size=2048, props=props,
                       links=tuple(props.pop("LINKS", "").split()))


@pytest.mark.parametrize(("spec", "dev", "want"), [
    (DeviceSpec(SpecKind.UUID, "0a0b0c0d-0000-1111-2222-333344445555"),
     bdev(ID_FS_UUID="0A0B0C0D-0000-1111-2222-333344445555"), True),
    (DeviceSpec(SpecKind.UUID, "0a0b0c0d00001111"),  # dashes are not significant
     bdev(ID_FS_UUID="0a0b0c0d-0000-1111"), True),
    (DeviceSpec(SpecKind.UUID, "0a0b", prefix=True),  # rd.luks.uuid prefix: LUKS only
     bdev(ID_FS_UUID="0a0b0c0d-0000", ID_FS_TYPE="crypto_LUKS"), True),
    (DeviceSpec(SpecKind.UUID, "0a0b", prefix=True),
     bdev(ID_FS_UUID="0a0b0c0d-0000", ID_FS_TYPE="ext4"), False),
    (DeviceSpec(SpecKind.UUID, "0a0b"), bdev(ID_FS_UUID="0a0b0c0d-0000"), False),
    (DeviceSpec(SpecKind.LABEL, "my root"),
     bdev(ID_FS_LABEL="my_root", ID_FS_LABEL_ENC="my\\x20root"), True),
    (DeviceSpec(SpecKind.LABEL, "my_root"),
     bdev(ID_FS_LABEL="my_root", ID_FS_LABEL_ENC="my\\x20root"), True),
    (DeviceSpec(SpecKind.LABEL, "other"), bdev(ID_FS_LABEL="my_root"), False),
    (DeviceSpec(SpecKind.PARTUUID, "abcd-01"), bdev(ID_PART_ENTRY_UUID="ABCD-01"), True),
    (DeviceSpec(SpecKind.PARTLABEL, "EFI system"),
     bdev(ID_PART_ENTRY_NAME="EFI\\x20system"), True),
    (DeviceSpec(SpecKind.ID, "virtio-serial1"),
     bdev(LINKS="/dev/disk/by-id/virtio-serial1 /dev/disk/by-path/x"), True),
    (DeviceSpec(SpecKind.PATH, "/dev/vdz1"), bdev(), True),
    (DeviceSpec(SpecKind.PATH, "/dev/disk/by-path/x"), bdev(LINKS="/dev/disk/by-path/x"), True),
    # by-* paths work without udev's links: they become UUID=/LABEL= matches
    (DeviceSpec(SpecKind.PATH, "/dev/disk/by-uuid/0A0B0C0D-0000"),
     bdev(ID_FS_UUID="0a0b0c0d-0000"), True),
    (DeviceSpec(SpecKind.PATH, "/dev/disk/by-label/my\\x20root"),
     bdev(ID_FS_LABEL_ENC="my\\x20root"), True),
    (DeviceSpec(SpecKind.PATH, "/dev/mapper/cryptroot"), bdev(DM_NAME="cryptroot"), True),
    (DeviceSpec(SpecKind.PATH, "/dev/mapper/cryptroot"), bdev(DM_NAME="other"), False),
])
def test_matches(spec: DeviceSpec, dev: BlockDevice, want: bool) -> None:
    from cryptboot.devices import canonical, matches

    assert matches(canonical(spec), dev) is want


def test_a_device_without_medium_never_matches() -> None:
    from cryptboot.devices import matches

    empty = BlockDevice(node="/dev/loop3", name="loop3", size=0, props={})
    assert not matches(DeviceSpec(SpecKind.PATH, "/dev/loop3"), empty)


def test_timeout_message_lists_what_was_seen() -> None:
    from cryptboot.devices import describe_seen

    seen = [bdev(ID_FS_TYPE="ext4", ID_FS_UUID="u1", ID_FS_LABEL="boot"),
            BlockDevice(node="/dev/loop7", name="loop7", size=0)]
    text = describe_seen(seen)
    assert "/dev/vdz1 (ext4, UUID=u1, LABEL=boot)" in text
    assert "empty (no medium): loop7" in text


def test_deadline_does_not_run_while_a_prompt_is_open() -> None:
    import threading
    import time

    from cryptboot.clock import Deadline, prompt_open

    deadline = Deadline(0.3)
    released = threading.Event()

    def prompt() -> None:
        with prompt_open():
            released.wait(5)

    t = threading.Thread(target=prompt)
    t.start()
    time.sleep(0.6)  # twice the timeout, all of it with a prompt open
    assert not deadline.expired()
    assert deadline.waited() < 0.3
    released.set()
    t.join()
    time.sleep(0.4)
    assert deadline.expired()
    assert Deadline(0).remaining() is None and Deadline(None).remaining() is None


def test_detached_headers(fake: FakeCryptsetup, tmp_path: Path,
                          monkeypatch: pytest.MonkeyPatch) -> None:
    """header=PATH:DEVICE is read from that device mounted read-only (and unmounted after);
    header=/dev/... is a device to wait for; a path alone is inside the image."""
    from cryptboot import syscalls

    mounts: list[str] = []  # mount(2) and umount2(2), recorded (the real ones need root)
    monkeypatch.setattr(syscalls, "mount", lambda src, target, fstype, flags=0, data=None:
                        mounts.append(f"mount {src} {target} {fstype} {flags:#x}"))
    monkeypatch.setattr(syscalls, "umount2", lambda target, flags=0:
                        mounts.append(f"umount {target}"))
    monkeypatch.setattr("cryptboot.unlock.header.HEADER_MOUNT", str(tmp_path / "hdr-{name}"))
    key = tmp_path / "k"
    key.write_bytes(b"kk")
    kf = (KeySource(KeyKind.FILE, path=str(key)),)
    vols = (
        Volume("a", DeviceSpec(SpecKind.UUID, "a1"), kf,
               VolumeOptions(header="/luks/hdr.img",
                             header_device=DeviceSpec(SpecKind.LABEL, "HDRS"))),
        Volume("b", DeviceSpec(SpecKind.UUID, "b1"), kf,
               VolumeOptions(header="/dev/disk/by-partlabel/hdr")),
        Volume("c", DeviceSpec(SpecKind.UUID, "c1"), kf, VolumeOptions(header="/etc/hdr3.img")),
    )
    devices = {v: luks(v) for v in ("a1", "b1", "c1")}
    devices["HDRS"] = BlockDevice(node="/dev/vdh", name="vdh", size=1)
    monkeypatch.setattr("cryptboot.blkid.probe", lambda node: {"ID_FS_TYPE": "ext4"})
    devices["/dev/disk/by-partlabel/hdr"] = BlockDevice(node="/dev/vdh2", name="vdh2", size=1)
    w = Watcher(devices)
    u = Unlocker(Plan(volumes=vols, root=Root(None)), watcher=w)  # type: ignore[arg-type]
    u.unlock_all(vols)
    headers = []
    for c in fake.open_calls():
        argv = [str(a) for a in c["argv"]]  # type: ignore[attr-defined]
        headers.append(argv[argv.index("--header") + 1])
    mp = str(tmp_path / "hdr-a")
    assert headers == [f"{mp}/luks/hdr.img", "/dev/vdh2", "/etc/hdr3.img"]
    ro = syscalls.MS_RDONLY | syscalls.MS_NOSUID | syscalls.MS_NODEV | syscalls.MS_NOEXEC
    assert mounts == [f"mount /dev/vdh {mp} ext4 {ro:#x}", f"umount {mp}"]
