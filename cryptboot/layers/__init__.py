"""Storage layers: what turns the block devices that appear into the ones the plan needs.

A layer claims devices from the device event stream and may produce new ones: crypt opens a
LUKS, plain or cgd device as a mapping; an md layer would assemble members into an array, an
LVM layer physical volumes into logical volumes. Every block device any wait sees (enumerated,
or from a udev event) is offered to every layer in play (:meth:`Layer.offer`); what a layer
produces comes back as udev events through the same stream, so stacks of any depth (RAID ->
LUKS -> LVM -> root) need no special case. The boot ends its waits when the root's spec, and
every volume the plan needs, has matched a device, wherever in the stack it appears.

Adding a layer is a module with a ``layer(plan, ctx)`` factory plus one line in
:data:`LAYERS`; the plan's ``layers`` say which are in play, so a boot that does not use one
never imports it::

    class Lvm(Layer):
        name = "lvm"

        def offer(self, dev: BlockDevice) -> None:
            if dev.get("ID_FS_TYPE") == "LVM2_member":
                run(["lvm", "pvscan", "--cache", "--activate", "ay", dev.node])

    def layer(plan: Plan, ctx: LayerContext) -> Layer:
        return Lvm()
"""

from __future__ import annotations

import importlib

TYPE_CHECKING = False
if TYPE_CHECKING:
    from cryptboot.config.model import Plan
    from cryptboot.devices import BlockDevice

# layer name -> its module; "crypt" is always in play (cryptboot.layers.crypt)
LAYERS: dict[str, str] = {
    "crypt": "cryptboot.layers.crypt",
}


class LayerContext:
    """What layers get from the boot: the plan's timeouts, and a way to wait for devices."""

    __slots__ = ("plan", "watcher")

    def __init__(self, plan: Plan, watcher: object = None) -> None:
        self.plan = plan
        self.watcher = watcher


class Layer:
    """One storage layer; every method has a do-nothing default."""

    name = "layer"

    def offer(self, dev: BlockDevice) -> None:
        """A device appeared or changed: claim and activate it, or ignore it. Runs inside the
        device wait, so it must not block for long (start a command, do not wait for a
        device)."""

    def tick(self, waited: float, timeout: float | None) -> None:
        """Called about twice a second while a wait goes on (an md layer starts an incomplete
        array degraded in the timeout's last third)."""

    def seen(self) -> str:
        """What it saw, for the message when a device never appears (e.g. the VGs and PVs)."""
        return ""

    def close(self) -> None:
        """Before the hand-off."""


def load(name: str, plan: Plan, ctx: LayerContext) -> Layer:
    """The layer ``name`` (imports its module now)."""
    if name not in LAYERS:
        from cryptboot.errors import CryptbootError

        raise CryptbootError(f"unknown storage layer {name!r} (known: {', '.join(LAYERS)})")
    made: Layer = importlib.import_module(LAYERS[name]).layer(plan, ctx)
    return made
