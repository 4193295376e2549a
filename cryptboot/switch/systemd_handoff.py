"""Hand systemd the time the initramfs started, as systemd's own initrd does.

When the new root's init is systemd, systemd counts everything before it started as the
kernel's ("Startup finished in 7.4s (kernel) + 20.3s (userspace)"), unless it is told when the
initramfs began. systemd's initrd tells its successor by serialization: PID 1 of the initrd
execs the real systemd with ``--switched-root --system --deserialize FD``, FD holding the
manager's state as ``key=value`` lines, the header ended by an empty line. The successor reads
``initrd-timestamp=REALTIME MONOTONIC`` (microseconds) from it, and ``systemd-analyze`` then
shows "(initrd)". ``--switched-root`` also tells it that this is the first start after an
initrd (so it still does its full first-start setup, and does not take this for a re-exec).
booster passes the same line in a memfd.

The timestamp is the moment the kernel started the initramfs's init: the kernel's "Run /init as
init process" record in ``/dev/kmsg`` (its timestamp is in the kernel's monotonic clock). If
it cannot be found, nothing is passed and systemd starts as before.

systemd is detected by what ``init`` resolves to inside the new root (Debian's
``/sbin/init -> /lib/systemd/systemd``): a regular file named ``systemd``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

from cryptboot import log
from cryptboot.switch.switch_root import resolve_in_root

KMSG = "/dev/kmsg"
# the kernel's record, "PRI,SEQ,USEC,FLAGS;Run /init as init process"
RUN_PREFIX, RUN_SUFFIX = "Run ", " as init process"
SWITCH_ARGS = ("--switched-root", "--system", "--deserialize")


def is_systemd(newroot: str, init: str) -> bool:
    """``init`` (as seen from inside ``newroot``) is systemd's manager binary."""
    try:
        host = resolve_in_root(newroot, init)
    except OSError:
        return False
    return os.path.basename(host) == "systemd" and os.path.isfile(host)


def init_started_usec(kmsg: str = KMSG) -> int | None:
    """CLOCK_MONOTONIC (µs) when the kernel ran the initramfs's init, from its log record."""
    try:
        fd = os.open(kmsg, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        while True:
            try:
                rec = os.read(fd, 8192)
            except BlockingIOError:
                return None  # the end of the buffer: not found
            except OSError as e:
                if e.errno == 32:  # EPIPE: records overwritten meanwhile; go on reading
                    continue
                return None
            if not rec:
                return None
            head, sep, text = rec.decode(errors="replace").partition(";")
            if sep and text.startswith(RUN_PREFIX) and RUN_SUFFIX in text.split("\n")[0]:
                fields = head.split(",")
                if len(fields) >= 3 and fields[2].isdigit():
                    return int(fields[2])
    finally:
        os.close(fd)


def serialization(monotonic_usec: int) -> bytes:
    """systemd's serialization header with only the initrd timestamp."""
    now_mono = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    now_real = time.clock_gettime_ns(time.CLOCK_REALTIME) // 1000
    realtime = now_real - (now_mono - monotonic_usec)
    return f"initrd-timestamp={realtime} {monotonic_usec}\n\n".encode()


def init_args(newroot: str, init: str, args: Sequence[str], *, kmsg: str = KMSG) -> list[str]:
    """The arguments to exec ``init`` with: for systemd, the serialization arguments first
    (the memfd stays open across the exec); otherwise ``args`` unchanged."""
    if not is_systemd(newroot, init) or any(a in SWITCH_ARGS for a in args):
        return list(args)
    started = init_started_usec(kmsg)
    if started is None:
        log.debug(f"no 'Run ... as init process' record in {kmsg}: systemd is not told when "
                  "the initramfs started")
        return list(args)
    fd = os.memfd_create("cryptboot-serialization", 0)  # no MFD_CLOEXEC: systemd reads it
    os.write(fd, serialization(started))
    os.lseek(fd, 0, os.SEEK_SET)
    log.info(f"{init} is systemd: handing it the initramfs start ({started / 1e6:.3f} s after "
             f"kernel start) with --switched-root --deserialize {fd}")
    return ["--switched-root", "--system", "--deserialize", str(fd), *args]
