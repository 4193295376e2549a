"""The firmware-upgrade flow for real (issue 19): one boot through cryptboot from a LUKS root
that holds Python and cryptboot, then, from the running system's own init
(:data:`tests.vm.ramroot_helpers.SCRIPT`):

1. ``ramroot``: the process started before it is named; ``--release`` is refused while it runs,
   then unmounts the old root and closes its mapping (no mapping in sysfs, ``dmsetup ls``);
2. ``cryptboot unlock root`` (the prompt, answered here), ``mkfs`` on the mapping, filled from
   the firmware disk (a tree holding a marker);
3. ``ramroot --return --device /dev/mapper/root``: the marker is at ``/``, PID 1 is the same
   process (start time, boot id), the RAM copy's memory is back (Shmem, and MemAvailable with
   the page cache dropped before each reading);
4. a second pass from the upgraded root whose upgrade fails before writing: ``--return``
   opens the closed mapping again (the prompt) and lands on the unchanged root (sha256 of a
   file set before and after);
5. refusals that change nothing: ``--release`` while a process writes to the old root (named,
   "open for writing"), ``--return`` when nothing is mounted to return to.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.vm.conftest import (
    BOOT_TIMEOUT,
    LUKS_UUID,
    PASSPHRASE,
    Machine,
    Vm,
    luks_args,
    luks_encrypt,
    make_ext4,
)
from tests.vm.ramroot_helpers import facts, root_image_tree

pytestmark = pytest.mark.vm

PROMPT = r"Please enter passphrase for disk root \(/dev/vda\): "
MIB = 1024  # meminfo counts kB


@pytest.fixture(scope="module")
def ramroot_disks(vmdir: Path, kver: str, pyc_cache: Path) -> tuple[Path, Path]:
    """(the LUKS root holding the "old" system, the plain ext4 "firmware" disk)."""
    old = root_image_tree(vmdir / "ramroot-old", kver, pyc_cache, "old-1")
    fw = root_image_tree(vmdir / "ramroot-fw", kver, pyc_cache, "new-2", marker="firmware-2")
    root = make_ext4(vmdir / "ramroot-root.img", old, label="oldroot", size_mb=80, fs_mb=64)
    luks_encrypt(root, uuid=LUKS_UUID)
    firmware = make_ext4(vmdir / "ramroot-fw.img", fw, label="fw", size_mb=64, fs_mb=64)
    return root, firmware


def test_ramroot_release_replace_return(machine: Machine, image: Path,
                                        ramroot_disks: tuple[Path, Path],
                                        vm_cleanup: list[Vm]) -> None:
    vm = machine.boot("ramroot", image, list(ramroot_disks),
                      f"root=/dev/mapper/root rw {luks_args()} rd.emergency=poweroff",
                      timeout=BOOT_TIMEOUT * 4)
    vm_cleanup.append(vm)
    vm.expect(PROMPT)                       # the boot
    vm.type(PASSPHRASE)
    vm.expect("REAL_INIT_REACHED pid=1")
    for step in ("RR release rc 0",         # pass 1: released; `cryptboot unlock root` asks
                 "RR return_nothing rc"):   # pass 2, refused; `--return` opens it again
        if vm.expect([f"(?s){step}.*?{PROMPT}", "RR abort .*"]) == 1:
            raise vm.fail("a step of the script failed")
        vm.type(PASSPHRASE)
    if vm.expect(["RAMROOT_TEST_DONE", "RR abort .*"]) == 1:
        raise vm.fail("a step of the script failed")
    vm.wait_exit()
    out = vm.transcript
    f = facts(out)

    # 1. the holder is named after the pivot and by the refused release; then released
    reader = f["reader"][0]
    assert f["enter1 rc"] == ["0"] and f["ram1 rootfs"] == ["tmpfs"], out
    assert f"{reader} sleep: exe, fd 0 (/oldroot/etc/release)" in out, out
    assert f["release_held rc"] == ["1"], out
    assert f["release_held dm"][0] == "1" and f["release_held oldroot_mounted"] == ["1"], out
    assert "cannot release the old root at /oldroot: still held by " in out, out
    assert f["release rc"] == ["0"], out
    assert "closed mapping root (dm-0)" in out, out
    assert f["release dm"] == ["0", "No", "devices", "found"], out
    assert f["release oldroot_mounted"] == ["0"], out

    # 2. reopened with the passphrase, a new filesystem filled from the firmware tree
    assert f["unlock rc"] == ["0"] and f["mkfs rc"] == ["0"] and f["fill rc"] == ["0"], out

    # 3. back on it: the marker, the same PID 1, the RAM copy's memory freed
    assert f["return1 rc"] == ["0"], out
    assert f["back1 marker"] == ["firmware-2"] and f["back1 release"] == ["new-2"], out
    assert f["back1 rootfs"] == ["ext4"] and f["back1 dm"][0] == "1", out
    assert f["back1 pid1"] == f["start pid1"], out
    assert f["back1 ramroot_mounts"] == ["0"], out
    avail = {k: int(f[f"{k} mem"][0]) for k in ("start", "ram1", "back1")}
    shmem = {k: int(f[f"{k} mem"][1]) for k in ("start", "ram1", "back1")}
    copy = shmem["ram1"] - shmem["start"]
    assert copy > 20 * MIB, (shmem, out)                  # the RAM copy was really there
    assert abs(shmem["back1"] - shmem["start"]) < 2 * MIB, (shmem, out)
    assert avail["ram1"] < avail["start"] - copy // 2, (avail, out)
    assert avail["back1"] > avail["start"] - 8 * MIB, (avail, out)

    # 5. refusals, each naming what it found and changing nothing
    writer = f["writer"][0]
    assert f["release_writer rc"] == ["1"], out
    assert f"{writer} sleep: exe, fd 1 (/oldroot/var/log/app.log, open for writing)" in out, out
    assert f["release_writer dm"][0] == "1", out
    assert f["release_writer oldroot_mounted"] == ["1"], out
    assert f["umount_by_hand rc"] == ["0"], out
    assert f["return_nothing rc"] == ["1"] and f["return_nothing rootfs"] == ["tmpfs"], out
    assert "nothing is mounted at /oldroot to return to" in out, out

    # 4. the failed upgrade: back on the unchanged root, nothing lost
    assert f["release2 rc"] == ["0"] and f["release2 dm"][0] == "0", out
    assert f["return2 rc"] == ["0"], out
    assert "opened mapping root again" in out, out
    assert f["back2 rootfs"] == ["ext4"] and f["back2 release"] == ["new-2"], out
    assert f["sum_after"] == f["sum_before"] and len(f["sum_before"][0]) == 64, out
    assert f["back2 pid1"] == f["start pid1"], out
    assert f["back2 ramroot_mounts"] == ["0"], out
