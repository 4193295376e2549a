"""The systemd hand-off (initrd timestamp) and the shutdown initramfs's boot-time copy.

The real proof is tests/vm/test_systemd_root.py (Debian's systemd reads the timestamp and
``systemd-analyze`` shows "(initrd)"; systemd-shutdown runs the copied root). Here: detection,
the kernel-record parsing, the serialization's format, and the copy's shape.
"""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

from cryptboot import shutdown
from cryptboot.switch import systemd_handoff as sd


def make_root(tmp: Path, init_target: str) -> Path:
    root = tmp / "root"
    (root / "lib/systemd").mkdir(parents=True)
    (root / "sbin").mkdir()
    real = root / init_target.lstrip("/")
    real.parent.mkdir(parents=True, exist_ok=True)
    real.write_text("#!/bin/sh\n")
    real.chmod(0o755)
    (root / "sbin/init").symlink_to(init_target)  # absolute: resolved inside the root
    return root


def kmsg(tmp: Path, lines: list[str]) -> str:
    # /dev/kmsg gives one record per read(); a regular file gives them all at once, so the
    # fake keeps one record per file read: the first line only matters for the real device
    path = tmp / "kmsg"
    path.write_text("".join(lines))
    return str(path)


def test_systemd_is_detected_through_the_roots_own_symlink(tmp_path: Path) -> None:
    root = make_root(tmp_path, "/lib/systemd/systemd")
    assert sd.is_systemd(str(root), "/sbin/init")
    assert sd.is_systemd(str(root), "/lib/systemd/systemd")
    other = make_root(tmp_path / "b", "/bin/busybox")
    assert not sd.is_systemd(str(other), "/sbin/init")
    assert not sd.is_systemd(str(root), "/sbin/missing")


def test_run_init_record_gives_the_monotonic_start(tmp_path: Path) -> None:
    path = kmsg(tmp_path, ["6,512,3059876,-;Run /init as init process\n"])
    assert sd.init_started_usec(path) == 3059876
    other = kmsg(tmp_path, ["6,1,100,-;Freeing unused kernel image memory\n"])
    assert sd.init_started_usec(other) is None
    assert sd.init_started_usec(str(tmp_path / "absent")) is None


def test_serialization_is_systemds_header_format() -> None:
    mono = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000 - 2_000_000
    text = sd.serialization(mono).decode()
    assert text.endswith("\n\n")  # the header's end marker
    key, _, value = text.strip().partition("=")
    assert key == "initrd-timestamp"
    real, mono_s = value.split()
    assert int(mono_s) == mono
    # realtime of the same moment: about two seconds ago
    assert abs(int(real) - (time.time_ns() // 1000 - 2_000_000)) < 1_000_000


def test_init_args_for_systemd_carry_a_readable_memfd(tmp_path: Path) -> None:
    root = make_root(tmp_path, "/lib/systemd/systemd")
    path = kmsg(tmp_path, ["6,512,3059876,-;Run /init as init process\n"])
    args = sd.init_args(str(root), "/sbin/init", ["quiet"], kmsg=path)
    assert args[:3] == ["--switched-root", "--system", "--deserialize"] and args[4:] == ["quiet"]
    fd = int(args[3])
    try:
        assert os.get_inheritable(fd)  # survives the exec
        assert os.read(fd, 200).decode().startswith("initrd-timestamp=")
    finally:
        os.close(fd)


def test_init_args_unchanged_for_other_inits_or_without_the_record(tmp_path: Path) -> None:
    path = kmsg(tmp_path, ["6,512,3059876,-;Run /init as init process\n"])
    busybox = make_root(tmp_path / "b", "/bin/busybox")
    assert sd.init_args(str(busybox), "/sbin/init", ["x"], kmsg=path) == ["x"]
    systemd = make_root(tmp_path / "s", "/lib/systemd/systemd")
    assert sd.init_args(str(systemd), "/sbin/init", [], kmsg=str(tmp_path / "none")) == []
    # already switched-root arguments (init= args by hand) are left alone
    assert sd.init_args(str(systemd), "/sbin/init", ["--switched-root"], kmsg=path) == [
        "--switched-root"]


def test_shutdown_root_is_copied_with_modes_links_and_mappings(tmp_path: Path) -> None:
    src = tmp_path / "image"
    (src / "usr/bin").mkdir(parents=True)
    (src / "usr/lib/cryptboot").mkdir(parents=True)
    (src / "usr/lib64").mkdir(parents=True)
    (src / "etc/cryptboot").mkdir(parents=True)
    (src / "usr/bin/busybox").write_bytes(b"\x7fELF" + b"x" * 5000)
    (src / "usr/bin/busybox").chmod(0o755)
    (src / "usr/lib64/ld.so").symlink_to("../lib/x86_64-linux-gnu/ld.so")
    (src / "usr/lib/cryptboot/shutdown").write_text("#!/usr/bin/busybox sh\n")
    (src / "usr/lib/cryptboot/shutdown").chmod(0o755)
    manifest = src / "etc/cryptboot/shutdown"
    manifest.write_text("usr/bin/busybox\nusr/lib64/ld.so\nusr/lib/cryptboot/shutdown\n")
    assert not shutdown.enabled(str(tmp_path / "none"))
    assert shutdown.enabled(str(manifest))
    target = tmp_path / "run/initramfs"
    words = shutdown.prepare(["root", "luks-x"], manifest=str(manifest), source=str(src),
                             target=str(target))
    assert "closes root luks-x" in words
    assert stat.S_IMODE((target / "usr/bin/busybox").stat().st_mode) == 0o755
    assert (target / "usr/bin/busybox").read_bytes() == (src / "usr/bin/busybox").read_bytes()
    assert os.readlink(target / "usr/lib64/ld.so") == "../lib/x86_64-linux-gnu/ld.so"
    assert os.readlink(target / "bin") == "usr/bin"
    assert os.access(target / "shutdown", os.X_OK)
    assert (target / "etc/cryptboot/mappings").read_text() == "root\nluks-x\n"
