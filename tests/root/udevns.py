"""Run a command next to a real ``systemd-udevd``, fenced off from the host.

udevd must never run in the host's own namespaces (it could rename this machine's network
interface). :func:`wrap` returns an argv that runs ``CMD`` inside ``unshare --net --mount --pid``
with a private tmpfs on ``/run`` (udevd's database and control socket) and private tmpfs on
``/dev/disk``, ``/dev/block`` and ``/dev/char`` (the links udevd makes), starts udevd there,
triggers only the ``block`` subsystem and waits for that trigger to finish. When ``CMD`` exits,
the namespace's PID 1 exits and the kernel kills udevd with it.

Kernel uevents reach a network namespace owned by the initial user namespace, so the udevd in
there sees the host's loop devices appear.

As a script: ``python tests/root/udevns.py CMD [ARGS...]``.
"""

from __future__ import annotations

import os
import shutil
import sys

# Runs as PID 1 of the new pid namespace (sh), with $@ = CMD.
INNER = r"""
set -e
mount --make-rprivate /
mount -t tmpfs -o mode=0755 cryptboot-udevns /run
for d in /dev/disk /dev/block /dev/char; do mount -t tmpfs -o mode=0755 cryptboot-udevns "$d"; done
"$UDEVD" --daemon --resolve-names=never
udevadm trigger --subsystem-match=block --action=add
udevadm settle --timeout=30
set +e
"$@"
rc=$?
udevadm control --exit >/dev/null 2>&1
exit $rc
"""


def find_udevd() -> str:
    for path in ("/lib/systemd/systemd-udevd", "/usr/lib/systemd/systemd-udevd"):
        if os.access(path, os.X_OK):
            return path
    found = shutil.which("systemd-udevd")
    if found is None:
        raise RuntimeError("systemd-udevd not found (apt-get install udev)")
    return found


def prepare_host() -> None:
    """Mount points for the private tmpfs: empty directories in the host's /dev."""
    for d in ("/dev/disk", "/dev/block", "/dev/char"):
        os.makedirs(d, exist_ok=True)


def wrap(argv: list[str]) -> list[str]:
    """The argv running ``argv`` beside a private udevd (see the module docstring)."""
    prepare_host()
    return ["env", f"UDEVD={find_udevd()}", "unshare", "--net", "--mount", "--pid", "--fork",
            "--mount-proc", "--propagation", "private", "sh", "-c", INNER, "udevns", *argv]


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.stderr.write("usage: udevns.py CMD [ARGS...]\n")
        sys.exit(2)
    args = wrap(sys.argv[1:])
    os.execvp(args[0], args)
