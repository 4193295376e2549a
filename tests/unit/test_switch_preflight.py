"""The checks before a switch: INIT resolved inside NEWROOT, and each refusal's words.

Only the checks run here (they change nothing); the switch itself runs in tests/root.
"""

from __future__ import annotations

import ctypes
import errno
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from cryptboot.errors import SwitchError
from cryptboot.switch import switch_root as sr


def _exe(path: Path, text: str = "#!/bin/sh\n", mode: int = 0o755) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def _fifo(path: Path) -> None:
    path.parent.mkdir(parents=True)
    os.mkfifo(path)


def test_symlinks_resolve_relative_to_newroot(tmp_path: Path) -> None:
    root = tmp_path / "root"
    _exe(root / "usr/lib/systemd/systemd")
    (root / "sbin").mkdir(parents=True)
    os.symlink("/usr/lib/systemd/systemd", root / "sbin/init")  # absolute: inside root
    os.symlink("../../../../../usr/lib/systemd/systemd", root / "sbin/rel")  # .. clamped
    os.symlink("sbin", root / "bin")  # a directory symlink on the way
    expected = str(root / "usr/lib/systemd/systemd")
    assert sr.resolve_in_root(str(root), "/sbin/init") == expected
    assert sr.resolve_in_root(str(root), "/sbin/rel") == expected
    assert sr.resolve_in_root(str(root), "/bin/init") == expected
    assert sr.resolve_in_root(str(root), "sbin/init") == expected
    assert sr._check_init(str(root), "/bin/init") == expected


def test_symlink_to_host_path_is_not_followed_on_the_host(tmp_path: Path) -> None:
    root = tmp_path / "root"
    _exe(tmp_path / "outside/init")  # exists on the "old root" only
    (root / "sbin").mkdir(parents=True)
    os.symlink(str(tmp_path / "outside/init"), root / "sbin/init")
    with pytest.raises(SwitchError) as e:
        sr._check_init(str(root), "/sbin/init")
    where = str(root) + str(tmp_path)
    assert "found nothing (No such file or directory at " + where in str(e.value)


def test_symlink_loop(tmp_path: Path) -> None:
    os.symlink("/a", tmp_path / "b")
    os.symlink("/b", tmp_path / "a")
    with pytest.raises(SwitchError, match="too many levels of symbolic links") as e:
        sr.resolve_in_root(str(tmp_path), "/a")
    assert e.value.exit_code == 40


@pytest.mark.parametrize("setup, message", [
    (lambda r: None, "expected an executable inside NEWROOT"),
    (lambda r: _exe(r / "sbin/init", mode=0o644), "found mode 0644 (not executable)"),
    (lambda r: (r / "sbin/init").mkdir(parents=True), "found a directory"),
    (lambda r: _fifo(r / "sbin/init"), "found a special file"),
])
def test_init_refusals(tmp_path: Path, setup: object, message: str) -> None:
    setup(tmp_path)  # type: ignore[operator]
    with pytest.raises(SwitchError) as e:
        sr._check_init(str(tmp_path), "/sbin/init")
    assert message in str(e.value)
    assert e.value.exit_code == 1


def test_newroot_plain_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SwitchError, match="expected a mount point"):
        sr._check_newroot(str(tmp_path))


def test_newroot_missing_or_file(tmp_path: Path) -> None:
    with pytest.raises(SwitchError, match="found: No such file or directory"):
        sr._check_newroot(str(tmp_path / "nope"))
    (tmp_path / "f").write_text("")
    with pytest.raises(SwitchError, match="expected a directory, found another file type"):
        sr._check_newroot(str(tmp_path / "f"))


def test_newroot_is_root() -> None:
    with pytest.raises(SwitchError, match="is the current root /"):
        sr._check_newroot("/")


def test_preflight_checks_pid1_first(tmp_path: Path) -> None:
    with pytest.raises(SwitchError, match="must run as PID 1"):
        sr.preflight(str(tmp_path), "/sbin/init")


# ---------------------------------------------------------------- property: the kernel agrees


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


_SYS_OPENAT2 = 437  # the same number on every architecture
_RESOLVE_IN_ROOT = 0x10
_O_PATH = 0o10000000


def _kernel_resolve_in_root(root: str, path: str) -> str | int:
    """openat2(RESOLVE_IN_ROOT): the kernel's own "resolve as if root were /" (Linux 5.6).
    Returns the host path, or the errno."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    dfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        how = _OpenHow(_O_PATH | os.O_CLOEXEC, 0, _RESOLVE_IN_ROOT)
        fd = libc.syscall(_SYS_OPENAT2, dfd, path.encode(), ctypes.byref(how),
                          ctypes.sizeof(how))
        if fd < 0:
            return ctypes.get_errno()
        try:
            return os.readlink(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
    finally:
        os.close(dfd)


_NAMES = ["a", "b", "c"]
_TARGETS = ["a", "b/c", "../a", "/a", "/b/../c", "..", ".", "/", "c/./a", "../../..", "x"]


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    links=st.lists(st.tuples(st.sampled_from(["", "a", "b", "a/b"]), st.sampled_from(_NAMES),
                             st.sampled_from(_TARGETS)), max_size=6),
    query=st.lists(st.sampled_from([*_NAMES, "..", "."]), min_size=1, max_size=4),
)
@example(links=[("a/b", "c", "/a")], query=["a", "b", "c", "b"])
@example(links=[("a", "c", "../../../b")], query=["a", "c", ".."])
@example(links=[("", "c", "c")], query=["c"])
def test_resolve_in_root_agrees_with_the_kernel(
    tmp_path_factory: pytest.TempPathFactory, links: list[tuple[str, str, str]],
    query: list[str],
) -> None:
    """INIT is found where the new init's kernel would find it after the switch: the kernel's
    openat2(RESOLVE_IN_ROOT) is the oracle. The result never leaves ``root``."""
    root = tmp_path_factory.mktemp("root")
    for d in ("a/b", "b", "c"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for where, name, target in links:
        path = root / where / name if where else root / name
        if path.is_symlink() or not path.parent.is_dir() or path.parent.is_symlink():
            continue
        if path.is_dir():
            if any(path.iterdir()):
                continue
            path.rmdir()
        os.symlink(target, path)
    rel = "/" + "/".join(query)
    kernel = _kernel_resolve_in_root(str(root), rel)
    try:
        ours: str | int = sr.resolve_in_root(str(root), rel)
    except SwitchError as e:
        ours = e.errno or 0
    if isinstance(ours, str):
        assert ours == str(root) or ours.startswith(str(root) + "/")
    if isinstance(kernel, str):
        assert ours == kernel
    elif kernel == errno.ELOOP:
        assert ours == errno.ELOOP
    else:  # ENOENT / ENOTDIR: nothing is there, and resolve_in_root points at nothing
        assert isinstance(ours, str) and not os.path.exists(ours), (kernel, ours)
