"""The boot flow's logic: step order, rd.break points, failure actions, PID 1 never exits.

The machine is a recording fake :class:`System`; the plan comes from real command-line and
crypttab files through the real config layer. The real boot is the VM tier's job.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import pytest

from cryptboot.boot import BootArgs, System, Unlocker, parse_boot_args, run_boot
from cryptboot.config.model import DeviceSpec, FailureAction, Plan, Volume
from cryptboot.devices import BlockDevice
from cryptboot.errors import CryptbootError, DeviceTimeout


class Halted(BaseException):
    """What the fake halt() raises: a real one never returns."""


class HandedOff(BaseException):
    """What the fake switch() raises: a real one never returns (exec of init)."""


class FakeWatcher:
    def __init__(self, present: bool) -> None:
        self.present = present

    def wait(self, spec: DeviceSpec, timeout: float | None, *, on_device: object = None
             ) -> BlockDevice:
        if not self.present:
            raise DeviceTimeout(f"device {spec} did not appear (waited {timeout} s)")
        return BlockDevice(node="/dev/vdz1", name="vdz1", size=1, props={"ID_FS_TYPE": "ext4"})

    def close(self) -> None:
        pass


class FakeSystem(System):
    def __init__(self, *, pid1: bool = True, root_present: Sequence[bool] = (True,),
                 fail_in: str = "") -> None:
        self.calls: list[str] = []
        self.pid1 = pid1
        self.root_present = list(root_present)
        self.fail_in = fail_in

    def _call(self, name: str) -> None:
        self.calls.append(name)
        if self.fail_in == name:
            self.fail_in = ""
            raise ValueError(f"bug in {name}")

    def is_pid1(self) -> bool:
        return self.pid1

    def mount_api(self) -> list[str]:
        self._call("mount_api")
        return []

    def kmsg_unlimited(self) -> str | None:
        return None

    def load_modules(self, plan: Plan, path: str = "", *, late: bool = False) -> str:
        self._call("load_modules late" if late else "load_modules")
        return "loaded 0 module(s)"

    def preload(self) -> None:
        self._call("preload")

    def prepare_unlock(self, volume: Volume, node: str) -> str:
        self._call(f"prepare_unlock {volume.name} {node}")
        return "started"

    def start_udev(self) -> bool:
        self._call("start_udev")
        return True

    def trigger_udev(self) -> None:
        self._call("trigger_udev")

    def stop_udev(self) -> None:
        self._call("stop_udev")

    def unlocker(self, plan: Plan) -> Unlocker:
        present = self.root_present.pop(0) if self.root_present else True
        return Unlocker(plan, watcher=FakeWatcher(present))  # type: ignore[arg-type]

    def mount_root(self, plan: Plan, device: str, target: str, probed: str | None = None
                   ) -> None:
        self._call(f"mount_root {device} {target} ro={plan.root.readonly} type={probed}")

    def preflight(self, newroot: str, init: str) -> None:
        self._call(f"preflight {newroot} {init}")

    def switch(self, newroot: str, init: str, args: Sequence[str]) -> NoReturn:
        self.calls.append(f"switch {newroot} {init} {' '.join(args)}".strip())
        raise HandedOff

    def shell(self, reason: str) -> None:
        self.calls.append(f"shell: {reason}")

    def halt(self, action: FailureAction) -> NoReturn:
        self.calls.append(f"halt {action.value}")
        raise Halted


@pytest.fixture
def logs(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    from cryptboot import log

    buf = io.StringIO()
    monkeypatch.setattr(log._state, "stream", buf)
    monkeypatch.setattr(log._state, "use_kmsg", False)
    monkeypatch.setattr(log, "configure", lambda **kw: None)
    return buf


def args_for(tmp_path: Path, cmdline: str, crypttab: str = "") -> BootArgs:
    (tmp_path / "cmdline").write_text(cmdline + "\n")
    (tmp_path / "crypttab").write_text(crypttab)
    return BootArgs(cmdline=str(tmp_path / "cmdline"), crypttab=str(tmp_path / "crypttab"),
                    sysroot=str(tmp_path / "sysroot"), modules=str(tmp_path / "modules"),
                    defaults=str(tmp_path / "defaults"),
                    vconsole=str(tmp_path / "vconsole.conf"))


def test_steps_in_order_and_hand_off_with_init_args(tmp_path: Path, logs: io.StringIO) -> None:
    sysm = FakeSystem()
    args = args_for(tmp_path, "root=LABEL=rootfs rw init=/lib/systemd/systemd -- --unit=x")
    with pytest.raises(HandedOff):
        run_boot(args, sysm)
    sysroot = args.sysroot
    background = ("load_modules", "load_modules late", "preload")  # no volume: no cryptsetup
    assert [c for c in sysm.calls if c not in background] == [
        "mount_api", "start_udev", "trigger_udev",
        f"mount_root /dev/vdz1 {sysroot} ro=False type=ext4",
        f"preflight {sysroot} /lib/systemd/systemd", "stop_udev",
        f"switch {sysroot} /lib/systemd/systemd --unit=x",
    ]
    # the background steps, in their order, all before the root is mounted
    bg = [c for c in sysm.calls if c in background]
    assert bg == list(background)
    assert max(sysm.calls.index(c) for c in bg) < sysm.calls.index(
        f"mount_root /dev/vdz1 {sysroot} ro=False type=ext4")
    text = logs.getvalue()
    for step in ("read the boot plan", "start udev", "trigger udev for block devices",
                 "unlock volumes", "mount the root", "stop udev"):
        assert f"{step} ..." in text and f"{step}: done in " in text
    # run beside the device wait, reported when joined (never over a prompt)
    assert "load kernel modules ... (in the background)" in text
    assert "load kernel modules (in the background): loaded 0 module(s); done in " in text
    assert ("load device-mapper and cipher modules ... (in the background, once the device is "
            "found)") in text
    assert ("load device-mapper and cipher modules (in the background): loaded 0 module(s); "
            "done in ") in text
    assert "handing off to /lib/systemd/systemd" in text


@pytest.mark.parametrize(("cmdline", "before"), [
    ("rd.break=pre-mount", "mount_root"),
    ("rd.break", "preflight"),          # plain rd.break: pre-pivot, just before the hand-off
    ("rd.break=cmdline", "start_udev"),
    ("rd.break=pre-trigger", "trigger_udev"),
    ("break=premount", "mount_root"),   # mkinitcpio's name
])
def test_rd_break_opens_a_shell_at_its_point(tmp_path: Path, logs: io.StringIO, cmdline: str,
                                             before: str) -> None:
    sysm = FakeSystem()
    with pytest.raises(HandedOff):
        run_boot(args_for(tmp_path, f"root=LABEL=r {cmdline}"), sysm)
    calls = [c for c in sysm.calls if c not in ("load_modules", "load_modules late", "preload")]
    shells = [i for i, c in enumerate(calls) if c.startswith("shell: rd.break=")]
    assert len(shells) == 1
    assert calls[shells[0] + 1].startswith(before)


class Typed(FakeSystem):
    """A passphrase was typed earlier; every shell records how many are still cached."""

    def unlocker(self, plan: Plan) -> Unlocker:
        self.u = super().unlocker(plan)
        self.u.env.cache.add(b"typed for an earlier volume")
        return self.u

    def shell(self, reason: str) -> None:
        super().shell(reason)
        self.calls.append(f"cached at the shell: {len(self.u.env.cache)}")


@pytest.mark.parametrize("cmdline", ["rd.break=pre-mount", "rd.break=initqueue"])
def test_passphrases_are_wiped_before_an_rd_break_shell(tmp_path: Path, logs: io.StringIO,
                                                        cmdline: str) -> None:
    """A shell started by rd.break (a root shell on the console) never sees a passphrase typed
    earlier: the cache is empty by the time it starts."""
    sysm = Typed()
    with pytest.raises(HandedOff):
        run_boot(args_for(tmp_path, f"root=LABEL=r {cmdline}"), sysm)
    assert f"shell: {cmdline}" in sysm.calls
    assert "cached at the shell: 0" in sysm.calls


def test_failure_shell_never_sees_a_cached_passphrase(tmp_path: Path, logs: io.StringIO) -> None:
    sysm = Typed(root_present=[False, True])
    with pytest.raises(HandedOff):
        run_boot(args_for(tmp_path, "root=UUID=0a0a0a0a-0000-0000-0000-000000000000 rd.retry=1"),
                 sysm)
    assert sysm.calls[sysm.calls.index("shell: the boot failed") + 1] == "cached at the shell: 0"


def test_failure_message_then_shell_then_retry(tmp_path: Path, logs: io.StringIO) -> None:
    sysm = FakeSystem(root_present=[False, True])
    with pytest.raises(HandedOff):
        run_boot(args_for(tmp_path, "root=UUID=0a0a0a0a-0000-0000-0000-000000000000 rd.retry=5"),
                 sysm)
    assert "shell: the boot failed" in sysm.calls
    assert sysm.calls[-1].startswith("switch ")
    assert sysm.calls.count("mount_api") == 1  # the retry does not remount /proc etc.
    text = logs.getvalue()
    assert ("error: device UUID=0a0a0a0a-0000-0000-0000-000000000000 did not appear "
            "(waited 5.0 s)") in text
    assert "trying the boot again" in text
    assert "Traceback" not in text


@pytest.mark.parametrize("action", ["reboot", "poweroff", "halt"])
def test_failure_action_without_shell(tmp_path: Path, logs: io.StringIO, action: str) -> None:
    sysm = FakeSystem(root_present=[False])
    with pytest.raises(Halted):
        run_boot(args_for(tmp_path, f"root=LABEL=r rd.shell=0 rd.emergency={action}"), sysm)
    assert sysm.calls[-1] == f"halt {action}"
    assert not any(c.startswith("shell") for c in sysm.calls)


@pytest.mark.parametrize(("cmdline", "waited"), [
    ("rd.retry=7", "7.0"),                 # rd.timeout not set: the root waits as long as rd.retry
    ("rd.retry=7 rd.timeout=3", "3.0"),    # rd.timeout set: it is the root's own limit
])
def test_root_wait_uses_rd_timeout_else_rd_retry(tmp_path: Path, logs: io.StringIO, cmdline: str,
                                                 waited: str) -> None:
    """The boot waits for the root exactly as long as ``cryptboot plan`` says it will."""
    from cryptboot.config.plan import build_plan
    from cryptboot.config.render import render_text

    full = f"root=LABEL=r rd.shell=0 rd.emergency=poweroff {cmdline}"
    with pytest.raises(Halted):
        run_boot(args_for(tmp_path, full), FakeSystem(root_present=[False]))
    assert f"did not appear (waited {waited} s)" in logs.getvalue()
    said = render_text(build_plan(full, None))
    own_limit = "rd.timeout" in cmdline
    assert (f"for the root {waited.removesuffix('.0')} s (rd.timeout)" in said) == own_limit
    assert ("for the root the same (rd.timeout not set)" in said) != own_limit


def test_internal_error_is_one_line_and_pid1_survives(tmp_path: Path,
                                                      logs: io.StringIO) -> None:
    sysm = FakeSystem(fail_in="start_udev")
    with pytest.raises(HandedOff):
        run_boot(args_for(tmp_path, "root=LABEL=r"), sysm)
    text = logs.getvalue()
    assert "error: internal error: ValueError: bug in start_udev" in text
    assert "Traceback" not in text
    assert "shell: the boot failed" in sysm.calls


def test_a_failing_background_step_is_a_warning(tmp_path: Path, logs: io.StringIO) -> None:
    sysm = FakeSystem(fail_in="load_modules")
    with pytest.raises(HandedOff):
        run_boot(args_for(tmp_path, "root=LABEL=r"), sysm)
    assert "warning: load kernel modules (in the background) failed after" in logs.getvalue()
    assert "bug in load_modules" in logs.getvalue()
    assert not any(c.startswith("shell") for c in sysm.calls)


def test_bad_command_line_names_the_file(tmp_path: Path, logs: io.StringIO) -> None:
    sysm = FakeSystem(pid1=False)
    code = run_boot(args_for(tmp_path, "root=LABEL=r rd.break=nowhere"), sysm)
    assert code == 2
    assert f"{tmp_path / 'cmdline'}" in logs.getvalue()
    assert "rd.break=: expected one of" in logs.getvalue()


def test_not_pid1_returns_instead_of_acting(tmp_path: Path, logs: io.StringIO) -> None:
    sysm = FakeSystem(pid1=False, root_present=[False])
    assert run_boot(args_for(tmp_path, "root=LABEL=r rd.shell=0 rd.emergency=reboot"),
                    sysm) == 1
    assert not any(c.startswith(("shell", "halt")) for c in sysm.calls)


def test_no_root_given(tmp_path: Path, logs: io.StringIO) -> None:
    assert run_boot(args_for(tmp_path, "quiet"), FakeSystem(pid1=False)) == 1
    assert "no root= on the kernel command line" in logs.getvalue()


def test_image_defaults_come_first_and_the_kernel_wins(tmp_path: Path,
                                                     logs: io.StringIO) -> None:
    (tmp_path / "defaults").write_text("root=LABEL=fromimage rw init=/sbin/other\n")
    sysm = FakeSystem()
    with pytest.raises(HandedOff):
        run_boot(args_for(tmp_path, "init=/sbin/init"), sysm)
    assert any(c.startswith("mount_root") and "ro=False" in c for c in sysm.calls)
    assert sysm.calls[-1].endswith("/sbin/init")


def test_boot_args_ignore_what_the_kernel_passes_on() -> None:
    a = parse_boot_args(["splash", "--cmdline", "/x", "--crypttab=/y", "foo=bar"])
    assert (a.cmdline, a.crypttab, a.sysroot) == ("/x", "/y", "/sysroot")


def test_late_background_steps_wait_for_go(logs: io.StringIO) -> None:
    import threading

    from cryptboot.background import Background

    done: list[str] = []
    early_ran = threading.Event()

    def early() -> str:
        done.append("early")
        early_ran.set()
        return "e"

    bg = Background([("early", early, False), ("late", lambda: done.append("late"), True),
                     ("", lambda: done.append("quiet"), True)])
    assert early_ran.wait(10)
    threading.Event().wait(0.2)
    assert done == ["early"]  # the late steps wait for go()
    bg.go()
    bg.join()
    assert done == ["early", "late", "quiet"]
    text = logs.getvalue()
    assert "early (in the background): e; done in " in text
    assert "late ... (in the background, once the device is found)" in text
    assert "late (in the background): done in " in text
    assert text.count("(in the background") == 4  # the unnamed step is not reported


def test_found_device_lets_the_late_steps_start(tmp_path: Path, logs: io.StringIO) -> None:
    """With a volume, the late steps start when its device is found, before any key."""
    class Recording(FakeSystem):
        def unlocker(self, plan: Plan) -> Unlocker:
            u = super().unlocker(plan)
            calls = self.calls

            def unlock(volume: object, dev: object = None) -> None:
                calls.append("found")
                assert u.on_found is not None
                u.on_found(volume, "/dev/vdz9")  # type: ignore[arg-type]
                assert u.before_open is not None
                u.before_open()  # joins: the late steps have run
                calls.append("opened")

            u.unlock = unlock  # type: ignore[method-assign]
            return u

    sysm = Recording()
    with pytest.raises(HandedOff):
        run_boot(args_for(tmp_path, "root=/dev/mapper/r rd.luks.uuid=0a0a0a0a-0000-0000-0000-"
                                    "000000000000 rd.luks.name=0a0a0a0a-0000-0000-0000-"
                                    "000000000000=r"), sysm)
    c = sysm.calls
    assert c.index("found") < c.index("load_modules late") < c.index("opened")
    assert c.index("preload") < c.index("opened")
    # cryptsetup is started for the volume found, on its device, before the key is given
    assert c.index("load_modules late") < c.index("prepare_unlock r /dev/vdz9") < c.index("opened")


def test_cryptboot_error_keeps_its_hint(tmp_path: Path, logs: io.StringIO) -> None:
    class NoMount(FakeSystem):
        def mount_root(self, plan: Plan, device: str, target: str,
                       probed: str | None = None) -> None:
            raise CryptbootError("no filesystem found on /dev/vdz1", hint="give rootfstype=")

    assert run_boot(args_for(tmp_path, "root=LABEL=r"), NoMount(pid1=False)) == 1
    assert "hint: give rootfstype=" in logs.getvalue()


def test_boot_refuses_to_run_on_a_running_system() -> None:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "cryptboot", "boot"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 1
    assert "cryptboot boot runs as /init (PID 1) of an initramfs; this is PID" in proc.stderr
    assert "cryptboot unlock" in proc.stderr and "Traceback" not in proc.stderr


# --- mounting the root (fake fsck / blkid on PATH, mount(2) recorded) ------------------------


@pytest.fixture
def fake_tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    for tool in ("mount", "fsck.ext4", "blkid"):
        (bin_dir / tool).write_text(
            f"#!/bin/sh\necho {tool} \"$@\" >> {calls}\n"
            f"f={tmp_path}/{tool}.out; [ -f $f ] && cat $f\n"
            f"f={tmp_path}/{tool}.rc; [ -f $f ] && exit $(cat $f)\nexit 0\n")
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")

    def mount2(source: str, target: str, fstype: str, flags: int, data: str | None) -> None:
        with open(calls, "a") as f:
            f.write(f"mount(2) {source} {target} {fstype} flags={flags:#x} data={data}\n")

    monkeypatch.setattr("cryptboot.syscalls.mount", mount2)
    return tmp_path


def test_mount_root_rw_runs_fsck_then_mounts_with_flags(fake_tools: Path,
                                                        logs: io.StringIO) -> None:
    from cryptboot.config.model import Root
    from cryptboot.mount import mount_root

    target = fake_tools / "sysroot"
    root = Root(None, None, readonly=False, flags="noatime,commit=60")
    assert mount_root(root, "/dev/mapper/root", str(target), probed="ext4") == "ext4"
    assert (fake_tools / "calls").read_text().splitlines() == [
        "fsck.ext4 -a /dev/mapper/root",
        f"mount(2) /dev/mapper/root {target} ext4 flags=0x400 data=commit=60",
    ]


def test_mount_root_ro_probes_the_type_and_skips_fsck(fake_tools: Path,
                                                      logs: io.StringIO) -> None:
    from cryptboot.config.model import Root
    from cryptboot.mount import mount_root

    (fake_tools / "blkid.out").write_text("ID_FS_TYPE=ext4\nID_FS_UUID=x\n")
    target = fake_tools / "sysroot"
    mount_root(Root(None), "/dev/vdz1", str(target))
    assert (fake_tools / "calls").read_text().splitlines() == [
        "blkid -p -o udev /dev/vdz1", f"mount(2) /dev/vdz1 {target} ext4 flags=0x1 data=None"]


def test_fsck_errors_it_could_not_fix_stop_the_mount(fake_tools: Path,
                                                     logs: io.StringIO) -> None:
    from cryptboot.config.model import Root
    from cryptboot.errors import CommandError
    from cryptboot.mount import mount_root

    (fake_tools / "fsck.ext4.rc").write_text("4")
    (fake_tools / "fsck.ext4.out").write_text("/dev/vdz1: UNEXPECTED INCONSISTENCY\n")
    with pytest.raises(CommandError) as exc:
        mount_root(Root(None, "ext4", readonly=False), "/dev/vdz1", str(fake_tools / "s"))
    assert "fsck.ext4 found errors on /dev/vdz1 it could not correct (exit 4)" in exc.value.message
    assert "UNEXPECTED INCONSISTENCY" in exc.value.message
    assert exc.value.hint and "by hand" in exc.value.hint
    assert "mount" not in (fake_tools / "calls").read_text()


def test_fsck_corrected_errors_are_fine(fake_tools: Path, logs: io.StringIO) -> None:
    from cryptboot.config.model import Root
    from cryptboot.mount import mount_root

    (fake_tools / "fsck.ext4.rc").write_text("1")
    mount_root(Root(None, "ext4", readonly=False), "/dev/vdz1", str(fake_tools / "s"))
    assert "fsck.ext4 corrected errors on /dev/vdz1" in logs.getvalue()


def test_no_filesystem_to_mount(fake_tools: Path, logs: io.StringIO) -> None:
    from cryptboot.config.model import Root
    from cryptboot.mount import mount_root

    with pytest.raises(CryptbootError, match="no filesystem found on /dev/vdz1") as exc:
        mount_root(Root(None), "/dev/vdz1", str(fake_tools / "s"))
    assert exc.value.hint and "rootfstype=" in exc.value.hint
