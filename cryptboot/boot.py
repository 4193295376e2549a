"""``cryptboot boot`` (``/init`` of an initramfs) and ``cryptboot unlock [NAME...]``.

The boot mounts the API filesystems, reads the plan, then walks :data:`cryptboot.steps.STEPS`:
each step is timed on the console and in ``/dev/kmsg``, background steps run in a thread beside
the device wait and the prompt, and before each step its ``rd.break`` points may open a shell
(dracut's names, see :data:`cryptboot.config.model.BREAK_POINTS`); leaving the shell continues
the boot. Any failure prints one clear message and then does the plan's failure action: a shell
(leaving it tries the boot again), reboot, poweroff or halt. As PID 1 this code never returns and
never exits: the kernel would panic. Before any shell, the passphrases typed are wiped.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence

from cryptboot import log
from cryptboot.bootargs import BootArgs, parse_boot_args
from cryptboot.config.model import FailureAction, Plan, Volume
from cryptboot.errors import CryptbootError
from cryptboot.layers.crypt import Unlocker, volumes_to_unlock
from cryptboot.paths import CMDLINE_DEFAULTS
from cryptboot.system import System

TYPE_CHECKING = False
if TYPE_CHECKING:
    from cryptboot.background import Background
    from cryptboot.steps import Boot, Step

__all__ = ["BootArgs", "Booter", "System", "Unlocker", "main", "parse_boot_args", "run_boot",
           "unlock_main", "volumes_to_unlock"]

# rd.break without a value, and mkinitcpio's break= names
BREAK_ALIASES = {"": "pre-pivot", "premount": "pre-mount", "postmount": "pre-pivot"}
DEBUG_HINT = "run with cryptboot.debug (or rd.debug) on the kernel command line for a traceback"


def load_plan(cmdline_path: str, crypttab_path: str, defaults_path: str,
              vconsole_path: str | None = None) -> Plan:
    """The plan from the kernel command line, after the image's defaults (``defaults_path``:
    words the kernel's own command line can override, since the last word wins), and the
    image's ``vconsole.conf``."""
    from cryptboot.config.plan import load_plan as load

    return load(cmdline_path, crypttab_path, defaults_path, vconsole_path)


class Booter:
    """The steps of a boot with a :class:`System`; :meth:`run` hands off or raises."""

    def __init__(self, args: BootArgs, system: System,
                 steps: Sequence[Step] | None = None) -> None:
        self.args = args
        self.sys = system
        self.steps = steps
        self.plan: Plan | None = None
        self.api_mounted = False
        self._boot: Boot | None = None

    def brk(self, point: str) -> None:
        if self.plan is None:
            return
        points = {BREAK_ALIASES.get(p, p) for p in self.plan.breaks}
        if point in points:
            self.forget_secrets()
            self.sys.shell(f"rd.break={point}")

    def forget_secrets(self) -> None:
        """Before any shell: wipe the passphrases typed so far (the shell must not see them)."""
        if self._boot is not None:
            self._boot.unlocker.env.cache.wipe()

    def run(self) -> None:
        from cryptboot.steps import STEPS, Boot

        if not self.api_mounted:
            t0 = time.monotonic()
            done = self.sys.mount_api()
            self.sys.kmsg_old = self.sys.kmsg_unlimited()
            log.configure(kmsg=True, debug=log.is_debug())
            self.api_mounted = True
            log.info(f"mount API filesystems ({' '.join(done) or 'already there'}): "
                     f"done in {time.monotonic() - t0:.3f}s")
        with log.step("read the boot plan"):
            plan = load_plan(self.args.cmdline, self.args.crypttab, self.args.defaults,
                             self.args.vconsole)
        self.plan = plan
        if plan.debug:
            log.configure(debug=True, kmsg=True)
        for w in plan.warnings:
            log.warning(w)
        steps = [s for s in (STEPS if self.steps is None else self.steps)
                 if s.when is None or s.when(plan)]
        boot = self._boot = Boot(plan, self.sys, self.args, self.sys.unlocker(plan))
        unlocker = boot.unlocker

        def found(volume: Volume, node: str) -> None:
            if boot.first is None:
                boot.first = (volume, node)
            if boot.background is not None:
                boot.background.go()

        unlocker.on_found = found
        try:
            for step in steps:
                for point in step.breaks():
                    self.brk(point)
                if step.background:
                    if boot.background is None:
                        boot.background = self._start_background(boot, steps)
                        unlocker.before_open = boot.background.join
                    continue
                if step.join and boot.background is not None:
                    boot.background.join()
                if step.name:
                    with log.step(step.name):
                        step.run(boot)
                else:
                    step.run(boot)
        finally:
            if boot.background is not None:
                boot.background.join()
            unlocker.close()

    @staticmethod
    def _start_background(boot: Boot, steps: Sequence[Step]) -> Background:
        """Every background step, in order, in one thread (started at the first one)."""
        from cryptboot.background import Background, Job

        def job(step: Step) -> Job:
            return Job(step.name, lambda: step.run(boot), step.late)

        return Background([job(s) for s in steps if s.background])


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
            log.report(e, DEBUG_HINT)
            if not pid1:
                return e.exit_code if isinstance(e, CryptbootError) else 1
            action = booter.plan.failure if booter.plan else FailureAction.SHELL
            if action is FailureAction.SHELL:
                booter.forget_secrets()
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
    from cryptboot.ssh import serve_prompt  # issue 14: another initramfs' SSH server may ask

    remote = serve_prompt(plan)
    try:
        unlocker.unlock_all(volumes)
    finally:
        unlocker.close()
        if remote is not None:
            remote.close("cryptboot: unlocking is over; closing this session.")
    return 1 if unlocker.failed else 0
