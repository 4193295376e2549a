"""The LVM layer: activate volume groups as their physical volumes appear.

Event-driven, as LVM's own udev rules do it on a running system: each device whose signature is
``LVM2_member`` is offered once, and ``lvm pvscan --cache --activate ay DEV`` records that PV
online and auto-activates its VG when the VG's last PV has arrived (a VG spread over several
disks activates when the last one appears; no global ``vgchange -ay`` loop, no settle). The
LVs it makes come back as udev events and match ``root=/dev/VG/LV`` or
``root=/dev/mapper/VG-LV`` like any other device.

With ``rd.lvm.vg=``/``rd.lvm.lv=`` only those are activated: ``pvscan --cache --listvg
--checkcomplete DEV`` says whether the PV's VG is complete, then ``lvchange -ay VG/LV`` (or
``vgchange -ay VG``) activates what was named. Only activation commands are run, never one that
writes metadata (the image's ``lvm.conf`` also turns backups and archives off).
"""

from __future__ import annotations

from cryptboot import log
from cryptboot.config.stack import lv_of_path

TYPE_CHECKING = False
if TYPE_CHECKING:
    from cryptboot.config.model import DeviceSpec, Plan
    from cryptboot.devices import BlockDevice

PV_TYPE = "LVM2_member"
# What lvm prints; the messages are stable since LVM 2.03.12 ("VG X is complete", "VG X
# incomplete (need N)" from -aay; "VG X complete"/"VG X incomplete" from --checkcomplete).
_ENV = {"LVM_SUPPRESS_FD_WARNINGS": "1"}


def mangle(name: str) -> str:
    """A VG or LV name as device-mapper spells it inside ``VG-LV`` (``-`` doubled)."""
    return name.replace("-", "--")


def dm_name(vg: str, lv: str) -> str:
    return f"{mangle(vg)}-{mangle(lv)}"


class LvmLayer:
    name = "lvm"

    def describe(self, spec: DeviceSpec) -> str:
        return describe_spec(spec.value) if spec.kind == "PATH" else ""

    def __init__(self, plan: Plan, prog: str) -> None:
        self.prog = prog
        self.vgs = plan.lvm_vgs
        self.lvs = tuple(tuple(lv.split("/", 1)) for lv in plan.lvm_lvs if "/" in lv)
        self.pvs: dict[str, str] = {}        # PV node -> "VG name (complete|incomplete)"
        self.active: list[str] = []          # VGs (or VG/LV) activated
        self.errors: list[str] = []
        self._done: set[tuple[str, str]] = set()

    # -- the stream

    def offer(self, dev: BlockDevice) -> None:
        if dev.get("ID_FS_TYPE") != PV_TYPE:
            return
        key = (dev.node, dev.get("ID_FS_UUID"))
        if key in self._done:
            return
        self._done.add(key)
        if self.vgs or self.lvs:
            self._scan_selected(dev.node)
        else:
            self._scan_activate(dev.node)

    def _lvm(self, *args: str) -> tuple[int, str]:
        from cryptboot.run import run

        proc = run([self.prog, *args], check=False, env=_ENV, timeout=120)
        out = (proc.stdout or b"").decode(errors="replace") + (proc.stderr or b"").decode(
            errors="replace")
        return proc.returncode, out

    def _scan_activate(self, node: str) -> None:
        rc, out = self._lvm("pvscan", "--cache", "--activate", "ay", node)
        vg, state = _vg_state(out)
        self.pvs[node] = f"VG {vg} ({state})" if vg else "no VG"
        if rc != 0:
            self.errors.append(f"pvscan {node}: exit {rc}: {_last_line(out)}")
            log.warning(f"lvm: pvscan --cache --activate ay {node}: exit {rc}: {_last_line(out)}")
            return
        if vg and state == "complete":
            self.active.append(vg)
            log.info(f"lvm: {node}: the last PV of VG {vg}: activated ({_activated(out)})")
        elif vg:
            log.info(f"lvm: {node}: a PV of VG {vg}, waiting for the others ({state})")

    def _scan_selected(self, node: str) -> None:
        rc, out = self._lvm("pvscan", "--cache", "--listvg", "--checkcomplete", node)
        vg, state = _vg_state(out)
        self.pvs[node] = f"VG {vg} ({state})" if vg else "no VG"
        if rc != 0 or not vg or state != "complete":
            if rc != 0:
                self.errors.append(f"pvscan {node}: exit {rc}: {_last_line(out)}")
            return
        targets = [f"{v}/{lv}" for v, lv in self.lvs if v == vg]
        if vg in self.vgs:
            rc, out = self._lvm("vgchange", "-ay", vg)
            what = f"VG {vg}"
        elif targets:
            rc, out = self._lvm("lvchange", "-ay", *targets)
            what = " ".join(targets)
        else:
            log.info(f"lvm: VG {vg} on {node} is not named by rd.lvm.vg/rd.lvm.lv; left alone")
            return
        if rc != 0:
            self.errors.append(f"activating {what}: exit {rc}: {_last_line(out)}")
            log.warning(f"lvm: activating {what}: exit {rc}: {_last_line(out)}")
        else:
            self.active.append(what)
            log.info(f"lvm: {node}: activated {what}")

    def tick(self, waited: float, timeout: float | None) -> None:
        pass

    def seen(self) -> str:
        """What LVM saw, for a timeout message: PVs, then the VGs and LVs lvm knows."""
        if not self.pvs:
            return "LVM: no physical volume (LVM2_member) seen"
        pvs = ", ".join(f"{n} ({what})" for n, what in sorted(self.pvs.items()))
        rc, out = self._lvm("lvs", "--noheadings", "--separator", " ", "-o",
                            "vg_name,lv_name,lv_active")
        lvs = []
        if rc == 0:
            for line in out.splitlines():
                words = line.split()
                if len(words) >= 2 and not line.startswith("  WARNING"):
                    lvs.append(f"{words[0]}/{words[1]}"
                               + (f" ({words[2]})" if len(words) > 2 else ""))
        text = f"LVM: PVs seen: {pvs}; LVs: {', '.join(lvs) or 'none'}"
        if self.errors:
            text += "; errors: " + "; ".join(self.errors)
        return text

    def close(self) -> None:
        pass


def _vg_state(out: str) -> tuple[str, str]:
    """(VG name, "complete" | "incomplete ...") from pvscan's output, ("", "") when none."""
    for line in out.splitlines():
        words = [w.rstrip(".,") for w in line.split()]
        for i, w in enumerate(words[:-2]):
            if w == "VG" and i + 2 < len(words):
                rest = words[i + 2:]
                if rest[0] == "is":
                    rest = rest[1:]
                if rest and rest[0] in ("complete", "incomplete"):
                    state = " ".join(rest[:3]) if rest[0] == "incomplete" else "complete"
                    return words[i + 1], state
    return "", ""


def _activated(out: str) -> str:
    for line in out.splitlines():
        if "now active" in line:
            return line.strip()
    return "no 'now active' line"


def _last_line(out: str) -> str:
    lines = [ln.strip() for ln in out.splitlines() if ln.strip()]
    return lines[-1] if lines else "no output"


def layer(plan: Plan, prog: str) -> LvmLayer:
    return LvmLayer(plan, prog)


def describe_spec(path: str) -> str:
    """`` (LV root of VG debian-vg)`` for a path naming an LV, else ``""``."""
    lv = lv_of_path(path)
    return f" (LV {lv[1]} of VG {lv[0]})" if lv else ""
