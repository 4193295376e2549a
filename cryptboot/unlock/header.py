"""Detached LUKS headers: ``header=PATH:DEVICE`` lives on another device, mounted read-only
while cryptsetup reads it; ``header=/dev/...`` is a device to wait for; a path alone is inside
the image."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

from cryptboot.config.model import DeviceSpec, SpecKind, Volume
from cryptboot.errors import CryptbootError
from cryptboot.paths import RUN_DIR

HEADER_MOUNT = RUN_DIR + "/header-{name}"


@contextmanager
def header_for(volume: Volume, wait_node: Callable[[DeviceSpec, float | None], str],
               timeout: float | None) -> Iterator[Volume]:
    """``volume`` with ``header=`` naming a file cryptsetup can read, for the ``with`` block."""
    opts = volume.options
    hdev = opts.header_device
    if hdev is None and opts.header and opts.header.startswith("/dev/"):
        node = wait_node(DeviceSpec(SpecKind.PATH, opts.header), timeout)
        yield volume._replace(options=opts._replace(header=node))
        return
    if hdev is None:
        yield volume
        return
    node = wait_node(hdev, timeout)
    if not opts.header:
        yield volume._replace(options=opts._replace(header=node))
        return
    from cryptboot.syscalls import mounted_readonly

    with ExitStack() as stack:
        try:
            where = stack.enter_context(
                mounted_readonly(node, HEADER_MOUNT.format(name=volume.name)))
        except OSError as e:
            raise CryptbootError(f"cannot mount {node}, which holds the header of "
                                 f"{volume.name}: {e.strerror}") from None
        path = os.path.join(where, opts.header.lstrip("/"))
        yield volume._replace(options=opts._replace(header=path))
