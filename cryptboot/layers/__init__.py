"""Storage layers: what turns the block devices that appear into the ones the plan needs.

A layer claims devices from the device event stream and may produce new ones: crypt opens a
LUKS, plain or cgd device as a mapping; an md layer would assemble members into an array, an
LVM layer physical volumes into logical volumes. Every block device any wait sees (enumerated,
or from a udev event) is offered to every layer in play (:meth:`Layer.offer`); what a layer
produces comes back as udev events through the same stream, so stacks of any depth (RAID ->
LUKS -> LVM -> root) need no special case. The boot ends its waits when the root's spec, and
every volume the plan needs, has matched a device, wherever in the stack it appears.

Adding a layer is a module with a ``layer(plan, program)`` factory plus one line in
:data:`LAYERS`; the plan's ``layers`` say which are in play, so a boot that does not use one
never imports it::

    class Lvm(Layer):
        name = "lvm"

        def offer(self, dev: BlockDevice) -> None:
            if dev.get("ID_FS_TYPE") == "LVM2_member":
                run(["lvm", "pvscan", "--cache", "--activate", "ay", dev.node])

    def layer(plan: Plan, program: str) -> Layer:
        return Lvm()
"""

from __future__ import annotations

import importlib
import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from cryptboot.config.model import Plan
    from cryptboot.devices import BlockDevice

# layer name -> its module; "crypt" is always in play (cryptboot.layers.crypt); the others
# (issue 12) only when the plan names them (Plan.layers, less rd.lvm=0 / rd.md=0) and their
# program is in the image: the plain LUKS image has no lvm/mdadm, so its boot never imports them
LAYERS: dict[str, str] = {
    "crypt": "cryptboot.layers.crypt",
    "lvm": "cryptboot.layers.lvm",
    "md": "cryptboot.layers.md",
    "btrfs": "cryptboot.layers.btrfs",
}
# the program a layer runs: no program in the image (or on this system), no layer
TOOLS = {"lvm": "lvm", "md": "mdadm", "btrfs": "btrfs"}
TOOL_DIRS = ("/usr/sbin", "/usr/bin", "/sbin", "/bin")


def tool(name: str) -> str | None:
    """The path of a layer's program, or None (a few stat calls, no import)."""
    prog = TOOLS.get(name, name)
    for d in TOOL_DIRS:
        path = f"{d}/{prog}"
        if os.access(path, os.X_OK):
            return path
    return None


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


def load(plan: Plan, names: tuple[str, ...] | None = None) -> list[Layer]:
    """The layers in play for ``plan`` (besides crypt) whose program is installed, each module
    imported only then; a module's ``layer(plan, program)`` may decline with None."""
    out: list[Layer] = []
    for name in plan.layers if names is None else names:
        module = LAYERS.get(name)
        prog = tool(name)
        if name == "crypt" or module is None or prog is None:
            continue
        made: Layer | None = importlib.import_module(module).layer(plan, prog)
        if made is not None:
            out.append(made)
    return out
