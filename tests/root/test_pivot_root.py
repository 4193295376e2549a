"""pivot-root for real in a scratch namespace: the round trip, --umount-old, and every refusal
(our own checks, and the kernel's answer with --raw), each explained in words, exit code errno.
"""

from __future__ import annotations

import errno
import os
from typing import Any

import pytest

from tests.root import nsrun

pytestmark = pytest.mark.root
HERE = "tests.root.test_pivot_root"


def _new_tmpfs(path: str = "/new") -> None:
    from cryptboot import syscalls as sc

    os.makedirs(path, exist_ok=True)
    sc.mount("newroot", path, "tmpfs", 0, "size=16m")
    nsrun.write_text(path + "/marker-new", "new root\n")
    os.makedirs(path + "/old")


def scenario_round_trip() -> int:
    from cryptboot import cli
    from cryptboot import syscalls as sc

    nsrun.write_text("/marker-old", "old root\n")
    _new_tmpfs()
    rc1 = cli.main(["pivot-root", "/new", "/new/old"])
    there = {"rc": rc1, "cwd": os.getcwd(), "new_marker": nsrun.read_text("/marker-new"),
             "old_marker_at_put_old": nsrun.read_text("/old/marker-old"),
             "old_is_mount": sc.is_mount_point("/old"), "proc_at_put_old":
             os.path.exists("/old/proc/self/mountinfo")}
    nsrun.write_text("/old/written-at-put-old", "written while the old root was at /old\n")
    rc2 = cli.main(["pivot-root", "/old", "/old/new"])
    back = {"rc": rc2, "cwd": os.getcwd(), "old_marker": nsrun.read_text("/marker-old"),
            "written": nsrun.read_text("/written-at-put-old"),
            "new_marker_at_new": nsrun.read_text("/new/marker-new"),
            "new_is_mount": sc.is_mount_point("/new"), "root_fs": sc.fs_name(sc.statfs_magic("/"))}
    nsrun.report(kind="round_trip", there=there, back=back)
    return 0


def test_round_trip_keeps_files_written_at_put_old() -> None:
    res = nsrun.run(f"{HERE}:scenario_round_trip")
    assert res.returncode == 0, str(res)
    r = res.one("round_trip")
    assert r["there"] == {"rc": 0, "cwd": "/", "new_marker": "new root\n",
                          "old_marker_at_put_old": "old root\n", "old_is_mount": True,
                          "proc_at_put_old": True}
    assert r["back"] == {"rc": 0, "cwd": "/", "old_marker": "old root\n",
                         "written": "written while the old root was at /old\n",
                         "new_marker_at_new": "new root\n", "new_is_mount": True,
                         "root_fs": "tmpfs"}


def scenario_umount_old() -> int:
    from cryptboot import cli
    from cryptboot import syscalls as sc

    _new_tmpfs()
    rc = cli.main(["pivot-root", "--umount-old", "/new", "/new/old"])
    nsrun.report(kind="umount_old", rc=rc, new_marker=nsrun.read_text("/marker-new"),
                 old_is_mount=sc.is_mount_point("/old"), old_entries=os.listdir("/old"))
    return 0


def test_umount_old_detaches_the_old_root() -> None:
    res = nsrun.run(f"{HERE}:scenario_umount_old")
    assert res.returncode == 0, str(res)
    assert res.one("umount_old") == {"kind": "umount_old", "rc": 0, "new_marker": "new root\n",
                                     "old_is_mount": False, "old_entries": []}


def scenario_refuse(case: str, raw: bool) -> int:
    """Set up ``case`` and run pivot-root (in a child when it must chroot or drop root)."""
    import argparse  # noqa: F401 - imported before a chroot, where /usr is gone

    from cryptboot import cli
    from cryptboot import syscalls as sc
    from cryptboot.switch import cli as _switch_cli  # noqa: F401
    from cryptboot.switch import pivot_root  # noqa: F401

    new, old = "/new", "/new/old"
    if case == "busy":
        new, old = "/", "/old"
        os.makedirs("/old")
    elif case == "not_mountpoint":
        # a plain directory of another mount (a plain directory of / would be EBUSY)
        os.makedirs("/data")
        sc.mount("data", "/data", "tmpfs", 0, "size=1m")
        os.makedirs("/data/new/old")
        new, old = "/data/new", "/data/new/old"
    elif case == "put_old_outside":
        _new_tmpfs()
        os.makedirs("/elsewhere")
        sc.mount("elsewhere", "/elsewhere", "tmpfs", 0, "size=1m")
        old = "/elsewhere"
    elif case == "put_old_on_root":
        _new_tmpfs()
        os.makedirs("/elsewhere")
        old = "/elsewhere"
    elif case == "chroot":
        os.makedirs("/jail")
        _new_tmpfs("/jail/new")
    elif case == "shared":
        _new_tmpfs()
        sc.mount(None, "/", None, sc.MS_SHARED)
    else:
        _new_tmpfs()
    argv = ["pivot-root", *(["--raw"] if raw else []), new, old]
    before = nsrun.mount_points()
    if case in ("chroot", "not_root"):
        pid = os.fork()
        if pid == 0:
            if case == "chroot":
                os.chroot("/jail")
                os.chdir("/")
            else:
                os.setgid(65534)
                os.setuid(65534)
            os._exit(cli.main(argv))
        rc = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    else:
        rc = cli.main(argv)
    nsrun.report(kind="refused", rc=rc, unchanged=nsrun.mount_points() == before,
                 marker=nsrun.read_text("/new/marker-new"))
    return 0


CASES: dict[str, tuple[int, str, str]] = {
    # case: (errno, our message, the explanation of the kernel's own refusal (--raw))
    "busy": (errno.EBUSY, "NEW_ROOT / is the current root /",
             "EBUSY: NEW_ROOT / is the current root; PUT_OLD /old is on the current root "
             "filesystem"),
    "not_mountpoint": (errno.EINVAL, "NEW_ROOT /data/new (/data/new) is not a mount point",
                       "EINVAL: /data/new is not a mount point"),
    "put_old_on_root": (errno.EINVAL, "PUT_OLD /elsewhere (/elsewhere) is not at or under "
                        "NEW_ROOT /new", "EBUSY: PUT_OLD /elsewhere is on the current root "
                        "filesystem"),
    "put_old_outside": (errno.EINVAL, "PUT_OLD /elsewhere (/elsewhere) is not at or under "
                        "NEW_ROOT /new", "EINVAL: /elsewhere is not at or under /new"),
    "shared": (errno.EINVAL, "shared mount propagation: the parent mount of /new (/, shared:",
               "EINVAL: shared mount propagation: the parent mount of /new (/, shared:"),
    "chroot": (errno.EPERM, "this process is inside a chroot",
               "EINVAL: the current root is not a mount point: this process is inside a "
               "chroot"),
    "not_root": (errno.EPERM, "EPERM: pivot_root needs CAP_SYS_ADMIN (run it as root)",
                 "EPERM: pivot_root needs CAP_SYS_ADMIN (run it as root)"),
}


@pytest.mark.parametrize("raw", [False, True], ids=["checked", "raw"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_refusal_is_explained_and_exit_code_is_errno(case: str, raw: bool) -> None:
    err, ours, kernels = CASES[case]
    if raw and case == "chroot":
        err = errno.EINVAL  # what Linux itself says; our check answers EPERM like NetBSD
    if raw and case == "put_old_on_root":
        err = errno.EBUSY  # the kernel tests "on the root mount" before "under NEW_ROOT"
    res = nsrun.run(f"{HERE}:scenario_refuse", {"case": case, "raw": raw})
    assert res.returncode == 0, str(res)
    r: dict[str, Any] = res.one("refused")
    assert r["rc"] == err, (r, res.stderr)
    assert r["unchanged"], r
    assert r["marker"] == (None if case in ("busy", "not_mountpoint", "chroot")
                           else "new root\n")
    assert (kernels if raw else ours) in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
