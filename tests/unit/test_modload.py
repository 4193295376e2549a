"""The boot's module loader: dependency order, parameters, blacklist, groups, errors.

finit_module(2) itself is replaced by a recorder here (loading a module into the host kernel is
not a unit test); the VM tier loads the image's real modules with it on every boot.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cryptboot import modload
from cryptboot.config.plan import build_plan

DEP = """\
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_modern_dev.ko \
kernel/drivers/virtio/virtio_pci_legacy_dev.ko
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio_pci_legacy_dev.ko:
kernel/drivers/block/virtio_blk.ko:
kernel/drivers/md/dm-mod.ko:
kernel/drivers/md/dm-crypt.ko: kernel/drivers/md/dm-mod.ko
kernel/arch/x86/crypto/aesni-intel.ko: kernel/crypto/crypto_simd.ko kernel/crypto/cryptd.ko
kernel/crypto/crypto_simd.ko: kernel/crypto/cryptd.ko
kernel/crypto/cryptd.ko:
kernel/fs/fat/vfat.ko.xz: kernel/fs/fat/fat.ko.xz
kernel/fs/fat/fat.ko.xz:
kernel/drivers/md/raid456.ko: kernel/crypto/async_tx/async_xor.ko kernel/drivers/md/md-mod.ko
kernel/drivers/md/md-mod.ko:
kernel/crypto/async_tx/async_xor.ko:
"""


@pytest.fixture
def kdir(tmp_path: Path) -> Path:
    d = tmp_path / "lib" / "6.1.0-test"
    for line in DEP.splitlines():
        rel = line.split(":")[0]
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_bytes(b"\x7fELF " + rel.encode())
    (d / "modules.dep").write_text(DEP)
    return d


class Recorder:
    """Stands in for finit_module: records (module file, params); answers errnos as told."""

    def __init__(self, answers: dict[str, int] | None = None) -> None:
        self.calls: list[tuple[str, str]] = []
        self.answers = answers or {}

    def __call__(self, fd: int, params: str) -> int:
        path = os.readlink(f"/proc/self/fd/{fd}")
        self.calls.append((os.path.basename(path), params))
        return self.answers.get(os.path.basename(path), 0)


def loader(kdir: Path, rec: Recorder, **kw: object) -> modload.Loader:
    ld = modload.Loader(str(kdir), **kw)  # type: ignore[arg-type]
    ld._finit = rec
    return ld


def test_dependencies_first_each_once(kdir: Path) -> None:
    rec = Recorder()
    ld = loader(kdir, rec)
    ld.load(["dm-crypt", "aesni_intel", "virtio_pci", "dm_mod"])
    assert [c[0] for c in rec.calls] == [
        "dm-mod.ko", "dm-crypt.ko", "cryptd.ko", "crypto_simd.ko", "aesni-intel.ko",
        "virtio_pci_legacy_dev.ko", "virtio_pci_modern_dev.ko", "virtio_pci.ko"]
    assert ld.summary().startswith("loaded 8 module(s) (dm_mod dm_crypt cryptd")


def test_command_line_parameters_and_blacklist_reach_the_loader(kdir: Path) -> None:
    plan = build_plan("root=/dev/vda virtio-blk.queue_depth=64 virtio_blk.poll_queues=2 "
                      "dm_mod.use_blk_mq rd.driver.blacklist=aesni-intel,foo "
                      "modprobe.blacklist=virtio_pci", None)
    assert plan.module_blacklist == {"aesni_intel", "foo", "virtio_pci"}
    assert ("virtio_blk", "queue_depth=64") in plan.module_params
    assert not plan.warnings  # none of these is an "unknown option"
    from cryptboot.config.render import render_text

    said = render_text(plan)
    assert "never load:   aesni_intel foo virtio_pci (blacklist)" in said
    assert "virtio_blk.queue_depth=64 virtio_blk.poll_queues=2 dm_mod.use_blk_mq" in said
    rec = Recorder()
    ld = loader(kdir, rec, params=plan.module_params, blacklist=plan.module_blacklist)
    ld.load(["virtio_blk", "virtio_pci", "dm_mod", "aesni_intel"])
    assert rec.calls == [("virtio_blk.ko", "queue_depth=64 poll_queues=2"),
                         ("dm-mod.ko", "use_blk_mq")]
    assert ld.skipped == ["virtio_pci", "aesni_intel"]
    assert "blacklisted: virtio_pci aesni_intel" in ld.summary()


def test_already_loaded_is_fine_and_errors_are_named(kdir: Path) -> None:
    rec = Recorder({"dm-mod.ko": 17, "virtio_blk.ko": 19})  # EEXIST, ENODEV
    ld = loader(kdir, rec)
    ld.load(["dm_mod", "virtio_blk", "no_such_module"])
    assert ld.present == ["dm_mod"]
    assert ld.failed[0] == ("virtio_blk", os.strerror(19))
    assert ld.failed[1][0] == "no_such_module"
    assert f"not in {kdir}/modules.dep" in ld.failed[1][1]


def test_compressed_modules_go_through_modprobe(kdir: Path) -> None:
    asked: list[str] = []

    def modprobe(name: str) -> str | None:
        asked.append(name)
        return None if name == "fat" else "modprobe: FATAL: no such device"

    rec = Recorder()
    ld = loader(kdir, rec, spawn_modprobe=modprobe)
    ld.load(["vfat"])
    assert asked == ["fat", "vfat"] and rec.calls == []
    assert ld.loaded == ["fat"] and ld.failed == [("vfat", "modprobe: FATAL: no such device")]


def test_groups_storage_first_then_device_mapper_and_ciphers(kdir: Path) -> None:
    idx = modload.ModuleIndex(str(kdir))
    names = idx.order(["dm_crypt", "virtio_blk", "aesni_intel", "vfat"])
    assert [n for n in names if not idx.is_late(n)] == ["virtio_blk", "fat", "vfat"]
    assert [n for n in names if idx.is_late(n)] == [
        "dm_mod", "dm_crypt", "cryptd", "crypto_simd", "aesni_intel"]


def test_kernel_requests_off_then_restored(tmp_path: Path) -> None:
    f = tmp_path / "modprobe"
    f.write_text("/sbin/modprobe\n")
    with modload.KernelRequestsOff(str(f)):
        assert f.read_text() == "\n"  # an empty path: the kernel starts no helper
    assert f.read_text() == "/sbin/modprobe\n"
    missing = modload.KernelRequestsOff(str(tmp_path / "absent"))
    with missing:
        pass
    assert not (tmp_path / "absent").exists()


def test_the_real_finit_module_reports_the_kernels_errno(tmp_path: Path) -> None:
    """The syscall wrapper itself, on this machine's kernel: a file that is not a module is
    refused with an errno, never a crash or a 0."""
    finit = modload._finit_module()
    if finit is None:
        pytest.skip(f"finit_module number not known for {os.uname().machine}")
    junk = tmp_path / "junk.ko"
    junk.write_bytes(b"not an ELF module")
    fd = os.open(junk, os.O_RDONLY)
    try:
        err = finit(fd, "")
    finally:
        os.close(fd)
    # ENOEXEC, EPERM, EINVAL; ENOSYS where the kernel has no module support (this CI's host)
    assert err in (8, 1, 22, 38)


def test_md_raid_is_early_device_mapper_late_unless_asked(kdir: Path) -> None:
    """Issue 12: md RAID must assemble before the LUKS volume on it appears; dm-mod is early
    when LVM must activate an LV to find a disk."""
    idx = modload.ModuleIndex(str(kdir))
    names = idx.order(["dm_crypt", "virtio_blk"])
    assert idx.is_late("dm_mod") and idx.is_late("dm_crypt")
    assert not idx.is_late("dm_mod", ("dm_mod",)) and idx.is_late("dm_crypt", ("dm_mod",))
    assert [n for n in names if not idx.is_late(n, ("dm_mod",))] == ["dm_mod", "virtio_blk"]
    # md is early, and so is the crypto module raid456 needs
    raid = idx.order(["raid456"])
    assert raid == ["md_mod", "async_xor", "raid456"]
    assert not any(idx.is_late(n) for n in raid)
