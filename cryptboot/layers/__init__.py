"""Storage layers: LVM, md RAID and multi-device btrfs, fed by the device event stream.

Every block device a wait sees (enumerated, or from a udev/kernel event) is offered to every
layer in play (:meth:`Layer.offer`); a layer claims the devices it knows (an LVM physical volume,
an md member) and activates what they make up. The devices it produces (an LV, an array) come
back through the same stream, so a stack of any depth (md -> LUKS -> LVM -> root) needs no
special case. While a wait goes on, :meth:`Layer.tick` is called about twice a second (md
starts an incomplete array degraded in the timeout's last third); :meth:`Layer.seen` says what
the layer saw, for a timeout message; :meth:`Layer.close` runs before the hand-off.

A layer is in play when the plan names it (``Plan.layers``, less ``rd.lvm=0``/``rd.md=0``) and
its tool is in the image: the plain LUKS image has no ``lvm``/``mdadm``, so its boot never
imports these modules (issue 12; the registry has the shape of issue 11's ``LAYERS``).
"""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:  # not imported at run time: typing is slow to import
    from typing import Protocol

    from cryptboot.config.model import Plan
    from cryptboot.devices import BlockDevice

    class Layer(Protocol):
        name: str

        def offer(self, dev: BlockDevice) -> None: ...

        def tick(self, waited: float, timeout: float | None) -> None: ...

        def seen(self) -> str: ...

        def close(self) -> None: ...

LAYERS = {"lvm": "cryptboot.layers.lvm", "md": "cryptboot.layers.md",
          "btrfs": "cryptboot.layers.btrfs"}
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


def load(plan: Plan, names: tuple[str, ...] | None = None) -> list[Layer]:
    """The layers in play for ``plan`` whose program is installed, each module imported only
    then."""
    out: list[Layer] = []
    for name in plan.layers if names is None else names:
        module = LAYERS.get(name)
        prog = tool(name)
        if module is None or prog is None:
            continue
        mod = __import__(module, fromlist=["layer"])
        layer = mod.layer(plan, prog)
        if layer is not None:
            out.append(layer)
    return out
