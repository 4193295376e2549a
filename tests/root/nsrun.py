"""Run a test scenario as PID 1 of a fresh mount + PID namespace whose root is a scratch tmpfs
(or a loop-mounted ext4), so switch_root / pivot_root / deletions run for real and can never
touch the host.

Outside (pytest): :func:`run` starts ``unshare --mount --pid --fork --kill-child
--propagation private python nsrun.py SPEC``. Inside, :func:`_inner` (PID 1) makes ``/``
private, mounts the scratch root, binds ``/usr``, ``/etc`` and the repository (with its venv)
read-only into it, gives it its own ``/dev`` (tmpfs + a few nodes), ``/proc``, ``/sys`` and
``/run``, pivots into it and detaches the host's root, then calls the scenario function
``module:function(**args)``. Its return value is PID 1's exit status.

Results travel through an inherited pipe (``report()`` writes JSON lines to it): after a
switch the old root is unreachable, and when PID 1 exits the namespace is gone.
"""

from __future__ import annotations

import importlib
import json
import os
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = str(Path(__file__).resolve().parents[2])
PYTHON = os.path.join(REPO, ".venv", "bin", "python")
if not os.path.exists(PYTHON):
    PYTHON = sys.executable
_REPORT_ENV = "CRYPTBOOT_TEST_REPORT_FD"


@dataclass
class NsResult:
    """What came out of a namespace run."""

    returncode: int
    stdout: str
    stderr: str
    reports: list[dict[str, Any]] = field(default_factory=list)
    timed_out: bool = False

    def one(self, kind: str) -> dict[str, Any]:
        """The single report whose ``kind`` is ``kind`` (fails with the transcript if none)."""
        found = [r for r in self.reports if r.get("kind") == kind]
        assert len(found) == 1, f"expected one {kind!r} report, got {self.reports}\n{self}"
        return found[0]

    def __str__(self) -> str:
        return (f"exit status {self.returncode}{' (timed out)' if self.timed_out else ''}\n"
                f"--- stdout\n{self.stdout}--- stderr\n{self.stderr}--- reports\n"
                + "\n".join(json.dumps(r) for r in self.reports))


def run(target: str, args: dict[str, Any] | None = None, *, root: str = "tmpfs",
        devices: Sequence[str] = (), stdin: bytes = b"", timeout: float = 120,
        env: dict[str, str] | None = None) -> NsResult:
    """Run ``target`` ("module:function") as PID 1 in a scratch namespace.

    ``root`` is "tmpfs" or the path of a block device holding ext4 (the scratch root);
    ``devices`` are host device nodes recreated inside (e.g. a loop device).
    """
    scratch = tempfile.mkdtemp(prefix="cryptboot-ns-")
    r, w = os.pipe()
    spec = {"scratch": scratch, "report_fd": w, "target": target, "args": args or {},
            "root": root, "devices": list(devices)}
    cmd = ["unshare", "--mount", "--pid", "--fork", "--kill-child", "--propagation",
           "private", PYTHON, os.path.abspath(__file__), json.dumps(spec)]
    full_env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "LC_ALL": "C", "PYTHONDONTWRITEBYTECODE": "1", **(env or {})}
    chunks: list[bytes] = []

    def drain() -> None:
        with os.fdopen(r, "rb") as f:
            while data := f.read(65536):
                chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, pass_fds=(w,), cwd="/", env=full_env)
    finally:
        os.close(w)
    reader.start()
    timed_out = False
    try:
        out, err = proc.communicate(stdin, timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        proc.kill()  # unshare --kill-child: PID 1 of the namespace dies, and with it all
        out, err = proc.communicate()
    reader.join(timeout=30)
    try:
        os.rmdir(scratch)
    except OSError:
        pass
    reports = [json.loads(line) for line in b"".join(chunks).decode().splitlines() if line]
    return NsResult(proc.returncode, out.decode(errors="replace"),
                    err.decode(errors="replace"), reports, timed_out)


# ---------------------------------------------------------------- inside the namespace


def report(**fields: Any) -> None:
    """Send one JSON line to the test outside (through the inherited pipe)."""
    fd = int(os.environ[_REPORT_ENV])
    os.write(fd, (json.dumps(fields) + "\n").encode())


def report_fd() -> int:
    return int(os.environ[_REPORT_ENV])


def write_text(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def read_text(path: str) -> str | None:
    """The file's text, None when it cannot be read (gone, or not there)."""
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def bind_ro(src: str, dst: str) -> None:
    from cryptboot import syscalls as sc

    sc.mount(src, dst, None, sc.MS_BIND | sc.MS_REC)
    sc.mount(None, dst, None, sc.MS_BIND | sc.MS_REMOUNT | sc.MS_RDONLY)


def make_dev(top: str, extra: Sequence[str] = ()) -> None:
    """A tmpfs on ``top``/dev with the usual nodes (and ``extra`` host nodes copied)."""
    from cryptboot import syscalls as sc

    os.makedirs(top + "/dev", exist_ok=True)
    sc.mount("testdev", top + "/dev", "tmpfs", sc.MS_NOSUID, "mode=0755,size=1m")
    for name, major, minor in (("null", 1, 3), ("zero", 1, 5), ("full", 1, 7),
                               ("random", 1, 8), ("urandom", 1, 9), ("tty", 5, 0)):
        os.mknod(f"{top}/dev/{name}", stat.S_IFCHR | 0o666, os.makedev(major, minor))
    for path in extra:  # bind the host's node: a pty slave cannot be opened through mknod
        os.makedirs(os.path.dirname(top + path), exist_ok=True)
        with open(top + path, "w"):
            pass
        sc.mount(path, top + path, None, sc.MS_BIND)


def populate_system(top: str, *, usr: bool = True, devices: Sequence[str] = ()) -> None:
    """Make ``top`` a small system root: /usr, /etc and the repo read-only from the host,
    the usual symlinks, and fresh /dev, /proc, /sys, /run, /tmp."""
    from cryptboot import syscalls as sc

    for d in ("proc", "sys", "run", "tmp"):
        os.makedirs(f"{top}/{d}", exist_ok=True)
    if usr:
        for d in ("usr", "etc", REPO.lstrip("/")):
            os.makedirs(f"{top}/{d}", exist_ok=True)
        for link in ("bin", "sbin", "lib", "lib64"):
            if os.path.islink("/" + link) and not os.path.lexists(f"{top}/{link}"):
                os.symlink(os.readlink("/" + link), f"{top}/{link}")
        bind_ro("/usr", top + "/usr")
        bind_ro("/etc", top + "/etc")
        bind_ro(REPO, top + REPO)
    make_dev(top, devices)
    sc.mount("proc", top + "/proc", "proc", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC)
    sc.mount("sysfs", top + "/sys", "sysfs", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC)
    sc.mount("testrun", top + "/run", "tmpfs", sc.MS_NOSUID | sc.MS_NODEV, "mode=0755")


def _inner(spec: dict[str, Any]) -> int:
    from cryptboot import syscalls as sc

    if os.getpid() != 1:
        raise SystemExit(f"nsrun: expected to be PID 1 of a new PID namespace, am {os.getpid()}")
    os.environ[_REPORT_ENV] = str(spec["report_fd"])
    sc.make_private("/")
    top = spec["scratch"]
    if spec["root"] == "tmpfs":
        sc.mount("testroot", top, "tmpfs", 0, "mode=0755,size=2g")
    else:
        sc.mount(spec["root"], top, "ext4", 0)
    populate_system(top, devices=spec["devices"])
    token = os.urandom(8).hex()
    with open(f"{top}/.cryptboot-scratch", "w") as f:
        f.write(token)
    os.chdir(top)
    sc.pivot_root(".", ".")
    sc.umount2(".", sc.MNT_DETACH)
    os.chdir("/")
    # safety: never run a scenario (which switches and deletes) unless / is the scratch root
    with open("/.cryptboot-scratch") as f:
        if f.read() != token:
            raise SystemExit("nsrun: / is not the scratch root after pivot_root; refusing")
    module, func = spec["target"].split(":")
    fn = getattr(importlib.import_module(module), func)
    rc: int = fn(**spec["args"])
    return rc


def new_init_script() -> str:
    """The text of an executable that runs :func:`tests.root.inits` code as the new init:
    ``INIT CHECK-NAME JSON`` calls ``tests.root.nsrun.INITS[CHECK-NAME](json)``."""
    return (f"#!{PYTHON}\n"
            "import sys\n"
            f"sys.path.insert(0, {REPO!r})\n"
            "from tests.root.nsrun import init_main\n"
            "sys.exit(init_main(sys.argv[1:]))\n")


def init_main(argv: list[str]) -> int:
    """Entry of the new init: ``MODULE:FUNCTION JSON-ARGS``."""
    module, func = argv[0].split(":")
    fn = getattr(importlib.import_module(module), func)
    rc: int = fn(**json.loads(argv[1]))
    return rc


def main() -> None:
    spec = json.loads(sys.argv[1])
    sys.path.insert(0, REPO)
    try:
        rc = _inner(spec)
    except BaseException as e:
        import traceback

        traceback.print_exc()
        sys.stderr.flush()
        rc = 99 if not isinstance(e, SystemExit) else 98
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)


if __name__ == "__main__":
    main()


# ---------------------------------------------------------------- helpers for scenarios


def make_tree(top: str, *, dirs: int, files_per_dir: int, size: int, depth: int = 3) -> int:
    """Fill ``top`` with ``dirs`` directories nested ``depth`` deep, each holding
    ``files_per_dir`` files of ``size`` bytes (distinct contents). Returns the file count."""
    n = 0
    for d in range(dirs):
        path = os.path.join(top, *(f"d{d}-{level}" for level in range(d % depth + 1)))
        os.makedirs(path, exist_ok=True)
        for i in range(files_per_dir):
            with open(os.path.join(path, f"f{i}"), "wb") as f:
                head = f"{path}/{i}\n".encode()
                f.write(head + b"x" * max(0, size - len(head)))
            n += 1
    return n


def snapshot_fd(dir_fd: int) -> list[list[Any]]:
    """Every entry below ``dir_fd`` as [path, type, size, sha256 of content or link target],
    walking with fds (works when the tree is reachable by no path)."""
    import hashlib

    out: list[list[Any]] = []
    for dirpath, dirnames, filenames, dfd in os.fwalk(".", dir_fd=dir_fd):
        for name in sorted(dirnames + filenames):
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            rel = os.path.normpath(os.path.join(dirpath, name))
            if stat.S_ISLNK(st.st_mode):
                out.append([rel, "l", 0, os.readlink(name, dir_fd=dfd)])
            elif stat.S_ISREG(st.st_mode):
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dfd)
                with os.fdopen(fd, "rb") as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
                out.append([rel, "f", st.st_size, digest])
            elif stat.S_ISDIR(st.st_mode):
                out.append([rel, "d", 0, ""])
            else:
                out.append([rel, "o", 0, ""])
    return sorted(out)


def snapshot(path: str) -> list[list[Any]]:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return snapshot_fd(fd)
    finally:
        os.close(fd)


def used_bytes(fd: int) -> int:
    sv = os.fstatvfs(fd)
    return (sv.f_blocks - sv.f_bfree) * sv.f_frsize


def mount_points() -> list[str]:
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        return sorted(line.split()[4] for line in f)
