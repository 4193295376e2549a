"""The image builder: cpio format, ELF dependencies, module closure, import walk, the CLI."""

from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from cryptboot.errors import CryptbootError
from cryptboot.initramfs import build, cpio, elf, kmod, pyfiles
from cryptboot.initramfs.cli import main as mk_main
from cryptboot.paths import module_name

REPO = Path(__file__).resolve().parents[2]
KVERS = sorted(p.name for p in Path("/lib/modules").glob("*") if (p / "modules.dep").exists())
needs_kernel = pytest.mark.skipif(not KVERS, reason="no kernel modules in /lib/modules")


# -- cpio ---------------------------------------------------------------------------------------


def test_cpio_is_sorted_reproducible_and_readable_by_cpio(tmp_path: Path) -> None:
    entries = [
        cpio.Entry.file("usr/bin/b", b"bee", 0o755),
        cpio.Entry.directory("usr"),
        cpio.Entry.symlink("bin", "usr/bin"),
        cpio.Entry.directory("usr/bin"),
        cpio.Entry.chardev("dev/console", 5, 1),
        cpio.Entry.directory("dev"),
    ]
    one, two = io.BytesIO(), io.BytesIO()
    cpio.write(one, entries, 1700000000)
    cpio.write(two, list(reversed(entries)), 1700000000)
    assert one.getvalue() == two.getvalue()
    names = [e.path for e in cpio.read(one.getvalue())]
    assert names == ["bin", "dev", "dev/console", "usr", "usr/bin", "usr/bin/b"]
    # GNU cpio agrees on the format, owners and times
    listing = subprocess.run(["cpio", "-t", "-v", "--quiet"], input=one.getvalue(),
                             capture_output=True, check=True).stdout.decode()
    assert "usr/bin/b" in listing and "bin -> usr/bin" in listing
    assert all(" root " in line for line in listing.splitlines()), listing
    assert "2023" in listing  # 1700000000 is Nov 2023
    back = {e.path: e for e in cpio.read(one.getvalue())}
    assert back["usr/bin/b"].data == b"bee"
    assert stat.S_IMODE(back["usr/bin/b"].mode) == 0o755
    assert back["dev/console"].rdev == (5, 1)


# -- ELF ----------------------------------------------------------------------------------------


def test_elf_reads_interpreter_and_needed_libraries() -> None:
    info = elf.read_elf(pyfiles.interpreter())
    assert info.interp and info.interp.endswith("ld-linux-x86-64.so.2")
    assert "libc.so.6" in info.needed


def test_elf_dependencies_closure_of_cryptsetup() -> None:
    deps = elf.dependencies([build.find_tool("cryptsetup")])
    names = {os.path.basename(d) for d in deps}
    # direct and indirect (libcryptsetup -> libdevmapper) libraries, and the loader
    assert {"libcryptsetup.so.12", "libdevmapper.so.1.02.1", "libc.so.6"} <= names
    assert any(d.startswith("/lib64/") for d in deps)
    for dest, src in deps.items():
        assert os.path.isfile(src), (dest, src)


def test_elf_refuses_a_non_elf_file(tmp_path: Path) -> None:
    p = tmp_path / "script"
    p.write_text("#!/bin/sh\n")
    with pytest.raises(CryptbootError, match="not an ELF file"):
        elf.read_elf(str(p))


# -- tools and modules --------------------------------------------------------------------------


def test_missing_tool_names_it_and_the_package() -> None:
    with pytest.raises(CryptbootError) as e:
        build.find_tool("fsck.btrfs-surely-not-here")
    assert "fsck.btrfs-surely-not-here" in e.value.message
    with pytest.raises(CryptbootError) as e2:
        build.find_tool("/nonexistent/dmsetup")
    assert e2.value.hint == "apt-get install dmsetup"


@needs_kernel
def test_module_closure_follows_modules_dep() -> None:
    mods = kmod.resolve(KVERS[-1], ["dm-crypt"])
    assert mods.names == ("dm_crypt",)
    bases = {os.path.basename(p) for p in mods.files}
    assert "dm-crypt.ko" in bases and "dm-mod.ko" in bases


@needs_kernel
def test_missing_module_is_an_error_naming_it() -> None:
    with pytest.raises(CryptbootError, match="kernel module no_such_mod not found"):
        kmod.resolve(KVERS[-1], ["no-such-mod"])


@needs_kernel
def test_builtin_module_is_not_an_error() -> None:
    builtin = (kmod.module_dir(KVERS[-1]) / "modules.builtin").read_text().split()
    name = os.path.basename(builtin[0]).split(".ko")[0]
    mods = kmod.resolve(KVERS[-1], [name])
    assert mods.builtin == (module_name(name),) and not mods.files


@needs_kernel
def test_depmod_indexes_cover_only_the_chosen_modules() -> None:
    mods = kmod.resolve(KVERS[-1], ["dm_crypt"])
    idx = kmod.indexes(mods)
    assert {"modules.dep", "modules.dep.bin", "modules.alias.bin"} <= set(idx)
    dep = idx["modules.dep"].decode()
    assert "dm-crypt.ko" in dep and "virtio_blk" not in dep


# -- the import walk ----------------------------------------------------------------------------


def test_imports_of_skips_main_guard_type_checking_and_optional() -> None:
    src = b"""
import os
from typing import TYPE_CHECKING
if TYPE_CHECKING:
    import decimal
try:
    import bz2
except ImportError:
    bz2 = None
from . import sibling
def f():
    import json
if __name__ == "__main__":
    import argparse
"""
    eager = pyfiles.imports_of(src, "pkg.mod", False, lazy=False)
    assert "os" in eager and "pkg.sibling" in eager and "typing" in eager
    assert not {"decimal", "bz2", "argparse", "json"} & set(eager)
    lazy = pyfiles.imports_of(src, "pkg.mod", False, lazy=True)
    assert "json" in lazy and "argparse" not in lazy


def test_list_python_prints_src_tab_dest(capsys: pytest.CaptureFixture[str],
                                         tmp_path: Path) -> None:
    assert mk_main(["--list-python", "--cache-dir", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows: dict[str, str] = {}  # dest -> src
    for line in lines:
        src, dest = line.split("\t")
        rows[dest] = src
    assert all(len(line.split("\t")) == 2 for line in lines)
    assert lines == sorted(lines, key=lambda x: x.split("\t")[1])
    for dest, src in rows.items():
        assert dest.startswith("/") and os.path.isfile(src), (dest, src)
    python = pyfiles.interpreter()
    assert python in rows
    assert "/usr/bin/cryptboot" in rows
    assert os.access(rows["/usr/bin/cryptboot"], os.X_OK)
    assert any(d.endswith("/libudev.so.1") for d in rows)
    assert f"{pyfiles.SITE}/cryptboot/boot.pyc" in rows
    assert f"{pyfiles.SITE}/pyudev/__init__.pyc" in rows
    assert any(d.endswith("/encodings/utf_8.pyc") for d in rows)
    # the builder is not on the boot path, nor is `cryptboot check` (it judges an image from
    # the installed system) with the decompressors only its image reader uses, nor are
    # modules nothing imports
    assert not any("/cryptboot/initramfs/" in d or "/cryptboot/check/" in d for d in rows)
    assert not any(d.endswith(("/bz2.pyc", "/lzma.pyc")) for d in rows)
    assert not any(d.endswith(("/unittest/__init__.pyc", "/pydoc.pyc")) for d in rows)


def test_storage_layers_python_only_in_images_that_get_them(tmp_path: Path) -> None:
    """Issue 12: a plain LUKS image does not grow: the lvm, md and btrfs layers' modules go in
    only with their layer (the crypt layer always)."""
    def layer_files(layers: tuple[str, ...]) -> set[str]:
        return {f.dest.rsplit("/", 1)[1] for f in pyfiles.python_files(tmp_path, layers)
                if "/cryptboot/layers/" in f.dest}

    assert layer_files(()) == {"__init__.pyc", "crypt.pyc"}
    assert layer_files(("lvm",)) == {"__init__.pyc", "crypt.pyc", "lvm.pyc"}
    assert layer_files(("md", "btrfs")) == {"__init__.pyc", "crypt.pyc", "md.pyc", "btrfs.pyc"}


@pytest.mark.root
def test_listed_runtime_runs_cryptboot_in_a_bare_tree(tmp_path: Path) -> None:
    """Copy exactly the listed files into an empty tree: the interpreter starts there (chroot)
    and imports the boot path, pyudev finds libudev, the launcher runs."""
    chroot = shutil.which("chroot") or "/usr/sbin/chroot"
    cache = tmp_path / "cache"
    rows = build.python_runtime(str(cache))
    root = tmp_path / "root"
    for dest, src in rows:
        target = root / dest.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(Path(src).read_bytes())
        target.chmod(0o755 if os.access(src, os.X_OK) else 0o644)
    proc = subprocess.run([chroot, str(root), "/usr/bin/cryptboot", "--version"],
                          capture_output=True, check=False, env={})
    assert proc.returncode == 0 and proc.stdout.startswith(b"cryptboot "), proc.stderr
    # with the launcher's lean ctypes.util and datetime (the image has neither stdlib module),
    # the boot path and pyudev import, libudev is found, the heavy modules stay out
    prelude = (f"import sys\nsys.path.insert(0, {pyfiles.SITE!r})\n"
               "import cryptboot.launch\ncryptboot.launch.install()\n")
    check = ("import cryptboot.boot, cryptboot.devices, pyudev, ctypes.util, datetime\n"
             "pyudev.Context()\n"
             "print(ctypes.util.find_library('udev'), datetime.timedelta(seconds=90),\n"
             "      sorted({'shutil', 'tempfile', 'random', 'bz2', 'typing'} & set(sys.modules)))")
    proc = subprocess.run([chroot, str(root), pyfiles.interpreter(), "-I", "-S", "-c",
                           prelude + check], capture_output=True, check=False, env={})
    assert proc.returncode == 0, proc.stderr.decode()
    lib, delta, loaded = proc.stdout.decode().split(" ", 2)
    assert lib.startswith("/usr/lib/") and "libudev.so.1" in lib
    assert (delta, loaded.strip()) == ("0:01:30", "[]")


# -- whole images -------------------------------------------------------------------------------


def _build(tmp_path: Path, out: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "cryptboot", "mkinitramfs", "-o", str(out), "--compress", "none",
         "--cache-dir", str(tmp_path / "pyc"), "--kver", KVERS[-1], *args],
        capture_output=True, check=False, env={**os.environ, "SOURCE_DATE_EPOCH": "1"},
    )


@needs_kernel
def test_image_is_reproducible_and_holds_the_boot(tmp_path: Path) -> None:
    a, b = tmp_path / "a.img", tmp_path / "b.img"
    for out in (a, b):
        proc = _build(tmp_path, out, "--crypttab", "none", "--module", "virtio_blk")
        assert proc.returncode == 0, proc.stderr.decode()
    assert a.read_bytes() == b.read_bytes()
    assert stat.S_IMODE(a.stat().st_mode) == 0o644
    entries = {e.path: e for e in cpio.read(a.read_bytes())}
    assert entries["init"].data == b"usr/bin/cryptboot"
    for need in ("usr/sbin/cryptsetup", "usr/bin/udevadm", "usr/sbin/blkid", "usr/sbin/dmsetup",
                 "usr/sbin/e2fsck", "usr/bin/busybox",
                 "usr/lib/udev/rules.d/60-persistent-storage.rules",
                 "usr/lib/udev/rules.d/95-dm-notify.rules",
                 f"usr/lib/modules/{KVERS[-1]}/modules.dep.bin",
                 "etc/cryptboot/modules"):
        assert need in entries, need
    assert stat.S_ISLNK(entries["usr/lib/systemd/systemd-udevd"].mode)
    assert stat.S_ISLNK(entries["bin"].mode) and entries["bin"].data == b"usr/bin"
    assert entries["usr/bin/sh"].data == b"busybox"
    assert entries["usr/sbin/modprobe"].data == b"../bin/busybox"
    assert b"dm-crypt.ko" in entries[f"usr/lib/modules/{KVERS[-1]}/modules.dep"].data
    wanted = entries["etc/cryptboot/modules"].data.decode().split()
    assert "virtio_blk" in wanted and "dm_crypt" in wanted
    assert "etc/crypttab" not in entries
    persist = entries["usr/lib/udev/rules.d/11-cryptboot-dm-persist.rules"].data
    assert b'KERNEL!="dm-[0-9]*"' in persist and b'OPTIONS+="db_persist"' in persist


@needs_kernel
def test_keyfile_image_is_0600_key_0400_with_a_warning(tmp_path: Path) -> None:
    key = tmp_path / "k"
    key.write_bytes(b"secret\x00key")
    tab = tmp_path / "crypttab"
    tab.write_text("root UUID=5e1f0000-aaaa-4bbb-8ccc-000000000001 /etc/keys/root.key luks\n")
    out = tmp_path / "k.img"
    proc = _build(tmp_path, out, "--crypttab", str(tab), "--keyfile", f"{key}:/etc/keys/root.key")
    assert proc.returncode == 0, proc.stderr.decode()
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert b"holds a key" in proc.stderr
    entries = {e.path: e for e in cpio.read(out.read_bytes())}
    assert entries["etc/keys/root.key"].data == b"secret\x00key"
    assert stat.S_IMODE(entries["etc/keys/root.key"].mode) == 0o400
    assert entries["etc/crypttab"].data == tab.read_bytes()


@needs_kernel
def test_failed_build_leaves_nothing_at_output(tmp_path: Path) -> None:
    out = tmp_path / "x.img"
    out.write_bytes(b"the previous image")
    proc = _build(tmp_path, out, "--module", "no_such_module_anywhere")
    assert proc.returncode != 0
    err = proc.stderr.decode()
    assert "no_such_module_anywhere" in err and "Traceback" not in err
    assert out.read_bytes() == b"the previous image"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".cryptboot")] == []


@needs_kernel
def test_malformed_crypttab_fails_the_build_with_its_line(tmp_path: Path) -> None:
    tab = tmp_path / "crypttab"
    tab.write_text("# comment\nroot\n")
    proc = _build(tmp_path, tmp_path / "y.img", "--crypttab", str(tab))
    assert proc.returncode == 2
    assert f"{tab}:2:" in proc.stderr.decode()
    assert not (tmp_path / "y.img").exists()


def test_rule_programs_finds_what_udev_rules_run() -> None:
    text = '''
ENV{DM_COOKIE}=="?*", IMPORT{program}="/sbin/dmsetup udevflags $env{DM_COOKIE}"
KERNEL=="sd*", IMPORT{program}="ata_id --export $devnode"
RUN+="$env{REMOVE_CMD}"
ENV{MODALIAS}=="?*", RUN{builtin}+="kmod load"
PROGRAM="/usr/bin/true %k"
'''
    assert build.rule_programs(text) == {"/sbin/dmsetup", "/usr/lib/udev/ata_id",
                                         "/usr/bin/true"}


def test_same_host_file_twice_is_stored_once(tmp_path: Path) -> None:
    src = tmp_path / "lib.so"
    src.write_bytes(b"\x7fELF not really")
    img = build.Image()
    img.add_file(str(src), "/usr/lib/x86_64-linux-gnu/lib.so.1")
    img.add_file(str(src), "/lib64/lib.so.1")   # through the lib64 -> usr/lib64 symlink
    first = img.entries["usr/lib/x86_64-linux-gnu/lib.so.1"]
    second = img.entries["usr/lib64/lib.so.1"]
    assert stat.S_ISREG(first.mode) and first.data == src.read_bytes()
    assert stat.S_ISLNK(second.mode)
    assert second.data == b"../lib/x86_64-linux-gnu/lib.so.1"
    assert stat.S_ISDIR(img.entries["usr/lib64"].mode)


@needs_kernel
@pytest.mark.parametrize(("loaded", "storage"), [
    (["hid_generic"], ["virtio_pci", "virtio_blk"]),   # no storage module: a VM's defaults
    (["virtio_blk", "evdev", "hid_generic"], ["virtio_blk"]),
])
def test_host_keyboard_drivers_go_in_and_load_at_boot(monkeypatch: pytest.MonkeyPatch,
                                                      loaded: list[str],
                                                      storage: list[str]) -> None:
    """The passphrase is typed on this machine's keyboard: its HID/USB drivers, as loaded here,
    are put in the image and listed for loading; other input drivers (evdev) are not."""
    monkeypatch.setattr(kmod, "loaded_modules", lambda proc_modules="": loaded)
    img = build.Image()
    build.add_modules(img, build.Options(output="x", kver=KVERS[-1]))
    wanted = img.entries["etc/cryptboot/modules"].data.decode().split()
    assert {*storage, "hid_generic", "dm_crypt"} <= set(wanted)
    assert "evdev" not in wanted and ("virtio_pci" in wanted) == ("virtio_pci" in storage)
    files = [p for p in img.entries if p.endswith(".ko")]
    assert any(p.endswith("/hid-generic.ko") for p in files)
    assert any(p.endswith("/hid.ko") for p in files)  # and its dependency
