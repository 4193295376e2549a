"""Everything the boot does to the machine, in one place (replaced by a fake in unit tests)."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

from cryptboot import log
from cryptboot.bootargs import MODULES_FILE
from cryptboot.config.model import FailureAction, Plan, Volume
from cryptboot.errors import CryptbootError
from cryptboot.paths import SHELLS

TYPE_CHECKING = False
if TYPE_CHECKING:  # not imported at run time: typing is slow to import
    import threading
    from typing import NoReturn

    from cryptboot.layers.crypt import Unlocker
    from cryptboot.modload import Loader

MODULES_ROOT = "/lib/modules"
PRINTK_DEVKMSG = "/proc/sys/kernel/printk_devkmsg"


class System:
    """Everything the boot does to the machine, in one place."""

    _unlocker: Unlocker | None = None
    kmsg_old: str | None = None

    def __init__(self) -> None:
        # module list file -> its loader and the names in load order (read once, used twice)
        self._modules: dict[str, tuple[Loader, list[str]]] = {}

    def is_pid1(self) -> bool:
        return os.getpid() == 1

    def mount_api(self) -> list[str]:
        from cryptboot.mount import mount_api_filesystems

        return mount_api_filesystems()

    def load_modules(self, plan: Plan, path: str = MODULES_FILE, *, late: bool = False) -> str:
        """Load the image's modules (:mod:`cryptboot.modload`): storage and the rest first, or
        with ``late`` device-mapper and the ciphers; returns what happened, in words (it runs
        beside the device wait and must not write over a prompt)."""
        from cryptboot import modload

        if path not in self._modules:
            try:
                names = modload.read_list(path)
            except FileNotFoundError:
                return f"no {path}: no modules to load"
            if not names:
                return "no modules to load"
            kdir = f"{MODULES_ROOT}/{os.uname().release}"
            if not os.path.isfile(f"{kdir}/modules.dep"):
                raise CryptbootError(f"cannot load {len(names)} module(s): no {kdir}/modules.dep "
                                     "in the image")
            loader = modload.Loader(kdir, params=plan.module_params,
                                    blacklist=plan.module_blacklist)
            self._modules[path] = (loader, loader.index.order(names))
        loader, ordered = self._modules[path]
        # with LVM in the image, device-mapper is needed to find a disk (an LV): early
        early = ("dm_mod",) if "lvm" in plan.layers and os.access("/usr/sbin/lvm", os.X_OK) \
            else ()
        group = [n for n in ordered if loader.index.is_late(n, early) == late]
        if not group:
            return "none in this group"
        mark = loader.mark()
        with modload.KernelRequestsOff():
            loader.load(group)
        failed = loader.failed[mark[3]:]
        if failed:
            raise CryptbootError("some modules did not load: "
                                 + "; ".join(f"{n}: {e}" for n, e in failed))
        return loader.summary(mark)

    def prepare_unlock(self, volume: Volume, node: str) -> str:
        """Start cryptsetup for ``volume`` ahead of its key, owned by the unlocker (see
        :meth:`cryptboot.layers.crypt.Unlocker.prepare`); returns what happened, in words."""
        if self._unlocker is None:
            return "no unlocker"
        return self._unlocker.prepare(volume, node)

    def preload(self) -> None:
        """Import what runs after the passphrase (cryptsetup, mount, switch_root) while the
        prompt waits."""
        import cryptboot.mount
        import cryptboot.switch.switch_root
        import cryptboot.unlock
        import cryptboot.unlock.dmcrypt  # noqa: F401

    def kmsg_unlimited(self) -> str | None:
        """Lift /dev/kmsg's rate limit (10 lines per 5 s) so every step reaches dmesg; returns
        the old setting for :meth:`kmsg_restore`."""
        if not os.path.exists("/dev/kmsg"):
            return None  # nothing is logged there: leave the kernel's setting alone
        try:
            with open(PRINTK_DEVKMSG) as f:
                old = f.read().strip()
            if old == "ratelimit":
                with open(PRINTK_DEVKMSG, "w") as f:
                    f.write("on\n")
            return old
        except OSError:
            return None

    def kmsg_restore(self, old: str | None) -> None:
        if old == "ratelimit":
            try:
                with open(PRINTK_DEVKMSG, "w") as f:
                    f.write(old + "\n")
            except OSError:
                pass

    def start_udev(self) -> bool:
        from cryptboot import udev

        return udev.start(trigger_now=False)

    def trigger_udev(self) -> None:
        from cryptboot import udev

        udev.trigger(("block",))

    def stop_udev(self) -> None:
        from cryptboot import udev

        udev.stop()

    def load_keymap(self, plan: Plan, ready: threading.Event | None = None) -> str:
        """The console's keymap and font (issue 15; :mod:`cryptboot.keymap`, imported only
        when the plan has one); sets ``ready`` once the prompt can show; never raises,
        problems are warnings."""
        from cryptboot.keymap import load

        return load(plan.vconsole, ready=ready)

    def unlocker(self, plan: Plan) -> Unlocker:
        from cryptboot.layers.crypt import Unlocker

        self._unlocker = Unlocker(plan, use_layers=True)
        return self._unlocker

    def mount_root(self, plan: Plan, device: str, target: str, probed: str | None = None
                   ) -> None:
        from cryptboot.mount import mount_root

        mount_root(plan.root, device, target, probed)

    def resume(self, plan: Plan, unlocker: Unlocker) -> None:
        from cryptboot.resume import resume

        log.info(resume(plan, unlocker.wait, plan.device_timeout))

    def preflight(self, newroot: str, init: str) -> None:
        from cryptboot.switch.switch_root import preflight

        preflight(newroot, init)

    def hand_off(self, newroot: str, init: str, args: Sequence[str]) -> NoReturn:
        """Put /dev/kmsg's rate limit back, then switch to the new root and exec init."""
        self.kmsg_restore(self.kmsg_old)
        self.switch(newroot, init, args)

    def switch(self, newroot: str, init: str, args: Sequence[str]) -> NoReturn:
        from cryptboot.switch.switch_root import switch_root
        from cryptboot.switch.systemd_handoff import init_args  # issue 18

        switch_root(newroot, init, init_args(newroot, init, args))

    def shell(self, reason: str) -> None:
        """An interactive shell on the console; returns when the user leaves it."""
        sh = next((s for s in SHELLS if os.access(s, os.X_OK)), None)
        if sh is None:
            log.error(f"{reason}; and there is no shell in this image ({', '.join(SHELLS)})")
            time.sleep(30)
            return
        log.info(f"{reason}: starting a shell; leave it (exit) to continue")
        import subprocess

        argv = ["sh", "-i"]
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PS1": "cryptboot# ", "TERM": "linux"}
        # Not run.run(): the shell must inherit the console as stdin (run() gives /dev/null).
        subprocess.run(argv, executable=sh, env=env, check=False, preexec_fn=_take_console)

    def halt(self, action: FailureAction) -> NoReturn:
        """reboot(2) with the action; if that fails, say so forever (PID 1 must not exit)."""
        import ctypes

        cmds = {FailureAction.REBOOT: 0x01234567, FailureAction.POWEROFF: 0x4321FEDC,
                FailureAction.HALT: 0xCDEF0123}
        os.sync()
        log.error(f"{action.value} in 2 seconds")
        time.sleep(2)
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.reboot(ctypes.c_uint(cmds.get(action, cmds[FailureAction.HALT])))
            log.error(f"{action.value} failed: {os.strerror(ctypes.get_errno())}")
        except Exception as e:  # noqa: BLE001
            log.error(f"{action.value} failed: {e}")
        while True:
            log.error(f"the boot failed and {action.value} did not happen; "
                      "the machine is halted")
            time.sleep(600)


def _take_console() -> None:
    """In the shell's child: a session of its own with the console as controlling terminal,
    so that Ctrl-C and job control work."""
    try:
        import fcntl
        import termios

        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 1)
    except OSError:
        pass
