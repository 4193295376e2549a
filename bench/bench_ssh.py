"""SSH unlock benchmark (issue 14): what the network and dropbear cost before the prompt.

One LUKS2 disk, one kernel, the same QEMU flags for every boot (a virtio NIC on QEMU's user
network, ``restrict=on``, a forwarded loopback port), three cases side by side, round-robin:

- ``plain``: cryptboot's default image (no network, no dropbear);
- ``ssh image, ssh off``: the image with the NIC drivers and dropbear, ``cryptboot.ssh=0``
  (what the larger image alone costs);
- ``ssh on``: the same image with its default ``cryptboot.ssh=1``: DHCP and dropbear start
  beside the device wait.

Measured per boot (guest clock, as bench_boot): kernel start → console prompt, passphrase →
real init (the passphrase is typed on the console in every case), and for ``ssh on`` kernel
start → the SSH session showing the prompt (the client connects once the console prompt is
up). The goal: the console prompt is not delayed by SSH (ratio ≈ 1.0).
"""

from __future__ import annotations

import os
import socket
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.bench_boot import LUKS_UUID, PASSPHRASE, TYPE_DELAY, image_sizes, kernel, make_disk, sh

REPO = Path(__file__).resolve().parent.parent
PROMPT = rb"Please enter passphrase for disk root \(/dev/vda\): "


@dataclass
class Case:
    name: str
    image: Path
    append: str
    ssh: bool = False
    runs: list[dict[str, float]] = field(default_factory=list)
    failures: int = 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def boot(case: Case, kpath: Path, disk: Path, key: Path, logdir: Path, run: int) -> None:
    import pexpect

    port = free_port()
    u = LUKS_UUID
    argv = ["qemu-system-x86_64", "-accel", "tcg", "-cpu", "max", "-m", "512", "-nographic",
            "-nodefaults", "-serial", "stdio", "-no-reboot",
            "-netdev", f"user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{port}-:22",
            "-device", "virtio-net-pci,netdev=n0",
            "-kernel", str(kpath), "-initrd", str(case.image),
            "-append", f"console=ttyS0 panic=-1 quiet root=/dev/mapper/root rd.luks.uuid={u} "
                       f"rd.luks.name={u}=root rd.shell=0 rd.emergency=poweroff {case.append}",
            "-drive", f"file={disk},format=raw,if=virtio,snapshot=on"]
    tag = case.name.replace(" ", "-").replace(",", "")
    child = pexpect.spawn(argv[0], argv[1:], timeout=300, maxread=65536)
    child.logfile_read = open(logdir / f"{tag}-{run}.log", "wb")  # noqa: SIM115
    session = None
    try:
        child.expect(PROMPT)
        t_prompt = time.monotonic()
        t_ssh = None
        if case.ssh:
            for _ in range(60):
                session = pexpect.spawn("ssh", [
                    "-tt", "-p", str(port), "-i", str(key), "-o", "IdentitiesOnly=yes",
                    "-o", "UserKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=no",
                    "-o", "BatchMode=yes", "-o", "LogLevel=ERROR", "-F", "/dev/null",
                    "root@127.0.0.1"], timeout=120)
                if session.expect([PROMPT, pexpect.EOF]) == 0:
                    t_ssh = time.monotonic()
                    break
                session.close(force=True)
                session = None
                time.sleep(0.5)
        time.sleep(TYPE_DELAY)
        t_type = time.monotonic()
        child.send(PASSPHRASE + "\r")
        child.expect(rb"REAL_INIT_REACHED[\r\n]+\s*([0-9.]+) ")
        t_real = time.monotonic()
        up_real = float(child.match.group(1))
        child.expect(pexpect.EOF, timeout=60)
        r = {"prompt": up_real - (t_real - t_prompt), "unlock": t_real - t_type}
        if t_ssh is not None:
            r["ssh"] = up_real - (t_real - t_ssh)
        elif case.ssh:
            raise pexpect.TIMEOUT("no SSH prompt")
        case.runs.append(r)
    except (pexpect.TIMEOUT, pexpect.EOF):
        case.failures += 1
        print(f"bench_ssh: {case.name} run {run} failed, see {logdir}", file=sys.stderr)
    finally:
        if session is not None:
            session.close(force=True)
        child.close(force=True)
        child.logfile_read.close()


def _cell(case: Case, key: str) -> str:
    vals = sorted(r[key] for r in case.runs if key in r)
    if not vals:
        return "failed" if case.failures else "—"
    return f"{statistics.median(vals):.2f} ({vals[0]:.2f}–{vals[-1]:.2f})"


def _median(case: Case, key: str) -> float | None:
    vals = [r[key] for r in case.runs if key in r]
    return statistics.median(vals) if vals else None


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a is not None and b else "n/a"


def main() -> str:
    runs = int(os.environ.get("CRYPTBOOT_BENCH_RUNS", "3"))
    work = Path(os.environ.get("CRYPTBOOT_BENCH_DIR", REPO / "build" / "bench-ssh"))
    logdir = work / "logs"
    logdir.mkdir(parents=True, exist_ok=True)
    kpath, kver = kernel()
    print(f"bench_ssh: disk and images in {work}", file=sys.stderr, flush=True)
    disk, _ = make_disk(work)
    key = work / "id_bench"
    if not key.exists():
        sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)])
    common = [sys.executable, "-m", "cryptboot", "mkinitramfs", "--kver", kver, "--crypttab",
              "none", "--cache-dir", str(work / "pyc")]
    plain, with_ssh = work / "cryptboot.img", work / "cryptboot-ssh.img"
    env = dict(os.environ, CRYPTBOOT_SSH_KEY_DIR=str(work / "hostkeys"))
    sh([*common, "-o", str(plain)], env=env)
    sh([*common, "-o", str(with_ssh), "--network", "generic", "--ssh-authorized-keys",
        f"{key}.pub"], env=env)
    cases = [Case("plain", plain, ""), Case("ssh image, ssh off", with_ssh, "cryptboot.ssh=0"),
             Case("ssh on", with_ssh, "", ssh=True)]
    for r in range(runs):
        for case in cases:
            print(f"bench_ssh: run {r + 1}/{runs} {case.name}", file=sys.stderr, flush=True)
            boot(case, kpath, disk, key, logdir, r)
    base = cases[0]
    lines = [
        "## SSH unlock: the console prompt with and without the network and dropbear (QEMU TCG)",
        "",
        f"Kernel {kver}; one LUKS2 disk; `-accel tcg -cpu max -m 512` and a virtio NIC on the "
        f"user network in every boot; {runs} boots per case, round-robin; the passphrase typed "
        f"on the console {TYPE_DELAY} s after its prompt. Cells: median (min–max), seconds, "
        "guest clock.",
        "",
        "| case | kernel start → console prompt | kernel start → SSH prompt "
        "| passphrase → real init | image MiB (compressed) | prompt vs plain |",
        "|---|---|---|---|---|---|",
    ]
    for c in cases:
        lines.append(
            f"| {c.name} | {_cell(c, 'prompt')} | {_cell(c, 'ssh')} | {_cell(c, 'unlock')} "
            f"| {image_sizes(c.image)[0] / 2**20:.1f} "
            f"| {_ratio(_median(c, 'prompt'), _median(base, 'prompt'))} |"
            + (f" ({c.failures} failed boots)" if c.failures else ""))
    on = cases[2]
    lines += [
        "",
        f"Goal: the console prompt not delayed by SSH. This run: "
        f"{_ratio(_median(on, 'prompt'), _median(base, 'prompt'))} of the plain boot's time to "
        f"the prompt ({_ratio(_median(cases[1], 'prompt'), _median(base, 'prompt'))} with the "
        "larger image alone).",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(main())
