"""``cryptboot boot`` (``/init`` of an initramfs) and ``cryptboot unlock [NAME...]``.

The boot, step by step, each step timed on the console and in ``/dev/kmsg``::

    mount /proc /sys /dev /run -> read the plan -> start udev
    -> [in a thread: trigger block devices, load the image's modules, trigger driverless devices]
    -> unlock volumes (wait for the device, get a key, cryptsetup) -> wait for the root, mount it
    -> stop udev -> switch_root to init=

``rd.break=POINT`` opens a shell at a named point (dracut's names, see
:data:`cryptboot.config.model.BREAK_POINTS`); leaving the shell continues the boot. Any failure
prints one clear message and then does the plan's failure action: a shell (leaving it tries the
boot again), reboot, poweroff or halt. As PID 1 this code never returns and never exits: the
kernel would panic.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence

from cryptboot import log
from cryptboot.config.model import (
    DeviceSpec,
    FailureAction,
    KeyKind,
    KeySource,
    Plan,
    SpecKind,
    Volume,
)
from cryptboot.errors import CryptbootError
from cryptboot.launch import CMDLINE_DEFAULTS  # written by cryptboot mkinitramfs --cmdline

TYPE_CHECKING = False
if TYPE_CHECKING:  # not imported at run time: typing is slow to import
    from typing import NoReturn

    from cryptboot.devices import BlockDevice, DeviceWatcher
    from cryptboot.modload import Loader

SYSROOT = "/sysroot"
MODULES_FILE = "/etc/cryptboot/modules"
MODULES_ROOT = "/lib/modules"
PRINTK_DEVKMSG = "/proc/sys/kernel/printk_devkmsg"
HEADER_MOUNT = "/run/cryptboot/header-{name}"  # header=PATH:DEVICE, mounted read-only
SHELLS = ("/bin/sh", "/usr/bin/sh", "/bin/busybox")
# rd.break without a value, and mkinitcpio's break= names
BREAK_ALIASES = {"": "pre-pivot", "premount": "pre-mount", "postmount": "pre-pivot"}

# ---------------------------------------------------------------------------------------------
# Unlocking volumes (shared by boot and unlock)


class Unlocker:
    """Waits for each volume's device, gets its key, opens it: one volume at a time."""

    def __init__(self, plan: Plan, *, consoles: Sequence[str] | None = None,
                 watcher: DeviceWatcher | None = None, layers: bool = False) -> None:
        from cryptboot.keys import KeyEnv

        self.plan = plan
        # storage layers activate what the devices make up: in `cryptboot boot` only (a
        # running system and the dracut/initramfs-tools images have their own activation)
        self.layers = layers
        self._watcher = watcher
        self.env = KeyEnv(consoles=consoles, device_timeout=plan.device_timeout or None,
                          wait_device=self._wait_node)
        self.opened: list[str] = []
        self.failed: list[str] = []
        # called once before the first cryptsetup (the background module loading must be done)
        self.before_open: Callable[[], None] | None = None
        # called with a volume and its device node once found (the background may start on
        # the ciphers, and prepare cryptsetup while the prompt waits)
        self.on_found: Callable[[Volume, str], None] | None = None

    def _ready(self) -> None:
        if self.before_open is not None:
            hook, self.before_open = self.before_open, None
            hook()

    # -- devices

    @property
    def watcher(self) -> DeviceWatcher:
        if self._watcher is None:
            from cryptboot.devices import DeviceWatcher

            self._watcher = DeviceWatcher()
            if self.layers and self.plan.layers:  # LVM, md, btrfs (issue 12): tools here
                from cryptboot.layers import load as load_layers

                self._watcher.layers = load_layers(self.plan)
        return self._watcher

    def wait(self, spec: DeviceSpec, timeout: float | None, *,
             on_device: Callable[[BlockDevice], None] | None = None) -> BlockDevice:
        return self.watcher.wait(spec, timeout, on_device=on_device)

    def _wait_node(self, spec: DeviceSpec, timeout: float | None) -> str:
        return self.wait(spec, timeout).node

    def close(self) -> None:
        if self._watcher is not None:
            self._watcher.close()
            self._watcher = None
        self.env.cache.wipe()
        dmcrypt = sys.modules.get("cryptboot.unlock.dmcrypt")
        if dmcrypt is not None:
            dmcrypt.cancel_prepared()

    # -- volumes

    def device_timeout(self, volume: Volume) -> float | None:
        t = volume.options.device_timeout
        return self.plan.device_timeout if t is None else t

    def unlock_all(self, volumes: Sequence[Volume]) -> None:
        """Unlock ``volumes`` in order; a ``nofail`` volume that fails is reported and skipped."""
        for volume in volumes:
            with log.step(f"unlock {volume.name}"):
                try:
                    self.unlock(volume)
                except CryptbootError as e:
                    if not volume.options.nofail:
                        raise
                    self.failed.append(volume.name)
                    log.warning(f"{volume.name} (nofail) was not unlocked: {e.message}")

    def unlock(self, volume: Volume, dev: BlockDevice | None = None) -> None:
        """Unlock one volume; ``dev`` when its device is already known (rd.auto)."""
        from cryptboot.keys import unlock_with_keys
        from cryptboot.unlock import is_active, needs_key, prepare, unlock_volume

        if not volume.name_from_device and is_active(volume.name):
            log.info(f"{volume.name} is already active; left alone")
            return
        prepare(volume)
        if dev is None:
            dev = self.wait(volume.source, self.device_timeout(volume))
        if volume.name_from_device:
            fs_uuid = dev.get("ID_FS_UUID")
            if fs_uuid:
                volume = volume._replace(name=f"luks-{fs_uuid}")
            if is_active(volume.name):
                log.info(f"{volume.name} is already active; left alone")
                return
        log.info(f"{volume.name}: found {dev.describe()}")
        if self.on_found is not None:
            self.on_found(volume, dev.node)
        with _HeaderMount(self, volume) as vol:
            if not needs_key(vol):
                self._ready()
                unlock_volume(vol, dev.node, None)
            else:
                node = dev.node
                unlock_with_keys(vol, node, self.env,
                                 lambda key: self._open(vol, node, key.data, key.binary))
        self.opened.append(volume.name)

    def _open(self, volume: Volume, node: str, key: bytes, binary: bool) -> None:
        from cryptboot.unlock import unlock_volume

        self._ready()
        unlock_volume(volume, node, key, binary=binary)

    def auto_unlock(self, dev: BlockDevice) -> None:
        """rd.auto: open any LUKS device that appears, as ``luks-UUID``."""
        from cryptboot.unlock import is_active

        fs_uuid = dev.get("ID_FS_UUID")
        if dev.get("ID_FS_TYPE") != "crypto_LUKS" or not fs_uuid:
            return
        name = f"luks-{fs_uuid}"
        if is_active(name) or name in self.failed:
            return
        vol = Volume(name, DeviceSpec(SpecKind.PATH, dev.node),
                     (KeySource(KeyKind.CACHED), KeySource(KeyKind.PROMPT)), origin="rd.auto")
        try:
            with log.step(f"unlock {name} (rd.auto)"):
                self.unlock(vol, dev)
        except CryptbootError as e:
            self.failed.append(name)
            log.warning(f"rd.auto: {name} was not unlocked: {e.message}")


class _HeaderMount:
    """``header=PATH:DEVICE``: the detached header lives on another device, mounted read-only
    while cryptsetup reads it; ``header=/dev/...``: a device to wait for."""

    def __init__(self, unlocker: Unlocker, volume: Volume) -> None:
        self.u = unlocker
        self.volume = volume
        self.mounted: str | None = None

    def __enter__(self) -> Volume:
        opts = self.volume.options
        hdev = opts.header_device
        if hdev is None and opts.header and opts.header.startswith("/dev/"):
            node = self.u._wait_node(DeviceSpec(SpecKind.PATH, opts.header),
                                     self.u.device_timeout(self.volume))
            return self.volume._replace(options=opts._replace(header=node))
        if hdev is None:
            return self.volume
        node = self.u._wait_node(hdev, self.u.device_timeout(self.volume))
        if not opts.header:
            return self.volume._replace(options=opts._replace(header=node))
        from cryptboot.run import run

        self.mounted = HEADER_MOUNT.format(name=self.volume.name)
        os.makedirs(self.mounted, mode=0o700, exist_ok=True)
        run(["mount", "-o", "ro", node, self.mounted])
        path = os.path.join(self.mounted, opts.header.lstrip("/"))
        return self.volume._replace(options=opts._replace(header=path))

    def __exit__(self, *exc: object) -> None:
        if self.mounted:
            from cryptboot.run import run

            run(["umount", self.mounted], check=False)


def load_plan(cmdline_path: str, crypttab_path: str, defaults_path: str) -> Plan:
    """The plan from the kernel command line, after the image's defaults (``defaults_path``:
    words the kernel's own command line can override, since the last word wins)."""
    from cryptboot.config.plan import load_plan as load

    return load(cmdline_path, crypttab_path, defaults_path)


def volumes_to_unlock(plan: Plan, names: Sequence[str] = ()) -> tuple[Volume, ...]:
    """All volumes but ``noauto`` ones, or exactly those named (noauto too)."""
    if not names:
        return tuple(v for v in plan.volumes if not v.options.noauto)
    by_name = {v.name: v for v in plan.volumes}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        known = ", ".join(by_name) or "none"
        raise CryptbootError(f"no volume named {', '.join(unknown)} in the plan (volumes: {known})",
                             hint="see `cryptboot plan`")
    return tuple(by_name[n] for n in names)


# ---------------------------------------------------------------------------------------------
# The system around the boot (replaced by fakes in unit tests)


class System:
    """Everything the boot does to the machine, in one place."""

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
        """Start cryptsetup for ``volume`` ahead of its key (see
        :func:`cryptboot.unlock.dmcrypt.prepare_open`); returns what happened, in words."""
        from cryptboot.unlock import needs_key
        from cryptboot.unlock.dmcrypt import prepare_open

        if needs_key(volume) and prepare_open(volume.name, node, volume.options):
            return f"cryptsetup for {volume.name} waits for its key"
        return f"not for {volume.name} (not LUKS with its header on {node})"

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

    def unlocker(self, plan: Plan) -> Unlocker:
        return Unlocker(plan, layers=True)

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

    def switch(self, newroot: str, init: str, args: Sequence[str]) -> NoReturn:
        from cryptboot.switch.switch_root import switch_root

        switch_root(newroot, init, list(args))

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


# ---------------------------------------------------------------------------------------------
# cryptboot boot


class BootArgs:
    """Where ``cryptboot boot`` reads its inputs (a plain class: no dataclass cost at boot)."""

    __slots__ = ("cmdline", "crypttab", "sysroot", "modules", "defaults")

    def __init__(self, cmdline: str = "/proc/cmdline", crypttab: str = "/etc/crypttab",
                 sysroot: str = SYSROOT, modules: str = MODULES_FILE,
                 defaults: str = CMDLINE_DEFAULTS) -> None:
        self.cmdline = cmdline
        self.crypttab = crypttab
        self.sysroot = sysroot
        self.modules = modules
        self.defaults = defaults


def parse_boot_args(argv: Sequence[str]) -> BootArgs:
    """``--cmdline FILE --crypttab FILE --sysroot DIR``; anything else is ignored, because the
    kernel passes unknown command-line words to /init as arguments."""
    args = BootArgs()
    it = iter(argv)
    for word in it:
        key, eq, value = word.partition("=")
        if key in ("--cmdline", "--crypttab", "--sysroot", "--modules", "--defaults"):
            if not eq:
                value = next(it, "")
            setattr(args, key[2:], value)
    return args


class Background:
    """Steps run in a thread beside the device wait and the prompt (module loading): the disk
    can appear and the prompt can show while the kernel is still busy loading cipher modules.

    ``late`` steps wait for :meth:`go` (called once the first volume's device is found, so the
    CPU goes to finding the disk first) or for :meth:`join`. Outcomes are logged when joined, so
    no line is written over an open prompt; a step named ``""`` is not reported. Joined before
    the first cryptsetup and before mounting."""

    def __init__(self, steps: Sequence[tuple[str, Callable[[], object], bool]]) -> None:
        import threading

        self.steps = list(steps)
        self.results: list[tuple[str, float, str, bool]] = []
        for name, _fn, late in self.steps:
            if name:
                when = ", once the device is found" if late else ""
                log.info(f"{name} ... (in the background{when})")
        self._joined = False
        self._go = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cryptboot-background",
                                        daemon=True)
        self._thread.start()

    def go(self) -> None:
        self._go.set()

    def _run(self) -> None:
        for name, fn, late in self.steps:
            if late:
                self._go.wait()
            t0 = time.monotonic()
            try:
                out = fn()
                self.results.append((name, time.monotonic() - t0, str(out or ""), True))
            except Exception as e:  # noqa: BLE001 - reported at join; the wait goes on
                msg = e.message if isinstance(e, CryptbootError) else f"{type(e).__name__}: {e}"
                self.results.append((name or "prepare the next steps", time.monotonic() - t0,
                                     msg, False))

    def join(self) -> None:
        if self._joined:
            return
        self._joined = True
        self._go.set()
        self._thread.join()
        for name, took, text, ok in self.results:
            if ok and name:
                log.info(f"{name} (in the background): {text + '; ' if text else ''}"
                         f"done in {took:.3f}s")
            elif not ok:
                log.warning(f"{name} (in the background) failed after {took:.3f}s: {text}")


class Booter:
    """The steps of a boot with a :class:`System`; :meth:`run` hands off or raises."""

    def __init__(self, args: BootArgs, system: System) -> None:
        self.args = args
        self.sys = system
        self.plan: Plan | None = None
        self.api_mounted = False
        self.kmsg_setting: str | None = None

    def brk(self, point: str) -> None:
        if self.plan is None:
            return
        points = {BREAK_ALIASES.get(p, p) for p in self.plan.breaks}
        if point in points:
            self.sys.shell(f"rd.break={point}")

    def run(self) -> None:
        if not self.api_mounted:
            t0 = time.monotonic()
            done = self.sys.mount_api()
            self.kmsg_setting = self.sys.kmsg_unlimited()
            log.configure(kmsg=True, debug=log.is_debug())
            self.api_mounted = True
            log.info(f"mount API filesystems ({' '.join(done) or 'already there'}): "
                     f"done in {time.monotonic() - t0:.3f}s")
        with log.step("read the boot plan"):
            plan = load_plan(self.args.cmdline, self.args.crypttab, self.args.defaults)
        self.plan = plan
        if plan.debug:
            log.configure(debug=True, kmsg=True)
        for w in plan.warnings:
            log.warning(w)
        self.brk("cmdline")
        self.brk("pre-udev")
        first: list[tuple[Volume, str]] = []  # the first volume found, and its device

        def found(volume: Volume, node: str) -> None:
            if not first:
                first.append((volume, node))
            background.go()

        background = Background([
            ("load kernel modules", lambda: self.sys.load_modules(plan, self.args.modules), False),
            ("load device-mapper and cipher modules",
             lambda: self.sys.load_modules(plan, self.args.modules, late=True), True),
            ("", self.sys.preload, True),
            ("start cryptsetup", lambda: self.sys.prepare_unlock(*first[0]) if first
             else "no volume found", True),
        ])
        unlocker = self.sys.unlocker(plan)
        unlocker.before_open = background.join
        unlocker.on_found = found
        try:
            with log.step("start udev"):
                self.sys.start_udev()
            self.brk("pre-trigger")
            with log.step("trigger udev for block devices"):
                self.sys.trigger_udev()
        except BaseException:
            background.join()
            raise
        try:
            self.brk("initqueue")
            with log.step("unlock volumes"):
                unlocker.unlock_all(volumes_to_unlock(plan))
            background.join()
            if plan.resume is not None:  # before anything is mounted read-write (issue 12)
                with log.step("resume from hibernation"):
                    self.sys.resume(plan, unlocker)
            self.brk("pre-mount")
            with log.step("mount the root"):
                self.mount_root(plan, unlocker)
        finally:
            background.join()
            unlocker.close()
        self.brk("mount")
        self.brk("pre-pivot")
        with log.step("check the new root"):
            self.sys.preflight(self.args.sysroot, plan.init)
        with log.step("stop udev"):
            self.sys.stop_udev()
        self.brk("cleanup")
        log.info(f"handing off to {plan.init} at {_uptime()} after kernel start")
        self.sys.kmsg_restore(self.kmsg_setting)
        self.sys.switch(self.args.sysroot, plan.init, plan.init_args)

    def mount_root(self, plan: Plan, unlocker: Unlocker) -> None:
        if plan.root.spec is None:
            raise CryptbootError("no root= on the kernel command line: nothing to mount",
                                 hint="add root=/dev/mapper/NAME (or UUID=, LABEL=) to the "
                                      "kernel command line")
        if os.path.ismount(self.args.sysroot):
            log.info(f"{self.args.sysroot} is already mounted; using it")
            return
        timeout = plan.root_timeout or plan.device_timeout
        dev = unlocker.wait(plan.root.spec, timeout,
                            on_device=unlocker.auto_unlock if plan.auto else None)
        # the type udev (or blkid, without udev) already found: no second probe
        self.sys.mount_root(plan, dev.node, self.args.sysroot, dev.get("ID_FS_TYPE") or None)


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


def _uptime() -> str:
    try:
        with open("/proc/uptime") as f:
            return f"{float(f.read().split()[0]):.2f} s"
    except (OSError, ValueError, IndexError):
        return "? s"


def _ensure_stdio() -> None:
    """The kernel gives /init the console as fds 0-2 only if /dev/console existed; make sure."""
    try:
        os.fstat(2)
        return
    except OSError:
        pass
    try:
        fd = os.open("/dev/console", os.O_RDWR | os.O_NOCTTY)
    except OSError:
        return
    for target in (0, 1, 2):
        try:
            os.fstat(target)
        except OSError:
            os.dup2(fd, target)
    if fd > 2:
        os.close(fd)


def describe_failure(e: BaseException) -> tuple[str, str | None]:
    if isinstance(e, CryptbootError):
        return e.message, e.hint
    if isinstance(e, KeyboardInterrupt):
        return "interrupted", None
    return (f"internal error: {type(e).__name__}: {e}",
            "run with cryptboot.debug (or rd.debug) on the kernel command line for a traceback")


def run_boot(args: BootArgs, system: System) -> int:
    """Boot; on failure report and do the failure action. Returns only when not PID 1."""
    booter = Booter(args, system)
    pid1 = system.is_pid1()
    while True:
        try:
            booter.run()
            # switch() never returns; a fake System in tests does
            return 0
        except (Exception, KeyboardInterrupt, SystemExit) as e:  # PID 1 must survive them all
            if log.is_debug():
                import traceback

                traceback.print_exc()
            message, hint = describe_failure(e)
            log.error(message)
            if hint:
                log.info(f"hint: {hint}")
            if not pid1:
                return e.exit_code if isinstance(e, CryptbootError) else 1
            action = booter.plan.failure if booter.plan else FailureAction.SHELL
            if action is FailureAction.SHELL:
                system.shell("the boot failed")
                log.info("trying the boot again")
                continue
            system.halt(action)


def main(argv: list[str]) -> int:
    """``cryptboot boot``: as /init, bring up the real root and hand off to its init."""
    system = System()
    if not system.is_pid1():
        # Never on a running system: it would start udevd and retrigger every device there.
        raise CryptbootError(
            f"cryptboot boot runs as /init (PID 1) of an initramfs; this is PID {os.getpid()}",
            hint="on a running system use `cryptboot unlock`; `cryptboot plan` shows what a boot "
                 "would do")
    _ensure_stdio()
    try:
        return run_boot(parse_boot_args(argv), system)
    except BaseException as e:
        if not system.is_pid1():
            raise
        # the last guard: PID 1 returning or exiting would panic the kernel
        while True:
            log.error(f"cryptboot stopped: {type(e).__name__}: {e}; the machine is halted")
            time.sleep(600)


# ---------------------------------------------------------------------------------------------
# cryptboot unlock


UNLOCK_USAGE = ("usage: cryptboot unlock [--cmdline FILE] [--crypttab FILE] [--console DEV]... "
                "[NAME...]")


def unlock_main(argv: list[str]) -> int:
    """``cryptboot unlock [NAME...]``: wait, get keys and unlock; nothing else.

    For hooks inside dracut / initramfs-tools images and for running systems. Prompts on the
    terminal when there is one, else on the kernel's active consoles (or ``--console``).
    """
    cmdline, crypttab = "/proc/cmdline", "/etc/crypttab"
    consoles: list[str] = []
    names: list[str] = []
    it = iter(argv)
    for word in it:
        key, eq, value = word.partition("=")
        if key in ("--cmdline", "--crypttab", "--console"):
            if not eq:
                value = next(it, None) or ""
                if not value:
                    raise CryptbootError(f"{key} needs a value", hint=UNLOCK_USAGE)
            if key == "--cmdline":
                cmdline = value
            elif key == "--crypttab":
                crypttab = value
            else:
                consoles.append(value)
        elif word in ("-h", "--help"):
            print(UNLOCK_USAGE)
            return 0
        elif word.startswith("-"):
            raise CryptbootError(f"unknown option {word}", hint=UNLOCK_USAGE)
        else:
            names.append(word)
    plan = load_plan(cmdline, crypttab, CMDLINE_DEFAULTS)
    if plan.debug:
        log.configure(debug=True)
    for w in plan.warnings:
        log.warning(w)
    volumes = volumes_to_unlock(plan, names)
    if not volumes:
        log.info("no volumes to unlock")
        return 0
    if not consoles and sys.stdin.isatty():
        consoles = [os.ttyname(0)]
    unlocker = Unlocker(plan, consoles=consoles or None)
    try:
        unlocker.unlock_all(volumes)
    finally:
        unlocker.close()
    return 1 if unlocker.failed else 0
