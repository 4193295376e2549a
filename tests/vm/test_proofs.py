"""Real boots for behaviours that had no proof (issue 16), several facts to a boot.

- ``arch``: Arch's ``cryptdevice=PARTUUID=…:root`` and ``cryptkey=LABEL=keys:ext4:/keyfile``
  (a LUKS2 partition of a GPT disk, found by its PARTUUID, opened by a keyfile on another disk),
  ``rd.break=pre-mount`` (the shell sees the mapping and no root yet; leaving it continues),
  ``rw`` (fsck ran: the check forced by the mount count reset it and set the last-check time),
  and the dmesg timeline (the real init reads ``dmesg`` and finds every step).
- ``systemd``: ``luks.uuid=``/``luks.name=``/``luks.options=timeout=5``: the prompt gives up
  after at least 5 s, says so, asks again, and the passphrase boots.
- ``debian``: ``cryptopts=target=root,source=UUID=…,luks`` boots.
- ``retry``: a device that never appears with ``rd.retry=5``: the failure comes no sooner than
  5 s after the wait began (kernel timestamps), then ``rd.emergency=reboot`` restarts.
- ``argon2``: a keyslot needing 1 GiB of Argon2 memory in a ``-m 256`` guest: the message, no
  out-of-memory kill, then ``rd.emergency=halt`` halts.
- the demo: ``tools/demo.sh`` in a scratch ``DEMO_DIR``, through the greeting and the poweroff.

The boots that reach the real init also show that the switch's ``pivot_root(".", ".") refused``
line (the expected path in an initramfs) is logged at debug level: in dmesg, not on the console.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import pexpect
import pytest

from cryptboot.steps import STEPS as STEPS_RUN
from tests.conftest import REPO
from tests.vm.conftest import (
    FS_UUID,
    KEYFILE,
    LUKS_UUID,
    PASSPHRASE,
    REAL_INIT,
    TYPE_DELAY,
    Machine,
    Vm,
    luks_args,
    luks_encrypt,
    make_ext4,
    make_root_tree,
    sh,
)

pytestmark = pytest.mark.vm

PROMPT = r"Please enter passphrase for disk root \(/dev/vda\): "
PARTUUID = "5e1f0000-aaaa-4bbb-8ccc-0000000000a1"
# The real init also prints cryptboot's lines from dmesg and the root's ext4 superblock fields
# (s_mnt_count at 0x34, s_lastcheck at 0x40) read from its dm device.
EXTRA_FACTS = r"""
dmesg -r | grep 'cryptboot:' | sed 's/^/DMESG /'
blk=$(basename "$(readlink /sys/dev/block/$dev)")
sb() { dd if=/dev/$blk bs=1 skip=$((1024 + $1)) count=$2 2>/dev/null | od -An -tu$2 | tr -d ' '; }
echo "FACT sb mntcount=$(sb 52 2) lastcheck=$(sb 64 4)"
"""
# every step of cryptboot's boot as the log names it: the two before the plan (boot.py), every
# named step of steps.STEPS that this plan does not skip (those with a `when` are optional
# features: keymap, network), and the hand-off
STEPS = ("mount API filesystems", "read the boot plan",
         *(s.name for s in STEPS_RUN if s.name and s.when is None), "handing off to /sbin/init")
NOISE = 'pivot_root(".", ".") refused'


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("proofs")


@pytest.fixture(scope="module")
def proof_root(work: Path) -> Path:
    """LUKS2 (passphrase + :data:`KEYFILE`) around an ext4 root whose init prints the extra
    facts, mounted 5 times of at most 1 without a check (last checked 2000-01-01): fsck -a must
    run a full check before a read-write mount."""
    tree = make_root_tree(work / "tree")
    (tree / "sbin/init").write_text(REAL_INIT.replace('echo "REAL_INIT_DONE"',
                                                      EXTRA_FACTS + 'echo "REAL_INIT_DONE"'))
    img = make_ext4(work / "root.img", tree, label="realroot", uuid=FS_UUID)
    sh(["tune2fs", "-c", "1", "-C", "5", "-T", "20000101", str(img)])
    luks_encrypt(img, uuid=LUKS_UUID)
    (work / "keyfile").write_bytes(KEYFILE)
    (work / "pw").write_text(PASSPHRASE)
    sh(["cryptsetup", "luksAddKey", "-q", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations",
        "1000", "--key-file", str(work / "pw"), str(img), str(work / "keyfile")])
    return img


@pytest.fixture(scope="module")
def gpt_disk(work: Path, proof_root: Path) -> Path:
    """A GPT disk whose first partition (PARTUUID :data:`PARTUUID`, at 1 MiB) holds the root."""
    disk = work / "gpt.img"
    size = proof_root.stat().st_size
    with open(disk, "wb") as f:
        f.truncate(size + (2 << 20))
    sh(["sfdisk", "-q", str(disk)], input=(
        f"label: gpt\nstart=2048, size={size // 512}, type=linux, uuid={PARTUUID}\n").encode())
    sh(["dd", f"if={proof_root}", f"of={disk}", "bs=1M", "seek=1", "conv=notrunc,fsync",
        "status=none"])
    return disk


def facts_and_dmesg(vm: Vm) -> tuple[dict[str, str], str]:
    facts = vm.real_init()
    text = vm.transcript.replace("\r", "")
    m = re.search(r"FACT sb mntcount=(\d+) lastcheck=(\d+)", text)
    if m:
        facts.update(mntcount=m.group(1), lastcheck=m.group(2))
    dmesg = "\n".join(line for line in text.splitlines() if line.startswith("DMESG "))
    return facts, dmesg


def priorities(dmesg: str, text: str) -> set[int]:
    """The syslog priorities of the raw dmesg lines (``<PRI>[time] text``) holding ``text``."""
    return {int(m.group(1)) % 8 for m in re.finditer(r"^DMESG <(\d+)>[^\n]*", dmesg, re.M)
            if text in m.group(0)}


def console_part(vm: Vm) -> str:
    """The transcript up to the real init (what the boot itself printed)."""
    return vm.transcript.split("REAL_INIT_REACHED")[0]


def test_arch_partuuid_keyfile_break_fsck_timeline(machine: Machine, image: Path,
                                                   gpt_disk: Path, keys_disk: Path,
                                                   vm_cleanup: list[Vm]) -> None:
    started = time.time()
    vm = machine.boot("proof-arch", image, [gpt_disk, keys_disk],
                      f"cryptdevice=PARTUUID={PARTUUID}:root cryptkey=LABEL=keys:ext4:/keyfile "
                      "root=/dev/mapper/root rw rd.break=pre-mount rd.emergency=poweroff")
    vm_cleanup.append(vm)
    vm.expect(r"rd.break=pre-mount: starting a shell")
    vm.expect(r"cryptboot# ")
    # in the shell: the mapping is there (opened from the partition), the root not yet mounted
    vm.type("echo BRK $(ls /dev/mapper | tr '\\n' ' ') $(grep -c ' /sysroot ' /proc/mounts) "
            "$(cat /sys/class/block/vda1/partition)")
    vm.expect(r"BRK control root 0 1")
    vm.type("exit")
    facts, dmesg = facts_and_dmesg(vm)
    console = console_part(vm)
    assert facts["pid"] == "1" and facts["root_dm"] == "root", console
    assert facts["root_options"].split(",")[0] == "rw", facts
    assert "Please enter passphrase" not in console, console   # the Arch cryptkey= opened it
    assert facts["uuids"] == f"CRYPT-LUKS2-{LUKS_UUID.replace('-', '')}-root", facts
    # fsck ran: the forced check reset the mount count (1 = this mount) and dated itself now
    assert facts["mntcount"] == "1", facts
    assert int(facts["lastcheck"]) >= started - 3600, facts
    for step in STEPS:
        assert f"cryptboot: {step}" in dmesg, f"{step!r} not in dmesg:\n{dmesg}"
    # the switch's expected fallback is in the kernel log at debug level (priority 7), and so
    # not on the console
    assert priorities(dmesg, NOISE) == {7}, dmesg
    assert priorities(dmesg, "cryptboot: unlock volumes: done") == {6}, dmesg
    assert NOISE not in console, console


def test_systemd_dialect_prompt_timeout(machine: Machine, image: Path, proof_root: Path,
                                        vm_cleanup: list[Vm]) -> None:
    vm = machine.boot("proof-systemd", image, [proof_root],
                      f"luks.uuid={LUKS_UUID} luks.name={LUKS_UUID}=root luks.options=timeout=5 "
                      "root=/dev/mapper/root rd.emergency=poweroff rd.shell=0")
    vm_cleanup.append(vm)
    vm.expect(PROMPT)
    t0 = time.monotonic()
    vm.expect(r"no passphrase entered within 5 s for root \(try 1 of 3\)")
    waited = time.monotonic() - t0
    assert waited >= 5.0 - TYPE_DELAY, f"gave up after {waited:.2f} s, before timeout=5"
    vm.expect(PROMPT)
    vm.type(PASSPHRASE)
    facts, _ = facts_and_dmesg(vm)
    assert facts["pid"] == "1" and facts["root_dm"] == "root", vm.transcript
    assert NOISE not in console_part(vm)


def test_debian_cryptopts(machine: Machine, image: Path, proof_root: Path,
                          vm_cleanup: list[Vm]) -> None:
    vm = machine.boot("proof-debian", image, [proof_root],
                      f"cryptopts=target=root,source=UUID={LUKS_UUID},luks "
                      "root=/dev/mapper/root rd.emergency=poweroff rd.shell=0")
    vm_cleanup.append(vm)
    vm.expect(PROMPT)
    vm.type(PASSPHRASE)
    facts, _ = facts_and_dmesg(vm)
    assert facts["pid"] == "1" and facts["root_dm"] == "root", vm.transcript
    assert facts["root_options"].split(",")[0] == "ro", facts
    assert NOISE not in console_part(vm)


def stamp(text: str, pattern: str) -> float:
    """The kernel timestamp of the first console line matching ``pattern``."""
    m = re.search(r"\[\s*(\d+\.\d+)\] [^\n]*" + pattern, text)
    assert m, f"no timestamped line matching {pattern!r}:\n{text[-6000:]}"
    return float(m.group(1))


def test_rd_retry_honoured_then_reboot(machine: Machine, image: Path, proof_root: Path,
                                       vm_cleanup: list[Vm]) -> None:
    missing = "5e1f0000-dead-4bbb-8ccc-00000000beef"
    vm = machine.boot("proof-retry", image, [proof_root],
                      f"root=/dev/mapper/root {luks_args(missing)} rd.retry=5 rd.shell=0 "
                      "rd.emergency=reboot")
    vm_cleanup.append(vm)
    vm.expect(rf"device UUID={missing} did not appear")
    vm.expect(r"reboot: Restarting system")
    vm.wait_exit(30)
    text = vm.transcript.replace("\r", "")
    # the wait began once both the unlock step and the device watcher had started
    began = max(stamp(text, r"cryptboot: unlock volumes \.\.\."),
                stamp(text, r"cryptboot: waiting for devices"))
    failed = stamp(text, r"did not appear")
    assert failed - began >= 5.0, f"failed {failed - began:.2f} s after the wait began"
    assert "REAL_INIT_REACHED" not in text


@pytest.fixture(scope="module")
def argon2_root(work: Path, proof_root: Path) -> Path:
    """The root with its only passphrase keyslot converted to Argon2id with 1 GiB of memory
    (and the keyfile slot removed): more than a 256 MiB guest has."""
    img = work / "root-argon2-1g.img"
    shutil.copyfile(proof_root, img)
    sh(["cryptsetup", "luksKillSlot", "-q", str(img), "1"])
    sh(["cryptsetup", "luksConvertKey", "-q", "--key-file", str(work / "pw"), "--pbkdf",
        "argon2id", "--pbkdf-memory", str(1 << 20), "--pbkdf-force-iterations", "4",
        "--pbkdf-parallel", "1", str(img)])
    dump = sh(["cryptsetup", "luksDump", str(img)])
    assert "argon2id" in dump and "1048576" in dump, dump
    return img


def test_argon2_memory_check_then_halt(machine: Machine, image: Path, argon2_root: Path,
                                       vm_cleanup: list[Vm]) -> None:
    vm = machine.boot("proof-argon2", image, [argon2_root],
                      f"root=/dev/mapper/root {luks_args()} rd.shell=0 rd.emergency=halt",
                      extra=["-m", "256"])
    vm_cleanup.append(vm)
    vm.expect(PROMPT)
    vm.type(PASSPHRASE)
    vm.expect(r"cannot unlock root: its LUKS2 keyslot 0 needs 1024 MiB of memory for Argon2 "
              r"but only \d+ MiB are available")
    vm.expect(r"reboot: System halted")
    vm.close()  # a halted machine stays up: stop QEMU
    text = vm.transcript
    assert re.search(r"Memory: \d+K/2\d{5}K available", text), "not a 256 MiB guest"
    for oom in ("Out of memory", "oom-kill", "Killed process"):
        assert oom not in text, text[-6000:]
    assert "REAL_INIT_REACHED" not in text


def test_demo(tmp_path: Path, vm_cleanup: list[Vm]) -> None:
    """``make demo``'s script, as a person would use it, in a scratch DEMO_DIR."""
    log = tmp_path / "demo.log"
    env = dict(os.environ, DEMO_DIR=str(tmp_path / "demo"))
    child = pexpect.spawn("bash", [str(REPO / "tools/demo.sh")], env=env, cwd=str(REPO),
                          timeout=300, maxread=65536, searchwindowsize=None)
    child.logfile_read = open(log, "wb")  # noqa: SIM115 (closed with the child)
    vm = Vm(child, time.monotonic() + 600, log)
    vm_cleanup.append(vm)
    vm.expect(r"At \"Please enter passphrase for disk root\", type:\s+(\S+)")
    passphrase = child.match.group(1).decode()
    vm.expect(PROMPT.replace("vda", "vd[a-z]"))
    vm.type(passphrase)
    vm.expect(r"Hello from the real root!  I am /sbin/init, PID 1\.")
    vm.expect(r"/ is /dev/mapper/root, unlocked by cryptboot\.")
    vm.expect(r"cryptboot: unlock volumes: [^\r\n]*done in")  # the timeline from dmesg
    vm.expect(r"Press Enter to power off")
    vm.type("")
    vm.expect(r"reboot: Power down")
    vm.wait_exit(60)
    assert (tmp_path / "demo/disk.img").is_file() and (tmp_path / "demo/initrd.img").is_file()
    assert NOISE not in vm.transcript  # neither on the console nor in the greeting's timeline
