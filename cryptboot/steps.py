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
    import threading
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

    __slots__ = ("plan", "sys", "args", "unlocker", "background", "first", "keymap")

    def __init__(self, plan: Plan, system: System, args: BootArgs, unlocker: Unlocker) -> None:
        self.plan = plan
        self.sys = system
        self.args = args
        self.unlocker = unlocker
        self.background: Background | None = None
        self.first: tuple[Volume, str] | None = None
        # the keymap's own thread, and the event set once its typing maps are in
        self.keymap: tuple[Background, threading.Event] | None = None


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


def _has_vconsole(plan: Plan) -> bool:
    return bool(plan.vconsole.keymap or plan.vconsole.font)


def start_keymap(b: Boot) -> object:
    """issue 15: the keymap and font load in a thread of their own beside udev's start and the
    device wait (cryptboot.keymap); the prompt waits only for the typing maps."""
    import threading

    from cryptboot.background import Background, Job

    ready = threading.Event()
    b.keymap = (Background([Job("load the keymap", lambda: b.sys.load_keymap(b.plan, ready))]),
                ready)
    return None


def keymap_ready(b: Boot) -> object:
    if b.keymap is not None:
        b.keymap[1].wait()
    return None


def join_keymap(b: Boot) -> object:
    if b.keymap is not None:
        b.keymap[0].join()  # all of it (the font too), before the hand-off
    return None


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
    # rd.auto: any LUKS device that appears meanwhile is opened by the crypt layer
    dev = b.unlocker.wait(plan.root.spec, timeout,
                          on_device=b.unlocker.auto_unlock if plan.auto else None)
    # the type udev (or blkid, without udev) already found: no second probe
    b.sys.mount_root(plan, dev.node, b.args.sysroot, dev.get("ID_FS_TYPE") or None)
    return None


def resume(b: Boot) -> object:
    """issue 12: resume from hibernation, before anything is mounted read-write."""
    b.sys.resume(b.plan, b.unlocker)
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


def prepare_shutdown(b: Boot) -> object:
    """``mkinitramfs --shutdown`` (issue 18): fill /run/initramfs for systemd-shutdown."""
    from cryptboot import shutdown

    try:
        log.info(f"shutdown initramfs: {shutdown.prepare(b.unlocker.opened)}")
    except OSError as e:
        log.warning(f"no shutdown initramfs: {e.filename}: {e.strerror}")
    return None


def _shutdown_image(plan: Plan) -> bool:
    return os.path.isfile("/etc/cryptboot/shutdown")  # cryptboot.shutdown.MANIFEST


def hand_off(b: Boot) -> object:
    log.info(f"handing off to {b.plan.init} at {_uptime()} after kernel start")
    b.sys.hand_off(b.args.sysroot, b.plan.init, b.plan.init_args)
    return None


# issue 14: the network (in a thread of its own, so the prompt never waits for DHCP; tang of
# issue 13 waits on it with cryptboot.network.ensure) and the SSH unlock


def network_wanted(plan: Plan) -> bool:
    """Cheap, before importing cryptboot.network: does the plan say anything about it?"""
    return bool(plan.ssh.enabled or plan.network.need or plan.network.configs
                or any(v.options.netdev for v in plan.volumes))


def start_network(b: Boot) -> object:
    from cryptboot import network

    reasons = network.required(b.plan)
    if not reasons:
        return "not needed (ip=off)"
    network.start(b.plan)
    return f"for {', '.join(reasons)}: started (DHCP or static addresses in their own thread)"


def start_ssh(b: Boot) -> object:
    """The prompt's socket and dropbear, in a thread (a prompt already open picks the socket
    up once it exists)."""
    from cryptboot import ssh

    ssh.start(b.plan)
    return None


def stop_network(b: Boot) -> object:
    """SSH sessions closed, dropbear stopped, the network down (also when a key provider
    started it); nothing, not even a line, when neither was started."""
    import sys

    ssh = sys.modules.get("cryptboot.ssh")
    if ssh is not None and ssh.current() is not None:
        with log.step("stop the SSH server"):
            log.info(f"ssh: {ssh.stop()}")
    network = sys.modules.get("cryptboot.network")
    if network is not None and network.current() is not None:
        with log.step("take the network down"):
            log.info(f"network: {network.stop(b.plan)}")
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
    Step("bring up the network", start_network, background=True, when=network_wanted),
    Step("load device-mapper and cipher modules", load_late_modules, background=True,
         late=True),
    Step("", preload, background=True, late=True),
    Step("start cryptsetup", prepare_unlock, background=True, late=True),
    Step("start the SSH server", start_ssh, when=lambda plan: plan.ssh.enabled),
    Step("", start_keymap, when=_has_vconsole),
    Step("start udev", start_udev),
    Step("trigger udev for block devices", trigger_udev, brk="pre-trigger"),
    Step("", keymap_ready, when=_has_vconsole),
    Step("unlock volumes", unlock_volumes, brk="initqueue"),
    Step("resume from hibernation", resume, join=True,
         when=lambda plan: plan.resume is not None),
    Step("mount the root", mount_root, brk="pre-mount", join=True),
    Step("", done_unlocking),
    Step("", join_keymap, when=_has_vconsole),
    Step("check the new root", check_new_root, brk=("mount", "pre-pivot")),
    Step("stop udev", stop_udev),
    Step("prepare the shutdown initramfs", prepare_shutdown, when=_shutdown_image),
    Step("", stop_network),  # "stop the SSH server", "take the network down"
    Step("", hand_off, brk="cleanup"),
)
