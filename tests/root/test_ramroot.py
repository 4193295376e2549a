"""ramroot for real: a namespace whose root is a loop-mounted ext4 pivots into a RAM copy of
itself, the old root is changed while at put-old, and ``ramroot --return`` comes back to it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.root import nsrun

pytestmark = pytest.mark.root
HERE = "tests.root.test_ramroot"


def scenario_round_trip() -> int:
    from cryptboot import cli
    from cryptboot import syscalls as sc

    nsrun.write_text("/marker-disk", "on disk\n")
    nsrun.make_tree("/srv/data", dirs=5, files_per_dir=4, size=200)
    os.symlink("srv/data", "/data-link")
    os.link("/marker-disk", "/marker-hardlink")
    tree_before = nsrun.snapshot("/srv")
    with open("/marker-disk") as held:
        holder = subprocess.Popen(["sleep", "600"], stdin=held, cwd="/srv")
    rc1 = cli.main(["ramroot"])
    there = {
        "rc": rc1, "root_fs": sc.fs_name(sc.statfs_magic("/")),
        "copy": nsrun.read_text("/marker-disk"), "old": nsrun.read_text("/oldroot/marker-disk"),
        "tree_copied": nsrun.snapshot("/srv") == tree_before,
        "symlink": os.readlink("/data-link"),
        "hardlink": os.stat("/marker-disk").st_ino == os.stat("/marker-hardlink").st_ino,
        "api_moved": all(sc.is_mount_point(m) and not sc.is_mount_point("/oldroot" + m)
                         for m in ("/dev", "/proc", "/sys", "/run")),
        "old_is_mount": sc.is_mount_point("/oldroot"),
    }
    # the "upgrade": change the old root while it is at put-old, and the RAM copy
    nsrun.write_text("/oldroot/upgraded", "written at put-old\n")
    nsrun.write_text("/in-ram-only", "lost on return\n")
    rc2 = cli.main(["ramroot", "--return"])
    back = {
        "rc": rc2, "root_fs": sc.fs_name(sc.statfs_magic("/")),
        "upgraded": nsrun.read_text("/upgraded"), "in_ram": nsrun.read_text("/in-ram-only"),
        "state_file": os.path.exists("/.cryptboot-ramroot"),
        "api_back": all(sc.is_mount_point(m) for m in ("/dev", "/proc", "/sys", "/run")),
        "ram_copy_mounted": any(p.startswith("/run/cryptboot") for p in nsrun.mount_points()),
        "tree": nsrun.snapshot("/srv") == tree_before,
    }
    holder.kill()
    holder.wait()
    nsrun.report(kind="ramroot", there=there, back=back, holder=holder.pid)
    return 0


def test_ramroot_round_trip(loopdev: tuple[str, Path]) -> None:
    dev, img = loopdev
    res = nsrun.run(f"{HERE}:scenario_round_trip", root=dev)
    assert res.returncode == 0, str(res)
    r = res.one("ramroot")
    assert r["there"] == {"rc": 0, "root_fs": "tmpfs", "copy": "on disk\n", "old": "on disk\n",
                          "tree_copied": True, "symlink": "srv/data", "hardlink": True,
                          "api_moved": True, "old_is_mount": True}, res.stderr
    assert r["back"] == {"rc": 0, "root_fs": "ext2/3/4", "upgraded": "written at put-old\n",
                         "in_ram": None, "state_file": False, "api_back": True,
                         "ram_copy_mounted": False, "tree": True}, res.stderr
    # the process holding a file on the old root was named, to be restarted
    assert "processes still using the old root at /oldroot (restart them):" in res.stdout
    assert f"{r['holder']} sleep: " in res.stdout and "fd 0 (/oldroot/marker-disk)" in res.stdout
    # what was written at put-old is on the disk itself
    out = subprocess.run(["debugfs", "-R", "cat /upgraded", str(img)], capture_output=True,
                         text=True, check=True).stdout
    assert out == "written at put-old\n"


def scenario_refusals() -> int:
    from cryptboot import cli

    rc_return = cli.main(["ramroot", "--return"])
    rc_src = cli.main(["ramroot", "--source", "/no/such/tree"])
    nsrun.report(kind="refusals", rc_return=rc_return, rc_src=rc_src,
                 mounts=[p for p in nsrun.mount_points() if "cryptboot" in p])
    return 0


def test_ramroot_refusals() -> None:
    res = nsrun.run(f"{HERE}:scenario_refusals")
    assert res.returncode == 0, str(res)
    assert res.one("refusals") == {"kind": "refusals", "rc_return": 1, "rc_src": 1,
                                   "mounts": []}
    assert ("cryptboot: error: not running from a ramroot: /.cryptboot-ramroot not found"
            in res.stderr)
    assert ("cryptboot: error: --source /no/such/tree: expected a directory to copy"
            in res.stderr)


def scenario_release_refused() -> int:
    from cryptboot import cli

    nsrun.write_text("/var-log", "")
    with open("/var-log", "a") as log_file:
        writer = subprocess.Popen(["sleep", "600"], stdout=log_file)
    rc1 = cli.main(["ramroot"])
    before = nsrun.mount_points()
    rc2 = cli.main(["ramroot", "--release"])
    after = nsrun.mount_points()
    writer.kill()
    writer.wait()
    rc3 = cli.main(["ramroot", "--return"])
    nsrun.report(kind="release", rc=[rc1, rc2, rc3], writer=writer.pid,
                 unchanged=before == after and "/oldroot" in after,
                 state=os.path.exists("/.cryptboot-ramroot"))
    return 0


def test_ramroot_release_refused_while_a_writer_holds_the_old_root(
        loopdev: tuple[str, Path]) -> None:
    """``--release`` names the process writing to the old root and changes nothing."""
    dev, _img = loopdev
    res = nsrun.run(f"{HERE}:scenario_release_refused", root=dev)
    assert res.returncode == 0, str(res)
    r = res.one("release")
    assert r["rc"] == [0, 1, 0], res.stderr
    assert r["unchanged"] is True and r["state"] is False, res.stderr
    assert "cryptboot: error: cannot release the old root at /oldroot: still held by " \
        in res.stderr
    assert f"{r['writer']} sleep: exe, fd 1 (/oldroot/var-log, open for writing)" in res.stderr


def scenario_nextroot(dev: str) -> int:
    from cryptboot import cli
    from cryptboot import syscalls as sc

    nsrun.write_text("/marker-disk", "on disk\n")
    rc1 = cli.main(["ramroot"])
    for bound in ("/usr", nsrun.REPO):  # host binds, not copied: bind them into the RAM copy
        os.makedirs(bound, exist_ok=True)
        sc.mount("/oldroot" + bound, bound, None, sc.MS_BIND)
    rc2 = cli.main(["ramroot", "--return", "--nextroot", "--device", dev])
    there = {"root_fs": sc.fs_name(sc.statfs_magic("/")),
             "nextroot": nsrun.read_text("/run/nextroot/marker-disk"),
             "nextroot_fs": sc.fs_name(sc.statfs_magic("/run/nextroot"))}
    rc3 = cli.main(["ramroot", "--return", "--nextroot", "--device", dev])
    sc.umount2("/run/nextroot")
    rc4 = cli.main(["ramroot", "--return"])
    nsrun.report(kind="nextroot", rc=[rc1, rc2, rc3, rc4], there=there,
                 back=sc.fs_name(sc.statfs_magic("/")))
    return 0


def test_ramroot_prepares_nextroot_for_soft_reboot(loopdev: tuple[str, Path]) -> None:
    """``--return --nextroot`` mounts the root at /run/nextroot and stays in RAM; a second one
    is refused (already a mount point); ``--return`` still pivots back."""
    dev, _img = loopdev
    res = nsrun.run(f"{HERE}:scenario_nextroot", {"dev": dev}, root=dev, devices=[dev])
    assert res.returncode == 0, str(res)
    r = res.one("nextroot")
    assert r["rc"] == [0, 0, 1, 0], res.stderr
    assert r["there"] == {"root_fs": "tmpfs", "nextroot": "on disk\n",
                          "nextroot_fs": "ext2/3/4"}, res.stderr
    assert r["back"] == "ext2/3/4", res.stderr
    assert "/run/nextroot is ready: `systemctl soft-reboot` switches into it" in res.stdout
    assert "cryptboot: error: /run/nextroot is already a mount point" in res.stderr
