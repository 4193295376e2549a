"""Storage layers (issue 12): LVM names, pvscan output, the layer's argv on a fake lvm, the
command-line words, and the device wait offering devices to layers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cryptboot.config import stack
from cryptboot.config.model import DeviceSpec, SpecKind
from cryptboot.config.plan import build_plan
from cryptboot.devices import BlockDevice, matches
from cryptboot.errors import ConfigError
from cryptboot.layers import lvm


@pytest.fixture
def logs(monkeypatch: pytest.MonkeyPatch) -> object:
    from tests.unit.test_boot import logs as boot_logs

    return boot_logs.__wrapped__(monkeypatch)  # type: ignore[attr-defined]


def test_dm_names_round_trip() -> None:
    assert lvm.dm_name("debian-vg", "root") == "debian--vg-root"
    assert stack.split_dm_name("debian--vg-root") == ("debian-vg", "root")
    assert stack.split_dm_name("vg-swap--1") == ("vg", "swap-1")
    assert stack.split_dm_name("root") is None
    assert stack.lv_of_path("/dev/mapper/debian--vg-root") == ("debian-vg", "root")
    assert stack.lv_of_path("/dev/debian-vg/root") == ("debian-vg", "root")
    assert stack.lv_of_path("/dev/disk/by-uuid") is None
    assert stack.lv_of_path("/dev/vda5") is None


def test_pvscan_output() -> None:
    out = ("  pvscan[17618] PV /dev/dm-0 online, VG vg.data is complete.\n"
           "  pvscan[17618] VG vg.data run autoactivation.\n"
           '  2 logical volume(s) in volume group "vg.data" now active\n')
    assert lvm._vg_state(out) == ("vg.data", "complete")
    assert lvm._vg_state("  pvscan[1] PV /dev/vdb online, VG big incomplete (need 1).\n") \
        == ("big", "incomplete (need 1)")
    assert lvm._vg_state("  VG debian-vg complete\n") == ("debian-vg", "complete")
    assert lvm._activated(out).startswith("2 logical volume(s)")


def test_lv_paths_match_device_mapper_names() -> None:
    dev = BlockDevice("/dev/dm-1", "dm-1", (254, 1),
                      {"DM_NAME": "debian--vg-root", "DM_UUID": "LVM-abc"})
    assert matches(DeviceSpec(SpecKind.PATH, "/dev/mapper/debian--vg-root"), dev)
    assert matches(DeviceSpec(SpecKind.PATH, "/dev/debian-vg/root"), dev)
    assert not matches(DeviceSpec(SpecKind.PATH, "/dev/debian-vg/swap_1"), dev)
    crypt = BlockDevice("/dev/dm-0", "dm-0", (254, 0), {"DM_NAME": "a-b", "DM_UUID": "CRYPT-x"})
    assert not matches(DeviceSpec(SpecKind.PATH, "/dev/a/b"), crypt)


FAKE_LVM = """#!/bin/sh
echo "$@" >> "$LOG"
case "$1 $2 $3" in
"pvscan --cache --activate") echo "  pvscan[1] PV $5 online, VG vg0 is complete."
  echo '  2 logical volume(s) in volume group "vg0" now active' ;;
"pvscan --cache --listvg") echo "  VG vg0 complete" ;;
esac
exit 0
"""


def fake_lvm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path]:
    prog = tmp_path / "lvm"
    prog.write_text(FAKE_LVM)
    prog.chmod(0o755)
    log = tmp_path / "log"
    monkeypatch.setenv("LOG", str(log))
    monkeypatch.setattr("cryptboot.run.minimal_env",
                        lambda extra=None: {**os.environ, **(extra or {})})
    return str(prog), log


def pv(node: str, uuid: str = "pvuuid") -> BlockDevice:
    return BlockDevice(node, node[5:], (254, 0), {"ID_FS_TYPE": "LVM2_member",
                                                  "ID_FS_UUID": uuid})


def test_each_pv_is_scanned_once_and_activates(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    prog, log = fake_lvm(tmp_path, monkeypatch)
    layer = lvm.layer(build_plan("root=/dev/vg0/root", None), prog)
    layer.offer(pv("/dev/dm-0"))
    layer.offer(pv("/dev/dm-0"))  # the same PV again (a change event): no second scan
    layer.offer(BlockDevice("/dev/vda1", "vda1", (253, 1), {"ID_FS_TYPE": "ext4"}))
    assert log.read_text().splitlines() == ["pvscan --cache --activate ay /dev/dm-0"]
    assert layer.active == ["vg0"]


def test_rd_lvm_lv_activates_only_that_lv(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    prog, log = fake_lvm(tmp_path, monkeypatch)
    plan = build_plan("root=/dev/vg0/root rd.lvm.lv=vg0/root rd.lvm.lv=other/x", None)
    layer = lvm.layer(plan, prog)
    layer.offer(pv("/dev/vdb"))
    assert log.read_text().splitlines() == [
        "pvscan --cache --listvg --checkcomplete /dev/vdb", "lvchange -ay vg0/root"]
    layer2 = lvm.layer(build_plan("rd.lvm.vg=vg0", None), prog)
    layer2.offer(pv("/dev/vdc", "u2"))
    assert log.read_text().splitlines()[-1] == "vgchange -ay vg0"


def test_stack_words_in_the_plan() -> None:
    p = build_plan("root=/dev/mapper/vg-root rd.lvm.vg=vg rd.lvm.lv=vg/root rd.md=0 "
                   "rd.md.uuid=a1b2c3d4:e5f60718:293a4b5c:6d7e8f90 rd.md.conf=0 "
                   "resume=UUID=5e1f0000-aaaa-4bbb-8ccc-00000000005a resume_offset=34816", None)
    assert p.layers == ("lvm", "btrfs")
    assert (p.lvm_vgs, p.lvm_lvs) == (("vg",), ("vg/root",))
    assert p.md_uuids == ("a1b2c3d4e5f60718293a4b5c6d7e8f90",) and p.md_conf is False
    assert p.resume == DeviceSpec(SpecKind.UUID, "5e1f0000-aaaa-4bbb-8ccc-00000000005a")
    assert p.resume_offset == 34816
    assert build_plan("rd.lvm=0", None).layers == ("md", "btrfs")
    assert build_plan("resume=/dev/vg/swap noresume", None).resume is None
    assert build_plan("resume=254:1", None).resume == DeviceSpec(SpecKind.PATH, "/dev/block/254:1")
    assert not [w for w in p.warnings if "not implemented" in w]
    with pytest.raises(ConfigError, match="expected a volume named 'vg-root'"):
        build_plan("root=/dev/mapper/vg-root rd.lvm=0", None)


@pytest.mark.parametrize("word", ["rd.lvm.lv=root", "rd.md.uuid=xyz", "resume_offset=-1",
                                  "resume="])
def test_bad_stack_words(word: str) -> None:
    with pytest.raises(ConfigError, match=r"/proc/cmdline:1: "):
        build_plan(word, None)


@pytest.mark.usefixtures("logs")
def test_resume_before_the_root_is_mounted(tmp_path: Path) -> None:
    """The resume step runs after the unlock and before any mount of the root (a read-write
    mount of a filesystem the hibernated kernel had open loses the hibernated session)."""
    from cryptboot.boot import run_boot
    from tests.unit.test_boot import FakeSystem, HandedOff, args_for

    class Sys(FakeSystem):
        def resume(self, plan: object, unlocker: object) -> None:
            self._call("resume")

    sysm = Sys()
    with pytest.raises(HandedOff):
        run_boot(args_for(tmp_path, "root=LABEL=rootfs rw resume=/dev/vdz2"), sysm)
    mounts = [c for c in sysm.calls if c.startswith("mount_root")]
    assert sysm.calls.index("resume") < sysm.calls.index(mounts[0])
    sysm = Sys()
    with pytest.raises(HandedOff):
        run_boot(args_for(tmp_path, "root=LABEL=rootfs rw resume=/dev/vdz2 noresume"), sysm)
    assert "resume" not in sysm.calls


def test_resume_writes_the_device_number(tmp_path: Path) -> None:
    from cryptboot import resume

    power = tmp_path / "power"
    power.mkdir()
    (power / "resume").write_text("0:0\n")
    (power / "resume_offset").write_text("0\n")
    dev = BlockDevice("/dev/dm-2", "dm-2", (254, 2), {"ID_FS_TYPE": "swsuspend"})
    plan = build_plan("resume=/dev/mapper/vg-swap resume_offset=34816", None)
    seen: list[DeviceSpec] = []

    def wait(spec: DeviceSpec, timeout: float | None) -> BlockDevice:
        seen.append(spec)
        return dev

    text = resume.resume(plan, wait, 5.0, str(power))
    assert seen == [DeviceSpec(SpecKind.PATH, "/dev/mapper/vg-swap")]
    assert (power / "resume").read_text() == "254:2\n"
    assert (power / "resume_offset").read_text() == "34816\n"
    assert "booting fresh" in text
    plan = build_plan("resume=8:3", None)
    resume.resume(plan, wait, 5.0, str(power))
    assert (power / "resume").read_text() == "8:3\n" and len(seen) == 1


class _Btrfs:
    """A btrfs layer whose filesystem is complete after ``missing`` more asks."""

    name = "btrfs"

    def __init__(self, missing: int | None) -> None:
        self.missing = missing
        self.asked = 0

    def complete(self, dev: BlockDevice) -> bool:
        self.asked += 1
        return self.missing is not None and self.asked > self.missing


class _Watcher:
    def __init__(self, root: BlockDevice) -> None:
        self.root = root
        self.waits: list[str] = []

    def wait(self, spec: DeviceSpec, timeout: float | None, **kw: object) -> BlockDevice:
        import time

        from cryptboot.errors import DeviceTimeout

        self.waits.append(spec.value)
        if spec.value == "fs":
            return self.root
        time.sleep(timeout or 0)
        raise DeviceTimeout(f"{spec.value}: nothing within {timeout} s")


@pytest.mark.parametrize(("missing", "timeout", "reads"), [(0, 5.0, 0), (3, 5.0, 2),
                                                           (None, 0.6, None)])
def test_multi_device_btrfs_root_waits_for_its_members(missing: int | None, timeout: float,
                                                       reads: int | None) -> None:
    """The root's device is one member of a multi-device btrfs: the wait goes on reading
    device events (short waits for nothing, each offering what came to the layers) until the
    btrfs layer says the filesystem is complete, or the root wait's time is up."""
    import time

    from cryptboot.config.model import Plan, Root
    from cryptboot.layers.crypt import Unlocker

    root = BlockDevice("/dev/dm-0", "dm-0", props={"ID_FS_TYPE": "btrfs", "ID_FS_UUID": "fs"})
    w = _Watcher(root)
    u = Unlocker(Plan(volumes=(), root=Root(None)), watcher=w)  # type: ignore[arg-type]
    layer = _Btrfs(missing)
    u.layers.append(layer)  # type: ignore[arg-type]
    t0 = time.monotonic()
    assert u.wait(DeviceSpec(SpecKind.UUID, "fs"), timeout) is root
    if missing is None:  # never complete: mounted anyway once the root wait's time is up
        assert time.monotonic() - t0 >= timeout
    assert w.waits[0] == "fs"
    # the reads of further events (0.25 s each; never complete: as many as fit in the wait)
    assert (len(w.waits) - 1 == reads if missing is not None else len(w.waits) - 1 >= 2), w.waits
    assert all(v.startswith("btrfs-members-of-fs") for v in w.waits[1:])
