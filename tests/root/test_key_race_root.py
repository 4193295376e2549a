"""Real devices for the structure's shared parts: a key device plugged in while the prompt is
open (real udevd, loop devices, mount(2) read-only), and non-ASCII filesystem labels found by
``LABEL=`` and by their udev-escaped by-label path (one decoder for the plan and the devices).
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
from tests.root.test_devices import make_image, result
from tests.root.udevns import wrap

pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parents[2]


def key_image(tmp: Path, label: str, key: bytes) -> Path:
    tree = tmp / "keytree"
    tree.mkdir()
    (tree / "keys").mkdir()
    (tree / "keys" / "root.key").write_bytes(key)
    (tree / "keys" / "root.key").chmod(0o600)
    img = tmp / "key.img"
    with open(img, "wb") as f:
        f.truncate(4 * 1024 * 1024)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", label, "-d", str(tree), str(img)],
                   check=True)
    return img


def test_key_device_plugged_in_while_the_prompt_is_open(tmp_path: Path, loops: Loops) -> None:
    import pexpect

    from tests.unit.test_dmcrypt import FakeCryptsetup

    fs_uuid = str(uuid.uuid4())
    node = loops.attach(make_image(tmp_path, "cbtrace", fs_uuid))   # the volume's device
    key = os.urandom(32)
    keyimg = key_image(tmp_path, "cbtkeydev", key)
    fake = FakeCryptsetup(tmp_path / "bin")  # the real one cannot map on this host (no dm)
    fake.accept(key)
    (fake.dir / "blkid").unlink()  # the real blkid probes the real device here
    (tmp_path / "cmdline").write_text("quiet rd.retry=60\n")
    (tmp_path / "crypttab").write_text(
        f"vol UUID={fs_uuid} /keys/root.key:LABEL=cbtkeydev luks,keyfile-timeout=2s\n")
    argv = wrap([sys.executable, "-m", "cryptboot", "unlock", "--cmdline",
                 str(tmp_path / "cmdline"), "--crypttab", str(tmp_path / "crypttab"), "vol"])
    env = dict(os.environ, PYTHONPATH=str(REPO), PATH=f"{fake.dir}:{os.environ['PATH']}")
    child = pexpect.spawn(argv[0], argv[1:], env=env, timeout=30)
    try:
        child.expect("key device LABEL=cbtkeydev did not appear within 2 s")  # keyfile-timeout
        child.expect(f"Please enter passphrase for disk vol \\({node}\\): ")
        assert fake.open_calls() == []
        keynode = loops.attach(keyimg)  # the user plugs the stick in; types nothing
        child.expect(r"\(vol unlocked with keyfile /keys/root.key on LABEL=cbtkeydev\)")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0, child.before
    (call,) = fake.open_calls()
    assert bytes.fromhex(str(call["stdin"])) == key
    argv_c = [str(a) for a in call["argv"]]  # type: ignore[attr-defined]
    assert argv_c[-2:] == [node, "vol"]
    mounts = Path("/proc/self/mounts").read_text()
    assert keynode not in mounts  # read-only mount undone (and it lived in the namespace)


SPEC_WAITER = r"""
import json, sys
from cryptboot.config.devspec import parse_devspec
from cryptboot.devices import DeviceWatcher
w = DeviceWatcher()
print(json.dumps({"ready": w.mode}), flush=True)
spec = parse_devspec(sys.argv[1])
d = w.wait(spec, 30)
print(json.dumps({"spec": [spec.kind.value, spec.value], "node": d.node}), flush=True)
"""


@pytest.mark.parametrize("with_udevd", [pytest.param(False, id="kernel-uevents"),
                                        pytest.param(True, id="udevd")])
@pytest.mark.parametrize("text", ["LABEL=café", r"/dev/disk/by-label/caf\xc3\xa9"])
def test_non_ascii_label_is_found(tmp_path: Path, loops: Loops, text: str,
                                  with_udevd: bool) -> None:
    img = make_image(tmp_path, "café", str(uuid.uuid4()))
    argv = [sys.executable, "-c", SPEC_WAITER, text]
    if with_udevd:
        argv = wrap(argv)
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, proc.stderr.read() if proc.stderr else ""
    assert json.loads(line)["ready"] == ("udev" if with_udevd else "kernel")
    node = loops.attach(img)
    res: dict[str, object] = dict(result(proc)[0])
    assert res["spec"] == ["LABEL", "café"]
    assert res["node"] == node
