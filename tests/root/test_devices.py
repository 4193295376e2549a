"""Device waits on real loop devices, with and without a running systemd-udevd.

Each test starts a waiter process (cryptboot.devices in its own process, as at boot), waits for it
to say it is watching, and only then attaches an ext4 image with ``losetup``: the device appears
after the wait began. Without udevd the waiter runs in the host's namespaces (kernel uevents +
blkid); with udevd it runs beside a private udevd (tests/root/udevns.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.root.conftest import Loops
from tests.root.udevns import wrap

pytestmark = pytest.mark.root

WAITER = r"""
import json, sys
from cryptboot import log
from cryptboot.config.model import DeviceSpec, SpecKind
from cryptboot.devices import DeviceWatcher
from cryptboot.errors import DeviceTimeout
kind, value, timeout = sys.argv[1], sys.argv[2], float(sys.argv[3])
w = DeviceWatcher()
print(json.dumps({"ready": w.mode}), flush=True)
try:
    d = w.wait(DeviceSpec(SpecKind(kind), value), timeout)
    print(json.dumps({"node": d.node, "uuid": d.get("ID_FS_UUID"), "mode": w.mode}), flush=True)
except DeviceTimeout as e:
    print(json.dumps({"timeout": e.message}), flush=True)
"""


def make_image(tmp: Path, label: str, fs_uuid: str) -> Path:
    img = tmp / f"{label}.img"
    with open(img, "wb") as f:
        f.truncate(4 * 1024 * 1024)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", label, "-U", fs_uuid, str(img)], check=True)
    return img


def start_waiter(kind: str, value: str, timeout: float, with_udevd: bool) -> subprocess.Popen[str]:
    argv = [sys.executable, "-c", WAITER, kind, value, str(timeout)]
    if with_udevd:
        argv = wrap(argv)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        raise AssertionError("waiter died: " + (proc.stderr.read() if proc.stderr else ""))
    assert json.loads(line)["ready"] == ("udev" if with_udevd else "kernel")
    return proc


def result(proc: subprocess.Popen[str]) -> tuple[dict[str, str], str]:
    assert proc.stdout is not None and proc.stderr is not None
    out = proc.stdout.read()
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 0, err
    return json.loads(out.strip().splitlines()[-1]), err


MODES = [pytest.param(False, id="kernel-uevents"), pytest.param(True, id="udevd")]


@pytest.mark.parametrize("with_udevd", MODES)
@pytest.mark.parametrize("kind", ["UUID", "LABEL", "BY-UUID-LINK"])
def test_found_after_the_wait_began(tmp_path: Path, loops: Loops, with_udevd: bool,
                                    kind: str) -> None:
    fs_uuid = str(uuid.uuid4())
    label = "cbt" + fs_uuid[:8]
    img = make_image(tmp_path, label, fs_uuid)
    spec_kind, value = {
        "UUID": ("UUID", fs_uuid),
        "LABEL": ("LABEL", label),
        "BY-UUID-LINK": ("PATH", f"/dev/disk/by-uuid/{fs_uuid}"),
    }[kind]
    proc = start_waiter(spec_kind, value, 30, with_udevd)
    node = loops.attach(img)
    res, log_text = result(proc)
    assert res.get("node") == node, res
    assert res["uuid"] == fs_uuid
    assert ("through udev" in log_text) == with_udevd


@pytest.mark.parametrize("with_udevd", MODES)
def test_found_by_device_path(tmp_path: Path, loops: Loops, with_udevd: bool) -> None:
    fs_uuid = str(uuid.uuid4())
    img = make_image(tmp_path, "cbtpath", fs_uuid)
    for _attempt in range(3):  # another user of this machine may take the free loop first
        node = subprocess.run(["losetup", "-f"], check=True, capture_output=True,
                              text=True).stdout.strip()
        proc = start_waiter("PATH", node, 30, with_udevd)
        try:
            loops.attach(img, node)
            break
        except subprocess.CalledProcessError:
            proc.kill()
            proc.wait()
    else:
        pytest.fail("could not attach a loop device at a chosen node three times")
    res, _ = result(proc)
    assert res.get("node") == node and res["uuid"] == fs_uuid, res


@pytest.mark.parametrize("with_udevd", MODES)
def test_timeout_lists_devices_seen(tmp_path: Path, loops: Loops, with_udevd: bool) -> None:
    present_uuid = str(uuid.uuid4())
    label = "cbtseen" + present_uuid[:4]
    node = loops.attach(make_image(tmp_path, label, present_uuid))
    missing = str(uuid.uuid4())
    proc = start_waiter("UUID", missing, 1.5, with_udevd)
    res, _ = result(proc)
    msg = res.get("timeout", "")
    assert f"device UUID={missing} did not appear" in msg, res
    assert "waited 1." in msg
    assert f"{node} (ext4, UUID={present_uuid}, LABEL={label})" in msg


# --- `cryptboot unlock` end to end: CLI -> wait -> prompt -> key on cryptsetup's stdin --------


@pytest.mark.parametrize("with_udevd", MODES)
def test_cryptboot_unlock_waits_prompts_and_opens(tmp_path: Path, loops: Loops,
                                                  with_udevd: bool) -> None:
    import pexpect

    from tests.unit.test_dmcrypt import FakeCryptsetup

    fs_uuid = str(uuid.uuid4())
    img = make_image(tmp_path, "cbtcli", fs_uuid)
    fake = FakeCryptsetup(tmp_path / "bin")  # the real one cannot map on this host (no dm)
    fake.accept(b"pass word")
    (fake.dir / "blkid").unlink()  # the real blkid probes the real device here
    (tmp_path / "cmdline").write_text("quiet rd.retry=30\n")
    (tmp_path / "crypttab").write_text(f"vol UUID={fs_uuid} none luks,tries=2\n")
    argv = [sys.executable, "-m", "cryptboot", "unlock", "--cmdline", str(tmp_path / "cmdline"),
            "--crypttab", str(tmp_path / "crypttab"), "vol"]
    if with_udevd:
        argv = wrap(argv)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]),
               PATH=f"{fake.dir}:{os.environ['PATH']}")
    child = pexpect.spawn(argv[0], argv[1:], env=env, timeout=30)
    try:
        child.expect("waiting for devices through " + ("udev" if with_udevd else "kernel"))
        node = loops.attach(img)
        child.expect(f"Please enter passphrase for disk vol \\({node}\\): ")
        child.send("wrong\r")
        child.expect("wrong passphrase for vol \\(try 1 of 2\\)")
        child.expect("Please enter passphrase for disk vol")
        child.send("pass word\r")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0, child.before
    calls = fake.open_calls()
    assert [bytes.fromhex(str(c["stdin"])) for c in calls] == [b"wrong", b"pass word"]
    for c in calls:
        argv_c = [str(a) for a in c["argv"]]  # type: ignore[attr-defined]
        assert argv_c[-2:] == [node, "vol"]
        assert not any("pass" in a or "wrong" in a for a in argv_c)


# --- `cryptboot boot` as PID 1 for real: wait (udevd), mount, switch_root, real init ---------
#
# PID 1 of a scratch mount+pid namespace (tests/root/nsrun.py) takes a network namespace of its
# own before anything else, so the systemd-udevd that `cryptboot boot` starts never runs in the
# host's namespaces; its /run and /dev are the namespace's private tmpfs. Only block devices are
# triggered (as in a real boot), and no module list is given (--modules /none): the boot loads
# no module into the host's kernel. The root is an ext4 image on a loop device attached after
# the boot began; its /sbin/init (busybox sh) prints its PID and root.

INIT = """#!/bin/busybox sh
src=$(/bin/busybox awk '$5 == "/" {for (i = 7; i < NF; i++) if ($i == "-") print $(i + 2)}' \
      /proc/self/mountinfo)
echo "REAL_INIT_REACHED pid=$$ root=$src"
"""


def scenario_boot(cmdline: str) -> int:
    import ctypes

    from cryptboot import boot

    CLONE_NEWNET = 0x40000000
    if ctypes.CDLL(None, use_errno=True).unshare(CLONE_NEWNET) != 0:
        raise SystemExit(f"unshare(CLONE_NEWNET) failed: errno {ctypes.get_errno()}")

    with open("/cmdline", "w") as f:
        f.write(cmdline + "\n")
    args = boot.parse_boot_args(["--cmdline", "/cmdline", "--crypttab", "/none",
                                 "--defaults", "/none", "--modules", "/none"])
    return boot.run_boot(args, boot.System())  # hands off: returns only on failure


def test_boot_as_pid1_waits_mounts_and_switches(tmp_path: Path, loops: Loops) -> None:
    import threading

    from tests.root import nsrun

    fs_uuid = str(uuid.uuid4())
    tree = tmp_path / "rootfs"
    for d in ("bin", "sbin", "dev", "proc", "sys", "run", "etc"):
        (tree / d).mkdir(parents=True)
    (tree / "bin/busybox").write_bytes(Path("/bin/busybox").read_bytes())
    (tree / "bin/busybox").chmod(0o755)
    (tree / "sbin/init").write_text(INIT)
    (tree / "sbin/init").chmod(0o755)
    img = tmp_path / "root.img"
    subprocess.run(["mkfs.ext4", "-q", "-F", "-U", fs_uuid, "-d", str(tree), str(img), "16M"],
                   check=True)
    node = subprocess.run(["losetup", "-f"], check=True, capture_output=True,
                          text=True).stdout.strip()
    # attach once the boot inside is waiting (its udevd is up after ~1 s; a later attach is
    # found by the event, an earlier one by the block trigger: both paths are the boot's)
    timer = threading.Timer(3.0, lambda: loops.attach(img, node))
    timer.start()
    try:
        res = nsrun.run(f"{__name__}:scenario_boot",
                        {"cmdline": f"root=UUID={fs_uuid} rd.retry=30 rd.shell=0"},
                        devices=[node], timeout=120)
    finally:
        timer.join()
    out = res.stdout + res.stderr
    assert res.returncode == 0, str(res)
    assert "waiting for devices through udev (systemd-udevd is running)" in out, out
    assert f"mounted {node} (ext4, ro) on /sysroot" in out, out
    assert f"REAL_INIT_REACHED pid=1 root={node}" in out, out
    for step in ("read the boot plan", "start udev", "unlock volumes", "mount the root",
                 "stop udev"):
        assert f"{step}: done in" in out, out
