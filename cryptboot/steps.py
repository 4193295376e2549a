"""The boot's steps, as data: :data:`STEPS` is the list :class:`cryptboot.boot.Booter` walks.

Each :class:`Step` has a name (logged and timed on the console and in dmesg), the function that
does it, the ``rd.break`` points checked before it, and whether it runs in the background (in a
thread beside the device wait and the prompt; ``late`` ones only once the first volume's device
was found). ``when(plan)`` false skips it, so a feature the plan does not use costs nothing.
A feature adds a step with one line here and its work in a module of its own::

    Step("load the keymap", lambda b: keymap.load(b.plan.keymap),
         when=lambda plan: plan.keymap is not None),
"""

from __future__ import annotations

import os
from collections.abc import Callable

from cryptboot import log
from cryptboot.config.model import Plan, Volume
from cryptboot.errors import CryptbootError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NamedTuple

    from cryptboot.background import Background
    from cryptboot.bootargs import BootArgs
    from cryptboot.layers.crypt import Unlocker
    from cryptboot.system import System
else:
    from cryptboot.record import Record as NamedTuple


class Boot:
    """What a step gets: the plan, the machine, the boot's inputs, the crypt layer and the
    background; ``first`` holds the first volume found and its device node."""

    __slots__ = ("plan", "sys", "args", "unlocker", "background", "first")

    def __init__(self, plan: Plan, system: System, args: BootArgs, unlocker: Unlocker) -> None:
        self.plan = plan
        self.sys = system
        self.args = args
        self.unlocker = unlocker
        self.background: Background | None = None
        self.first: tuple[Volume, str] | None = None


class Step(NamedTuple):
    name: str                          # "" for a step that is not logged
    run: Callable[[Boot], object]      # the work; what it returns is logged (background)
    brk: str | tuple[str, ...] | None = None   # rd.break point(s) checked before it
    background: bool = False           # in the background thread, beside the device wait
    late: bool = False                 # background: once the first volume's device was found
    when: Callable[[Plan], bool] | None = None  # skipped unless true for the plan
    join: bool = False                 # the background must be done first

    def breaks(self) -> tuple[str, ...]:
        if self.brk is None:
            return ()
        return (self.brk,) if isinstance(self.brk, str) else self.brk


# ---------------------------------------------------------------------------------------------
# The steps' work


def load_modules(b: Boot) -> object:
    return b.sys.load_modules(b.plan, b.args.modules)


def load_late_modules(b: Boot) -> object:
    return b.sys.load_modules(b.plan, b.args.modules, late=True)


def preload(b: Boot) -> object:
    b.sys.preload()
    return None


def prepare_unlock(b: Boot) -> object:
    return b.sys.prepare_unlock(*b.first) if b.first else "no volume found"


def start_udev(b: Boot) -> object:
    return b.sys.start_udev()


def trigger_udev(b: Boot) -> object:
    b.sys.trigger_udev()
    return None


def unlock_volumes(b: Boot) -> object:
    from cryptboot.layers.crypt import volumes_to_unlock

    b.unlocker.unlock_all(volumes_to_unlock(b.plan))
    return None


def mount_root(b: Boot) -> object:
    plan = b.plan
    if plan.root.spec is None:
        raise CryptbootError("no root= on the kernel command line: nothing to mount",
                             hint="add root=/dev/mapper/NAME (or UUID=, LABEL=) to the "
                                  "kernel command line")
    if os.path.ismount(b.args.sysroot):
        log.info(f"{b.args.sysroot} is already mounted; using it")
        return None
    timeout = plan.root_timeout or plan.device_timeout
    b.unlocker.auto = plan.auto  # rd.auto: any LUKS device that appears now is opened
    try:
        dev = b.unlocker.wait(plan.root.spec, timeout)
    finally:
        b.unlocker.auto = False
    # the type udev (or blkid, without udev) already found: no second probe
    b.sys.mount_root(plan, dev.node, b.args.sysroot, dev.get("ID_FS_TYPE") or None)
    return None


def done_unlocking(b: Boot) -> object:
    """The waits are over: stop watching devices, wipe the passphrases, stop unused
    cryptsetup processes."""
    b.unlocker.close()
    return None


def check_new_root(b: Boot) -> object:
    b.sys.preflight(b.args.sysroot, b.plan.init)
    return None


def stop_udev(b: Boot) -> object:
    b.sys.stop_udev()
    return None


def hand_off(b: Boot) -> object:
    log.info(f"handing off to {b.plan.init} at {_uptime()} after kernel start")
    b.sys.hand_off(b.args.sysroot, b.plan.init, b.plan.init_args)
    return None


def _uptime() -> str:
    try:
        with open("/proc/uptime") as f:
            return f"{float(f.read().split()[0]):.2f} s"
    except (OSError, ValueError, IndexError):
        return "? s"


# ---------------------------------------------------------------------------------------------
# The boot, in order

STEPS: tuple[Step, ...] = (
    Step("load kernel modules", load_modules, brk=("cmdline", "pre-udev"), background=True),
    Step("load device-mapper and cipher modules", load_late_modules, background=True,
         late=True),
    Step("", preload, background=True, late=True),
    Step("start cryptsetup", prepare_unlock, background=True, late=True),
    Step("start udev", start_udev),
    Step("trigger udev for block devices", trigger_udev, brk="pre-trigger"),
    Step("unlock volumes", unlock_volumes, brk="initqueue"),
    Step("mount the root", mount_root, brk="pre-mount", join=True),
    Step("", done_unlocking),
    Step("check the new root", check_new_root, brk=("mount", "pre-pivot")),
    Step("stop udev", stop_udev),
    Step("", hand_off, brk="cleanup"),
)
