"""Device-wait latency: a loop device appears; how soon does cryptboot say it found it?

Peer: ``udevadm wait /dev/disk/by-uuid/UUID`` (systemd 251+), started in the same run for the
same device. Both run beside a private systemd-udevd (tests/root/udevns.py: its own net, mount
and pid namespaces), both are ready before the device appears, and the device is attached with
the loop ioctl at a random moment. Latency = from just before the ioctl to the moment the
waiter's process ends (each exits as soon as it has the device; cryptboot's waiter uses
``os._exit`` so interpreter teardown is not counted, udevadm is C). The median over the runs is
reported for each, and their ratio (goal: cryptboot at most 1.5x udevadm's).

A second series measures cryptboot's fallback mode (kernel uevents + blkid, no udevd involved)
in separate runs, for information.

``BENCH_DEVWAIT_RUNS`` sets the number of runs (default 25). Needs root and loop devices.
"""

from __future__ import annotations

import fcntl
import json
import os
import random
import select
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

LOOP_SET_FD = 0x4C00
LOOP_CLR_FD = 0x4C01
LOOP_CTL_GET_FREE = 0x4C82

WAITER = r"""
import os, sys
from cryptboot.config.model import DeviceSpec, SpecKind
from cryptboot.devices import DeviceWatcher
w = DeviceWatcher(sys.argv[2])
sys.stdout.write("ready\n"); sys.stdout.flush()
w.wait(DeviceSpec(SpecKind.UUID, sys.argv[1]), 30)
os._exit(0)
"""


def _attach(img: str) -> tuple[int, int]:
    """Attach ``img`` to a free loop device; returns (loop fd, image fd)."""
    ctl = os.open("/dev/loop-control", os.O_RDWR)
    try:
        n = fcntl.ioctl(ctl, LOOP_CTL_GET_FREE)
    finally:
        os.close(ctl)
    loop = os.open(f"/dev/loop{n}", os.O_RDWR)
    backing = os.open(img, os.O_RDWR)
    fcntl.ioctl(loop, LOOP_SET_FD, backing)
    return loop, backing


def _detach(loop: int, backing: int) -> None:
    try:
        fcntl.ioctl(loop, LOOP_CLR_FD, 0)
    finally:
        os.close(loop)
        os.close(backing)


def _start_waiter(fs_uuid: str, mode: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-c", WAITER, fs_uuid, mode], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != b"ready":
        raise RuntimeError("cryptboot waiter did not start")
    return proc


def _one_run(img: str, fs_uuid: str, with_peer: bool, mode: str) -> dict[str, float]:
    waiters: dict[str, subprocess.Popen[bytes]] = {"cryptboot": _start_waiter(fs_uuid, mode)}
    if with_peer:
        waiters["udevadm"] = subprocess.Popen(
            ["udevadm", "wait", "--timeout=30", f"/dev/disk/by-uuid/{fs_uuid}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.3 + random.random() * 0.3)  # both ready (udevadm has no ready signal)
    pidfds = {os.pidfd_open(p.pid): name for name, p in waiters.items()}
    poller = select.poll()
    for fd in pidfds:
        poller.register(fd, select.POLLIN)
    t0 = time.monotonic()
    loop, backing = _attach(img)
    done: dict[str, float] = {}
    try:
        while len(done) < len(pidfds):
            events = poller.poll(30_000)
            now = time.monotonic()
            if not events:
                raise RuntimeError(f"no answer within 30 s (have {sorted(done)})")
            for fd, _ in events:
                done[pidfds[fd]] = now - t0
                poller.unregister(fd)
    finally:
        for p in waiters.values():
            if p.poll() is None:
                p.kill()
            p.wait()
        for fd in pidfds:
            os.close(fd)
        _detach(loop, backing)
        subprocess.run(["udevadm", "settle", "--timeout=10"], check=False)
    for name, p in waiters.items():
        if p.returncode != 0:
            raise RuntimeError(f"{name} waiter failed with exit status {p.returncode}")
    return done


def inner(runs: int) -> None:
    """Runs beside the private udevd; prints the samples as JSON."""
    with tempfile.TemporaryDirectory() as tmp:
        img = os.path.join(tmp, "dev.img")
        fs_uuid = str(uuid.uuid4())
        with open(img, "wb") as f:
            f.truncate(4 * 1024 * 1024)
        subprocess.run(["mkfs.ext4", "-q", "-F", "-U", fs_uuid, img], check=True)
        samples: dict[str, list[float]] = {"cryptboot": [], "udevadm": [], "kernel": []}
        for i in range(runs):
            both = _one_run(img, fs_uuid, True, "udev")
            samples["cryptboot"].append(both["cryptboot"])
            samples["udevadm"].append(both["udevadm"])
            if i % 2 == 0:
                samples["kernel"].append(_one_run(img, fs_uuid, False, "kernel")["cryptboot"])
    print(json.dumps(samples))


def main() -> str:
    sys.path.insert(0, str(REPO))
    from tests.root.udevns import wrap

    runs = int(os.environ.get("BENCH_DEVWAIT_RUNS", "25"))
    argv = wrap([sys.executable, str(Path(__file__).resolve()), "--inner", str(runs)])
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
    if proc.returncode != 0:
        raise RuntimeError(f"bench_devwait failed: {proc.stderr.strip()[-2000:]}")
    samples = json.loads(proc.stdout.strip().splitlines()[-1])
    med = {k: statistics.median(v) * 1000 for k, v in samples.items() if v}
    ratio = med["cryptboot"] / med["udevadm"]
    verdict = "meets" if ratio <= 1.5 else "misses"
    return "\n".join([
        "## Device wait latency (bench_devwait)",
        "",
        f"Loop device attached at a random moment; time until the waiter reports it found "
        f"(process exit), median of {len(samples['cryptboot'])} runs, beside a private "
        "systemd-udevd.",
        "",
        "| waiter | median (ms) | ratio to udevadm wait |",
        "|---|---:|---:|",
        f"| `udevadm wait /dev/disk/by-uuid/…` (peer) | {med['udevadm']:.1f} | 1.00 |",
        f"| cryptboot, udev mode (same runs) | {med['cryptboot']:.1f} | {ratio:.2f} |",
        f"| cryptboot, kernel-uevent + blkid mode (separate runs, "
        f"{len(samples['kernel'])}) | {med['kernel']:.1f} | "
        f"{med['kernel'] / med['udevadm']:.2f} |",
        "",
        f"Goal: cryptboot at most 1.5x udevadm wait; this run {verdict} it ({ratio:.2f}x).",
    ])


if __name__ == "__main__":
    if sys.argv[1:2] == ["--inner"]:
        inner(int(sys.argv[2]))
    else:
        print(main())
