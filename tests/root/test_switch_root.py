"""switch-root for real: PID 1 of a fresh namespace on a scratch tmpfs switches to a new root.

Each test runs a scenario function of this module as PID 1 inside
``unshare --mount --pid --fork`` (see nsrun.py); the scenario reports through an inherited pipe.
The new init is an executable inside the new root that runs :func:`check_new_init`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.root import nsrun

pytestmark = pytest.mark.root
HERE = "tests.root.test_switch_root"
API = ("/dev", "/proc", "/sys", "/run")


# ---------------------------------------------------------------- fixtures (outside)


# ---------------------------------------------------------------- scenarios (inside, PID 1)


def _build_old_root(precious_dev: str | None) -> dict[str, Any]:
    """Junk to free on the old root; a filesystem mounted under it, a bind mount, and symlinks
    pointing out of it, which must all survive."""
    from cryptboot import syscalls as sc

    info: dict[str, Any] = {}
    info["junk_files"] = nsrun.make_tree("/junk", dirs=40, files_per_dir=25, size=20000)
    deep = "/junk/" + "/".join(f"deep{i}" for i in range(120))
    os.makedirs(deep)
    with open(deep + "/bottom", "w") as f:
        f.write("deep\n")
    os.makedirs("/precious")
    if precious_dev:
        sc.mount(precious_dev, "/precious", "ext4", 0)
    else:
        sc.mount("precious", "/precious", "tmpfs", 0, "size=64m")
    nsrun.make_tree("/precious/data", dirs=6, files_per_dir=10, size=3000)
    os.makedirs("/bound")
    sc.mount("/precious/data/d0-0", "/bound", None, sc.MS_BIND)
    os.symlink("/precious/data", "/junk/link-to-precious")
    os.symlink("../precious", "/junk/relative-link-to-precious")
    os.symlink("/newroot/keep", "/junk/link-to-newroot")
    os.symlink("/", "/junk/link-to-root")
    with open("/run/marker", "w") as f:
        f.write("run was moved\n")
    with open("/dev/.marker", "w") as f:
        f.write("dev was moved\n")
    return info


def _build_new_root(newroot_dev: str | None, *, system: bool = True) -> None:
    """Mount the new root (a tmpfs, or ext4 on ``newroot_dev``) with an init in it."""
    from cryptboot import syscalls as sc

    os.makedirs("/newroot", exist_ok=True)
    if newroot_dev:
        sc.mount(newroot_dev, "/newroot", "ext4", 0)
    else:
        sc.mount("newroot", "/newroot", "tmpfs", 0, "size=64m,mode=0755")
    for d in API:
        os.makedirs("/newroot" + d, exist_ok=True)
    if system:
        for d in ("usr", "etc", nsrun.REPO.lstrip("/")):
            os.makedirs(f"/newroot/{d}", exist_ok=True)
        for link in ("bin", "sbin", "lib", "lib64"):
            if os.path.islink("/" + link):
                os.symlink(os.readlink("/" + link), f"/newroot/{link}")
        nsrun.bind_ro("/usr", "/newroot/usr")
        nsrun.bind_ro("/etc", "/newroot/etc")
        nsrun.bind_ro(nsrun.REPO, "/newroot" + nsrun.REPO)
    nsrun.make_tree("/newroot/keep", dirs=3, files_per_dir=5, size=100)
    os.makedirs("/newroot/cbtest", exist_ok=True)
    with open("/newroot/cbtest/init", "w") as f:
        f.write(nsrun.new_init_script())
    os.chmod("/newroot/cbtest/init", 0o755)


def _inheritable_dir_fd(path: str) -> int:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    os.set_inheritable(fd, True)
    return fd


def scenario_switch(newroot_dev: str | None, precious_dev: str | None, force_move: bool,
                    via: str, console: str | None = None, pivot_fails: bool = False) -> int:
    """Build an old root and a new root, then switch (through the API or the CLI).
    ``pivot_fails`` makes pivot_root(2) answer EINVAL, as it does on the initramfs rootfs."""
    if pivot_fails:
        import errno

        from cryptboot import syscalls as sc

        def refuse(new_root: str, put_old: str) -> None:
            raise OSError(errno.EINVAL, "Invalid argument (simulated rootfs)")

        sc.pivot_root = refuse
    info = _build_old_root(precious_dev)
    _build_new_root(newroot_dev)
    # INIT given as a symlink that only resolves inside the new root
    os.symlink("/cbtest/init", "/newroot/cbtest/init-link")
    old_fd = _inheritable_dir_fd("/")
    precious_fd = _inheritable_dir_fd("/precious")
    bound_fd = _inheritable_dir_fd("/bound")
    nsrun.report(kind="before", old_used=nsrun.used_bytes(old_fd),
                 precious=nsrun.snapshot("/precious"), bound=nsrun.snapshot("/bound"),
                 keep=nsrun.snapshot("/newroot/keep"), **info)
    cfg = json.dumps({"old_fd": old_fd, "precious_fd": precious_fd, "bound_fd": bound_fd})
    init_args = [f"{HERE}:check_new_init", cfg, "-c", "--not-an-option-of-switch-root"]
    if via == "api":
        from cryptboot import log
        from cryptboot.switch.switch_root import switch_root

        log.configure(debug=True)  # the tests read what the switch says it did
        switch_root("/newroot", "/cbtest/init-link", init_args, console, force_move=force_move)
    argv = [nsrun.PYTHON, "-m", "cryptboot", "switch-root"]
    if console:
        argv += ["-c", console]
    if force_move:
        argv.append("--no-pivot")
    os.execv(nsrun.PYTHON, [*argv, "/newroot", "/cbtest/init-link", *init_args])


def check_new_init(old_fd: int, precious_fd: int, bound_fd: int) -> int:
    """Runs as the new init: look at the new world and report it."""
    from cryptboot import syscalls as sc

    argv_rest = sys.argv[3:]
    t0 = time.monotonic()
    reaped = []
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        reaped.append([pid, os.waitstatus_to_exitcode(status)])
    remaining = []
    for dirpath, dirnames, filenames, _ in os.fwalk(".", dir_fd=old_fd):
        remaining += [os.path.join(dirpath, n) for n in dirnames + filenames]
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        table = [line.split() for line in f]
    root_line = [fields for fields in table if fields[4] == "/"]
    with open(f"/proc/self/fdinfo/{old_fd}", encoding="utf-8") as f:
        old_mnt_id = [int(x.split()[1]) for x in f if x.startswith("mnt_id:")][0]
    nsrun.report(
        kind="init",
        pid=os.getpid(),
        argv_rest=argv_rest,
        root_fs=sc.fs_name(sc.statfs_magic("/")),
        root_mount_fs=root_line[-1][root_line[-1].index("-") + 1] if root_line else None,
        # MS_MOVE put the new root on top of the old one (still its parent); pivot_root
        # detached the old root
        switched_by_move=int(root_line[-1][1]) == old_mnt_id,
        keep=nsrun.snapshot("/keep"),
        junk_visible=os.path.exists("/junk") or os.path.exists("/precious"),
        api={m: [sc.is_mount_point(m), sc.fs_name(sc.statfs_magic(m))] for m in API},
        run_marker=os.path.exists("/run/marker"),
        dev_marker=os.path.exists("/dev/.marker"),
        dev_null=os.path.exists("/dev/null"),
        reaped=reaped,
        waited=time.monotonic() - t0,
        old_used=nsrun.used_bytes(old_fd),
        old_remaining=sorted(remaining),
        precious=nsrun.snapshot_fd(precious_fd),
        bound=nsrun.snapshot_fd(bound_fd),
        stdin_tty=os.isatty(0),
    )
    print("NEW-INIT-STDOUT", flush=True)
    return 0


# ---------------------------------------------------------------- tests (outside)


def _assert_switched(res: nsrun.NsResult, root_fs: str, by_move: bool = False) -> None:
    assert res.returncode == 0, str(res)
    before, init = res.one("before"), res.one("init")
    assert init["pid"] == 1
    assert init["switched_by_move"] is by_move
    assert init["argv_rest"] == ["-c", "--not-an-option-of-switch-root"]
    assert init["root_fs"] == root_fs
    assert init["root_mount_fs"] == ("ext4" if root_fs == "ext2/3/4" else "tmpfs")
    assert init["keep"] == before["keep"] and init["keep"]
    assert not init["junk_visible"]
    assert init["api"] == {"/dev": [True, "tmpfs"], "/proc": [True, "proc"],
                           "/sys": [True, "sysfs"], "/run": [True, "tmpfs"]}, init["api"]
    assert init["run_marker"] and init["dev_marker"] and init["dev_null"]
    # the deletion child was reaped by the new init, and succeeded
    assert len(init["reaped"]) == 1 and init["reaped"][0][1] == 0, init["reaped"]
    # the old root's files are gone and its memory is free ...
    assert before["old_used"] > 20_000_000
    assert init["old_used"] < 1_000_000, (before["old_used"], init["old_used"])
    assert init["old_remaining"] == [], init["old_remaining"]
    # ... while nothing reachable from it on other filesystems was lost
    assert init["precious"] == before["precious"] and len(before["precious"]) > 60
    assert init["bound"] == before["bound"] and len(before["bound"]) == 10


@pytest.mark.parametrize("force_move", [False, True], ids=["pivot", "ms_move"])
@pytest.mark.parametrize("via", ["api", "cli"])
def test_switch_to_tmpfs_keeps_other_filesystems(
    loopdev: tuple[str, Path], force_move: bool, via: str
) -> None:
    """New root on tmpfs; an ext4 mounted under the old root must keep every file."""
    dev, img = loopdev
    res = nsrun.run(f"{HERE}:scenario_switch", {"newroot_dev": None, "precious_dev": dev,
                                                "force_move": force_move, "via": via},
                    devices=[dev])
    _assert_switched(res, "tmpfs", by_move=force_move)
    assert "NEW-INIT-STDOUT" in res.stdout
    if via == "api":
        # /dev /proc /sys /run moved into the new root: nothing tries to detach them below the
        # old one; the ext4 left below the old root is detached (no mount point left to keep)
        assert "not detached" not in res.stderr, res.stderr
        assert ", 0 mount points kept, 0 errors" in res.stderr, res.stderr
    fsck = subprocess.run(["e2fsck", "-fn", str(img)], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr


def test_pivot_refused_falls_back_to_ms_move(loopdev: tuple[str, Path]) -> None:
    """Where the kernel refuses pivot_root (the rootfs before Linux 7.0), MS_MOVE is used."""
    dev, _ = loopdev
    res = nsrun.run(f"{HERE}:scenario_switch", {"newroot_dev": None, "precious_dev": dev,
                                                "force_move": False, "via": "api",
                                                "pivot_fails": True},
                    devices=[dev], env={})
    _assert_switched(res, "tmpfs", by_move=True)


@pytest.mark.parametrize("force_move", [False, True], ids=["pivot", "ms_move"])
def test_switch_to_loop_ext4(loopdev: tuple[str, Path], force_move: bool) -> None:
    """New root on a loop-mounted ext4 image; the tmpfs under the old root survives."""
    dev, img = loopdev
    res = nsrun.run(f"{HERE}:scenario_switch", {"newroot_dev": dev, "precious_dev": None,
                                                "force_move": force_move, "via": "cli"},
                    devices=[dev])
    _assert_switched(res, "ext2/3/4", by_move=force_move)
    listing = subprocess.run(["debugfs", "-R", "ls -p /keep", str(img)], capture_output=True,
                             text=True, check=True).stdout
    assert listing.count("d0-0") == 1


def test_console_option_reopens_stdio_on_the_console(loopdev: tuple[str, Path]) -> None:
    """-c CONSOLE: the new init's stdin/stdout/stderr are the given terminal."""
    master, slave = os.openpty()
    try:
        dev, _ = loopdev
        res = nsrun.run(f"{HERE}:scenario_switch",
                        {"newroot_dev": None, "precious_dev": dev, "force_move": False,
                         "via": "cli", "console": os.ttyname(slave)},
                        devices=[dev, os.ttyname(slave)])
        os.set_blocking(master, False)
        try:
            on_console = os.read(master, 65536).decode(errors="replace")
        except BlockingIOError:
            on_console = ""
    finally:
        os.close(master)
        os.close(slave)
    _assert_switched(res, "tmpfs")
    assert res.one("init")["stdin_tty"] is True
    assert "NEW-INIT-STDOUT" in on_console and "NEW-INIT-STDOUT" not in res.stdout


def scenario_bad_console() -> int:
    _build_new_root(None)
    cfg = json.dumps({"old_fd": _inheritable_dir_fd("/"), "precious_fd": 0, "bound_fd": 0})
    argv = [nsrun.PYTHON, "-m", "cryptboot", "switch-root", "-c/dev/no-such-console",
            "/newroot", "/cbtest/init", f"{HERE}:report_pid", cfg]
    os.execv(nsrun.PYTHON, argv)


def report_pid(**_: Any) -> int:
    nsrun.report(kind="init", pid=os.getpid(), root_fs=_root_fs())
    return 0


def _root_fs() -> str:
    from cryptboot import syscalls as sc

    return sc.fs_name(sc.statfs_magic("/"))


def test_console_that_cannot_be_opened_is_a_warning() -> None:
    res = nsrun.run(f"{HERE}:scenario_bad_console")
    assert res.returncode == 0, str(res)
    assert res.one("init") == {"kind": "init", "pid": 1, "root_fs": "tmpfs"}
    assert "console /dev/no-such-console: cannot open it" in res.stderr


# ---------------------------------------------------------------- refusals


def _old_root_state() -> dict[str, Any]:
    return {"files": nsrun.snapshot("/junk") + nsrun.snapshot("/newroot"),
            "mounts": nsrun.mount_points()}


def scenario_refuse(case: str, dev: str | None = None) -> int:
    """Set up the refused case, run `cryptboot switch-root` in PID 1, report what changed."""
    from cryptboot import cli
    from cryptboot import syscalls as sc

    nsrun.make_tree("/junk", dirs=4, files_per_dir=5, size=1000)
    newroot, init = "/newroot", "/cbtest/init"
    if case == "not_mountpoint":
        os.makedirs("/newroot/cbtest")
        with open("/newroot/cbtest/init", "w") as f:
            f.write("#!/bin/sh\n")
        os.chmod("/newroot/cbtest/init", 0o755)
    elif case == "same_fs":
        os.makedirs("/newroot/cbtest")
        with open("/newroot/cbtest/init", "w") as f:
            f.write("#!/bin/sh\n")
        os.chmod("/newroot/cbtest/init", 0o755)
        sc.mount("/newroot", "/newroot", None, sc.MS_BIND)
    elif case == "is_root":
        _build_new_root(None, system=False)
        newroot = "/"
        init = "/newroot/cbtest/init"
    elif case == "missing_newroot":
        newroot = "/no/such/dir"
    else:
        _build_new_root(None, system=False)
    if case == "init_missing":
        init = "/sbin/init"
    elif case == "init_not_executable":
        os.chmod("/newroot/cbtest/init", 0o644)
    elif case == "init_directory":
        init = "/cbtest"
    elif case == "init_symlink_outside":
        # resolves on the old root (where /oldonly/init is executable) but not in NEWROOT
        os.makedirs("/oldonly")
        with open("/oldonly/init", "w") as f:
            f.write("#!/bin/sh\n")
        os.chmod("/oldonly/init", 0o755)
        os.symlink("/oldonly/init", "/newroot/cbtest/link")
        init = "/cbtest/link"
    elif case == "init_symlink_loop":
        os.symlink("/cbtest/loop", "/newroot/cbtest/loop")
        init = "/cbtest/loop"
    os.makedirs("/newroot", exist_ok=True)
    before = _old_root_state()
    argv = ["switch-root", newroot, init]
    if case == "not_pid1":
        pid = os.fork()
        if pid == 0:
            os._exit(cli.main(argv))
        rc = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    else:
        rc = cli.main(argv)
    nsrun.report(kind="refused", rc=rc, unchanged=_old_root_state() == before,
                 files=len(before["files"]), root_fs=_root_fs(), pid=os.getpid())
    return 0


REFUSALS = {
    "not_pid1": "switch-root must run as PID 1 (the init process); found PID ",
    "not_mountpoint": "NEWROOT /newroot: expected a mount point (the real root mounted there), "
                      "found a plain directory",
    "same_fs": "NEWROOT /newroot is a mount of the same filesystem as /",
    "is_root": "NEWROOT / is the current root /",
    "missing_newroot": "NEWROOT /no/such/dir: expected a directory with the real root mounted "
                       "on it, found: No such file or directory",
    "init_missing": "INIT /sbin/init: expected an executable inside NEWROOT /newroot, "
                    "found nothing",
    "init_not_executable": "INIT /cbtest/init: expected an executable file inside /newroot, "
                           "found mode 0644 (not executable)",
    "init_directory": "INIT /cbtest: expected a regular executable file inside /newroot, "
                      "found a directory",
    "init_symlink_outside": "INIT /cbtest/link: expected an executable inside NEWROOT "
                            "/newroot, found nothing (No such file or directory at "
                            "/newroot/oldonly/init)",
    "init_symlink_loop": "INIT /cbtest/loop: too many levels of symbolic links",
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refusal_changes_nothing(case: str) -> None:
    res = nsrun.run(f"{HERE}:scenario_refuse", {"case": case})
    assert res.returncode == 0, str(res)
    refused = res.one("refused")
    assert refused["rc"] != 0 and refused["pid"] == 1
    assert refused["unchanged"] and refused["files"] > 20, refused
    assert refused["root_fs"] == "tmpfs"
    assert "cryptboot: error: " + REFUSALS[case] in res.stderr, res.stderr
    assert "Traceback" not in res.stderr


def test_refused_when_root_is_not_tmpfs(loopdev: tuple[str, Path]) -> None:
    """The namespace's / is ext4: switch-root must refuse and delete nothing."""
    dev, _ = loopdev
    res = nsrun.run(f"{HERE}:scenario_refuse", {"case": "root_not_tmpfs"}, root=dev)
    assert res.returncode == 0, str(res)
    refused = res.one("refused")
    assert refused["rc"] == 1 and refused["unchanged"] and refused["root_fs"] == "ext2/3/4"
    assert ("cryptboot: error: / is ext2/3/4: expected tmpfs or ramfs (an initramfs)"
            in res.stderr), res.stderr


# ---------------------------------------------------------------- after the point of no return


def scenario_exec_fails(shell: bool) -> int:
    """INIT passes every check but the kernel cannot execute it (ENOEXEC)."""
    _build_new_root(None, system=shell)
    with open("/newroot/cbtest/init", "wb") as f:
        f.write(b"\x7fELF garbage, not a real executable")
    os.execv(nsrun.PYTHON, [nsrun.PYTHON, "-m", "cryptboot", "switch-root", "/newroot",
                            "/cbtest/init"])


def test_exec_failure_starts_emergency_shell() -> None:
    res = nsrun.run(f"{HERE}:scenario_exec_fails", {"shell": True},
                    stdin=b"echo EMERGENCY-SHELL-PID=$$; test -d /cbtest && exit 7\n")
    assert "cannot execute /cbtest/init: Exec format error" in res.stderr, str(res)
    assert "starting the emergency shell /bin/sh" in res.stderr
    # the shell runs as PID 1 in the new root
    assert "EMERGENCY-SHELL-PID=1" in res.stdout and res.returncode == 7, str(res)


def test_exec_failure_without_shell_hangs_instead_of_exiting() -> None:
    t0 = time.monotonic()
    res = nsrun.run(f"{HERE}:scenario_exec_fails", {"shell": False}, timeout=15)
    assert res.timed_out, str(res)  # PID 1 never exited on its own
    assert time.monotonic() - t0 >= 15
    assert ("cannot execute /cbtest/init: Exec format error; no emergency shell in the new "
            "root (halted: PID 1 cannot exit)") in res.stderr, str(res)


# ---------------------------------------------------------------- the deleter's guards


def scenario_rmtree_guards(dev: str) -> int:
    """remove_contents() on a tree with mounts still attached (no detach first): a tmpfs
    submount, an ext4 submount, a bind mount of the same tmpfs from outside the tree, and
    symlinks out of it must all keep their files; an ext4 tree is refused outright."""
    from cryptboot import syscalls as sc
    from cryptboot.switch import rmtree

    os.makedirs("/x")
    sc.mount("x", "/x", "tmpfs", 0, "size=64m")
    nsrun.make_tree("/x/outside", dirs=3, files_per_dir=4, size=100)
    n = nsrun.make_tree("/x/tree", dirs=10, files_per_dir=10, size=500)
    os.makedirs("/x/tree/samefs-bind")
    sc.mount("/x/outside", "/x/tree/samefs-bind", None, sc.MS_BIND)
    os.makedirs("/x/tree/d1-0/othertmpfs")
    sc.mount("o", "/x/tree/d1-0/othertmpfs", "tmpfs", 0, "size=8m")
    nsrun.make_tree("/x/tree/d1-0/othertmpfs", dirs=2, files_per_dir=3, size=100)
    os.makedirs("/x/tree/ext4")
    sc.mount(dev, "/x/tree/ext4", "ext4", 0)
    nsrun.make_tree("/x/tree/ext4/data", dirs=2, files_per_dir=3, size=100)
    os.symlink("/x/outside", "/x/tree/abs-link")
    os.symlink("../outside", "/x/tree/rel-link")
    os.symlink("/", "/x/tree/root-link")
    keep = {p: nsrun.snapshot(p) for p in
            ("/x/outside", "/x/tree/d1-0/othertmpfs", "/x/tree/ext4")}
    ext4_before = nsrun.snapshot("/x/tree/ext4")
    fd = os.open("/x/tree/ext4", os.O_RDONLY | os.O_DIRECTORY)
    try:
        rmtree.remove_contents(fd)
        refused = False
    except rmtree.NotRamFs as e:
        refused = str(e) == "the old root is ext2/3/4, not tmpfs/ramfs"
    os.close(fd)
    ext4_kept = nsrun.snapshot("/x/tree/ext4") == ext4_before
    fd = os.open("/x/tree", os.O_RDONLY | os.O_DIRECTORY)
    counts = rmtree.remove_contents(fd)
    os.close(fd)
    left = sorted(os.listdir("/x/tree"))
    nsrun.report(kind="guards", made=n, files=counts.files, skipped=counts.skipped,
                 refused=refused, ext4_kept=ext4_kept, left=left,
                 kept=all(nsrun.snapshot(p) == s for p, s in keep.items()),
                 sizes={p: len(s) for p, s in keep.items()})
    return 0


def test_deleter_never_crosses_mounts_or_symlinks(loopdev: tuple[str, Path]) -> None:
    dev, _ = loopdev
    res = nsrun.run(f"{HERE}:scenario_rmtree_guards", {"dev": dev}, devices=[dev])
    assert res.returncode == 0, str(res)
    g = res.one("guards")
    assert g["refused"] and g["ext4_kept"], g
    assert g["kept"] and all(n > 5 for n in g["sizes"].values()), g
    # 100 files + 3 symlinks deleted; the 3 mount points (and their parents) stay
    assert g["files"] == g["made"] + 3 and g["skipped"] == 3, g
    assert g["left"] == ["d1-0", "ext4", "samefs-bind"], g
