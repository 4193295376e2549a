"""What sits on what, from the plan alone (issue 12): the root (and the resume device) down
through LVM, LUKS and md to the devices named on the command line and in crypttab.

No device is looked at: a mapping named by a volume is that volume; ``/dev/VG/LV`` and
``/dev/mapper/VG-LV`` (with LVM in play) are an LV of a VG whose PVs are whatever devices carry
that VG; ``/dev/md*`` and ``/dev/disk/by-id/md-uuid-*`` are md arrays assembled from their
members. A spec the plan cannot resolve by name (``UUID=``, a VG's PVs) is shown on the
volumes that no other node uses, marked "one of" (a btrfs may span all of them): the plan
knows they are unlocked, not what they hold. ``cryptboot plan`` prints the tree (text) and
puts it under ``"stack"`` (JSON).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from cryptboot.config.model import DeviceSpec, Plan, SpecKind, Volume

MD_UUID_LINK = "/dev/disk/by-id/md-uuid-"


class Node(NamedTuple):
    kind: str             # filesystem, subvolume, luks, lv, vg, md, device, swap
    name: str             # what it is called (a mapping, VG/LV, a spec)
    detail: str = ""      # a few words
    on: tuple[Node, ...] = ()   # what it sits on
    guess: bool = False   # "one of": the plan cannot tell which (see the module text)


def _split_dm(name: str) -> tuple[str, str] | None:
    from cryptboot.config.stack import lv_of_path

    return lv_of_path(name)


def subvol(flags: str) -> str:
    """The ``subvol=`` / ``subvolid=`` of ``rootflags=``, or ""."""
    for opt in flags.split(","):
        key, sep, value = opt.partition("=")
        if sep and key in ("subvol", "subvolid"):
            return f"{key}={value}"
    return ""


class _Builder:
    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.by_name = {v.name: v for v in plan.volumes}
        self.used: set[str] = set()
        for v in plan.volumes:   # a volume whose source is another volume's mapping
            src = v.source
            if src.kind is SpecKind.PATH and src.value.startswith("/dev/mapper/"):
                self.used.add(src.value[len("/dev/mapper/"):])

    def free(self, skip: str = "") -> tuple[Node, ...]:
        """The volumes no node has claimed (the candidates for an unresolved spec)."""
        return tuple(self.volume(v, guess=True) for v in self.plan.volumes
                     if v.name not in self.used and v.name != skip)

    def volume(self, v: Volume, guess: bool = False) -> Node:
        kind = "luks" if v.options.type == "luks" else v.options.type
        return Node(kind, v.name, f"/dev/mapper/{v.name}, {v.options.type}",
                    (self.spec(v.source, for_volume=True),), guess)

    def spec(self, spec: DeviceSpec, *, for_volume: bool = False) -> Node:
        value = spec.value
        md_named = (spec.kind is SpecKind.PATH and value.startswith(("/dev/md", MD_UUID_LINK))
                    or spec.kind is SpecKind.ID and value.startswith("md-uuid-"))
        if md_named and "md" in self.plan.layers:
            members = "members found by their md superblock at boot"
            if self.plan.md_uuids:
                members += f" (only arrays {', '.join(self.plan.md_uuids)})"
            return Node("md", str(spec), "md RAID array, assembled with mdadm --incremental",
                        (Node("device", "members", members),))
        if spec.kind is SpecKind.PATH:
            if value.startswith("/dev/mapper/") and value[12:] in self.by_name:
                name = value[12:]
                self.used.add(name)
                return self.volume(self.by_name[name])
            lv = _split_dm(value) if "lvm" in self.plan.layers else None
            if lv is not None and (not value.startswith("/dev/mapper/") or "-" in value[12:]):
                vg, name = lv
                pvs = self.free() if not for_volume else ()
                vg_node = Node("vg", vg, "LVM volume group; its PVs are found by their "
                                         "LVM label at boot", pvs)
                return Node("lv", f"{vg}/{name}", f"LVM logical volume ({value})", (vg_node,))
        return Node("device", str(spec), "found by " + (
            "its path" if spec.kind is SpecKind.PATH else f"{spec.kind.value}"
            + (" prefix" if spec.prefix else "")))

    def unresolved(self, node: Node) -> Node:
        """A device spec that no name resolves (``UUID=`` of a filesystem): on the free
        volumes, if any."""
        if node.kind != "device" or node.on:
            return node
        return node._replace(on=self.free())


def build(plan: Plan) -> tuple[Node, ...]:
    """The trees: the root first, then the resume device."""
    b = _Builder(plan)
    out: list[Node] = []
    r = plan.root
    if r.spec is not None:
        dev = b.unresolved(b.spec(r.spec))
        fstype = r.fstype or "probed type"
        sv = subvol(r.flags)
        top = Node("filesystem", "/", f"{fstype}, {'read-only' if r.readonly else 'read-write'}"
                   + (f", flags {r.flags}" if r.flags else ""), (dev,))
        if sv:
            top = Node("filesystem", "/", top.detail,
                       (Node("subvolume", sv.partition("=")[2], f"btrfs {sv}", (dev,)),))
        out.append(top)
    if plan.resume is not None:
        swap = b.spec(plan.resume)
        offset = f", {plan.resume_offset} pages in (a swap file)" if plan.resume_offset else ""
        out.append(Node("swap", "resume", "its hibernation image is read before anything is "
                        f"mounted read-write{offset}", (swap,)))
    return tuple(out)


def to_data(node: Node) -> dict[str, Any]:
    data: dict[str, Any] = {"kind": node.kind, "name": node.name, "detail": node.detail}
    if node.guess:
        data["one_of"] = True
    data["on"] = [to_data(n) for n in node.on]
    return data


def render(nodes: tuple[Node, ...]) -> list[str]:
    """Indented tree lines, the top first, each line's children below it."""
    out: list[str] = []

    def walk(node: Node, prefix: str, last: bool, top: bool) -> None:
        mark = "" if top else ("`- " if last else "|- ")
        guess = "(one of) " if node.guess else ""
        out.append(f"  {prefix}{mark}{guess}{node.kind} {node.name}"
                   + (f": {node.detail}" if node.detail else ""))
        child_prefix = prefix + ("" if top else ("   " if last else "|  "))
        for i, child in enumerate(node.on):
            walk(child, child_prefix, i == len(node.on) - 1, False)

    for node in nodes:
        walk(node, "", True, True)
    return out
