"""Load the image's kernel modules with finit_module(2): no modprobe process per module.

The image lists the modules to load in ``/etc/cryptboot/modules``; their files and their
dependencies are in the image's ``modules.dep``. Each module is loaded after its dependencies,
with the parameters the kernel command line gives it (``virtio_blk.queue_depth=64``, as
modprobe would pass them), unless ``modprobe.blacklist=`` or ``rd.driver.blacklist=`` names it.

Why not ``modprobe -a``: under emulation every process start costs tens of milliseconds, and
while a cipher module initialises the kernel asks user space for a dozen more modules
(``crypto-cryptd(__xts-aes-aesni)`` and the like, all answered "no such module") by starting
``/sbin/modprobe`` for each. Every module of the image is loaded here, so there is nothing
such a request could find in the image: the kernel's requests are switched off
(``/proc/sys/kernel/modprobe`` emptied) while loading, and the old setting is put back after.

Modules are split in two groups: first everything that is not device-mapper or crypto (storage
drivers: the disk must appear), then device-mapper and the ciphers, which only cryptsetup needs
and which can load while the passphrase prompt waits.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterable, Sequence

from cryptboot.paths import module_name as norm

MODULES_ROOT = "/lib/modules"
KERNEL_MODPROBE = "/proc/sys/kernel/modprobe"
# finit_module(2) by architecture (os.uname().machine); elsewhere modprobe is started instead
FINIT_MODULE_NR = {"x86_64": 313, "aarch64": 273, "riscv64": 273, "i686": 350, "i386": 350,
                   "armv7l": 379, "ppc64le": 353, "s390x": 344}
LATE_DIRS = ("kernel/drivers/md/", "kernel/crypto/", "kernel/arch/")  # arch/*/crypto
# In drivers/md only device-mapper is late: md RAID (md-mod, raid1, ...) must assemble an array
# before the LUKS volume on it can appear (issue 12); and what an early module needs is early.
MD_LATE_PREFIXES = ("dm-", "dm_", "persistent-data/", "dm-vdo/")


def read_list(path: str) -> list[str]:
    """Module names, one per line (``#`` comments, blank lines ignored)."""
    with open(path) as f:
        return [w for line in f for w in [line.split("#", 1)[0].strip()] if w]


class ModuleIndex:
    """The image's ``modules.dep``: each module's file and its dependencies."""

    def __init__(self, kdir: str) -> None:
        self.kdir = kdir
        self.path: dict[str, str] = {}
        self.deps: dict[str, list[str]] = {}
        self._early: tuple[tuple[str, ...], set[str]] | None = None
        with open(os.path.join(kdir, "modules.dep")) as f:
            for line in f:
                rel, sep, rest = line.partition(":")
                if not sep:
                    continue
                name = self.name_of(rel)
                self.path[name] = rel
                self.deps[name] = [self.name_of(d) for d in rest.split()]

    @staticmethod
    def name_of(rel: str) -> str:
        base = os.path.basename(rel)
        return norm(base[:base.index(".ko")] if ".ko" in base else base)

    def order(self, names: Iterable[str], skip: Iterable[str] = ()) -> list[str]:
        """``names`` and their dependencies, each after what it depends on; unknown names are
        kept (the loader reports them). A name in ``skip`` is left out with what only it needs
        (a blacklisted module, as ``modprobe -b`` does)."""
        out: list[str] = []
        seen: set[str] = set(skip)

        def visit(n: str) -> None:
            if n in seen:
                return
            seen.add(n)
            # modules.dep lists the whole closure, deepest last: load from the end
            for d in reversed(self.deps.get(n, [])):
                visit(d)
            out.append(n)

        for n in names:
            visit(norm(n))
        return out

    def is_late(self, name: str, early: Iterable[str] = ()) -> bool:
        """Whether ``name`` loads in the late group: device-mapper and the ciphers, unless an
        early module needs it or it is in ``early`` (dm-mod when LVM must activate first)."""
        if self._early is None or self._early[0] != tuple(early):
            forced = tuple(early)
            roots = [n for n in self.path if not self._late_by_path(n)] + [norm(n) for n in forced]
            self._early = (forced, set(self.order(roots)))
        return name not in self._early[1] and self._late_by_path(name)

    def _late_by_path(self, name: str) -> bool:
        rel = self.path.get(name, "")
        if rel.startswith("kernel/drivers/md/"):
            return rel[len("kernel/drivers/md/"):].startswith(MD_LATE_PREFIXES)
        return rel.startswith(LATE_DIRS)


def params_for(name: str, params: Sequence[tuple[str, str]]) -> str:
    """The parameter string for ``name`` from ``(module, "param=value")`` pairs."""
    return " ".join(p for m, p in params if norm(m) == name)


class Loader:
    """Loads modules, collecting what happened; :meth:`summary` says it in one line."""

    def __init__(self, kdir: str, *, params: Sequence[tuple[str, str]] = (),
                 blacklist: Iterable[str] = (),
                 spawn_modprobe: Callable[[str], str | None] | None = None) -> None:
        self.index = ModuleIndex(kdir)
        self.params = params
        self.blacklist = {norm(b) for b in blacklist}
        self.loaded: list[str] = []
        self.present: list[str] = []
        self.skipped: list[str] = []
        self.failed: list[tuple[str, str]] = []
        self._done: set[str] = set()
        self._modprobe = spawn_modprobe or _run_modprobe
        self._finit = _finit_module()

    def load(self, names: Iterable[str]) -> None:
        names = [norm(n) for n in names]
        for name in names:
            if name in self.blacklist and name not in self.skipped:
                self.skipped.append(name)
        for name in self.index.order(names, skip=self.blacklist):
            if name in self._done:
                continue
            self._done.add(name)
            rel = self.index.path.get(name)
            if rel is None:
                if os.path.isdir(f"/sys/module/{name}"):
                    self.present.append(name)  # built in, or loaded before
                else:
                    self.failed.append((name, f"not in {self.index.kdir}/modules.dep"))
                continue
            self._load_one(name, rel)

    def _load_one(self, name: str, rel: str) -> None:
        path = os.path.join(self.index.kdir, rel)
        if self._finit is None or not rel.endswith(".ko"):
            err = self._modprobe(name)  # compressed module, or an architecture not listed
            if err:
                self.failed.append((name, err))
            else:
                self.loaded.append(name)
            return
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            self.failed.append((name, f"{path}: {e.strerror}"))
            return
        try:
            code = self._finit(fd, params_for(name, self.params))
        finally:
            os.close(fd)
        if code == 0:
            self.loaded.append(name)
        elif code == errno.EEXIST:
            self.present.append(name)
        else:
            self.failed.append((name, os.strerror(code)))

    def mark(self) -> tuple[int, int, int, int]:
        """Where the lists stand, for :meth:`summary` of what came after."""
        return len(self.loaded), len(self.present), len(self.skipped), len(self.failed)

    def summary(self, since: tuple[int, int, int, int] = (0, 0, 0, 0)) -> str:
        loaded = self.loaded[since[0]:]
        parts = [f"loaded {len(loaded)} module(s) ({' '.join(loaded)})" if loaded
                 else "loaded no module"]
        present = self.present[since[1]:]
        if present:
            parts.append(f"already there: {' '.join(present)}")
        skipped = self.skipped[since[2]:]
        if skipped:
            parts.append(f"blacklisted: {' '.join(skipped)}")
        return ", ".join(parts)


def _finit_module() -> Callable[[int, str], int] | None:
    """``finit_module(fd, params, 0)`` returning 0 or the errno; None where its number is
    unknown."""
    nr = FINIT_MODULE_NR.get(os.uname().machine)
    if nr is None:
        return None
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    syscall = libc.syscall

    def finit(fd: int, params: str) -> int:
        rc = syscall(ctypes.c_long(nr), ctypes.c_int(fd), ctypes.c_char_p(params.encode()),
                     ctypes.c_int(0))
        return 0 if rc == 0 else ctypes.get_errno()

    return finit


def _run_modprobe(name: str) -> str | None:
    from cryptboot.run import run

    proc = run(["modprobe", "-b", name], check=False)
    if proc.returncode == 0:
        return None
    err = (proc.stderr or b"").decode(errors="replace").strip()
    return err or f"modprobe exit {proc.returncode}"


class KernelRequestsOff:
    """While active, the kernel starts no ``/sbin/modprobe`` for its own module requests."""

    def __init__(self, path: str = KERNEL_MODPROBE) -> None:
        self.path = path
        self.old: str | None = None

    def __enter__(self) -> KernelRequestsOff:
        try:
            with open(self.path) as f:
                self.old = f.read().rstrip("\n")
            with open(self.path, "w") as f:
                f.write("\n")
        except OSError:
            self.old = None
        return self

    def __exit__(self, *exc: object) -> None:
        if self.old is None:
            return
        try:
            with open(self.path, "w") as f:
                f.write(self.old + "\n")
        except OSError:
            pass
