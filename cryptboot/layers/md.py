"""The md RAID layer: assemble arrays member by member as they appear.

Each device whose signature is ``linux_raid_member`` is offered once to ``mdadm --incremental
--export DEV`` (with the image's ``/etc/mdadm/mdadm.conf``, or none with ``rd.md.conf=0``),
which adds it to its array and starts the array when every member is there. When the wait
reaches its last third with an array still incomplete, the array is started degraded
(``mdadm --run``, as dracut does), and the log names the member missing (its role in the
array). ``rd.md.uuid=`` limits assembly to those arrays. Only assembly commands are run, never
one that writes metadata (no ``--assemble --force``, no ``--update``).
"""

from __future__ import annotations

from cryptboot import log

TYPE_CHECKING = False
if TYPE_CHECKING:
    from cryptboot.config.model import Plan
    from cryptboot.devices import BlockDevice

MEMBER_TYPE = "linux_raid_member"
CONF = "/etc/mdadm/mdadm.conf"


def parse_export(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key.startswith("MD"):
            out[key] = value.strip("'\"")
    return out


def norm_uuid(text: str) -> str:
    return "".join(c for c in text.lower() if c in "0123456789abcdef")


class Array:
    __slots__ = ("device", "uuid", "members", "devices", "started", "degraded_tried")

    def __init__(self, device: str, uuid: str) -> None:
        self.device = device
        self.uuid = uuid
        self.members: dict[str, str] = {}   # node -> role ("0", "1", "spare")
        self.devices = 0                    # how many members the array has
        self.started = False
        self.degraded_tried = False


class MdLayer:
    name = "md"

    def __init__(self, plan: Plan, prog: str) -> None:
        self.prog = prog
        self.uuids = {norm_uuid(u) for u in plan.md_uuids}
        self.conf = CONF if plan.md_conf else "none"
        self.arrays: dict[str, Array] = {}  # md device -> array
        self.ignored: list[str] = []
        self.errors: list[str] = []
        self._done: set[tuple[str, str]] = set()

    def _mdadm(self, *args: str) -> tuple[int, str, str]:
        from cryptboot.run import run

        proc = run([self.prog, *args], check=False, timeout=120)
        return (proc.returncode, (proc.stdout or b"").decode(errors="replace"),
                (proc.stderr or b"").decode(errors="replace").strip())

    def offer(self, dev: BlockDevice) -> None:
        if dev.get("ID_FS_TYPE") != MEMBER_TYPE:
            return
        key = (dev.node, dev.get("ID_FS_UUID"))
        if key in self._done:
            return
        self._done.add(key)
        uuid = norm_uuid(dev.get("ID_FS_UUID"))
        if self.uuids and uuid not in self.uuids:
            self.ignored.append(f"{dev.node} (array UUID {dev.get('ID_FS_UUID')})")
            log.info(f"md: {dev.node}: array {dev.get('ID_FS_UUID')} is not named by "
                     "rd.md.uuid; left alone")
            return
        rc, out, err = self._mdadm("--incremental", "--export", f"--config={self.conf}",
                                   dev.node)
        info = parse_export(out)
        md = info.get("MD_DEVICE", "")
        if rc != 0 or not md:
            self.errors.append(f"{dev.node}: mdadm --incremental: exit {rc}: {err or out}")
            log.warning(f"md: mdadm --incremental {dev.node}: exit {rc}: {err or 'no array'}")
            return
        node = md if md.startswith("/") else f"/dev/{md}"
        arr = self.arrays.setdefault(node, Array(node, uuid))
        arr.members[dev.node] = self._role(dev.node, arr)
        # "unsafe": enough members to run degraded, but not started (that is tick's call)
        arr.started = info.get("MD_STARTED") == "yes"
        state = "started" if arr.started else "waiting for the other members"
        log.info(f"md: {dev.node}: member of {node} ({state})")

    def _role(self, node: str, arr: Array) -> str:
        """The member's role from ``mdadm --examine`` (read only): ``Device Role : Active
        device 0``, and the array's ``Raid Devices : 2``."""
        _rc, out, _err = self._mdadm("--examine", node)
        role = "?"
        for line in out.splitlines():
            key, sep, value = line.partition(" : ")
            key, value = key.strip(), value.strip()
            if key == "Raid Devices" and value.isdigit():
                arr.devices = int(value)
            elif key == "Device Role":
                last = value.split()[-1] if value else ""
                role = last if last.isdigit() else value.lower()
        return role

    def missing(self, arr: Array) -> str:
        """The roles of the members not found, in words."""
        have = set(arr.members.values())
        gone = [str(r) for r in range(arr.devices) if str(r) not in have]
        found = ", ".join(f"{n} (role {r})" for n, r in sorted(arr.members.items()))
        if not gone:
            return f"found {found}"
        return (f"member{'s' if len(gone) > 1 else ''} with role {', '.join(gone)} of "
                f"{arr.devices} missing; found {found}")

    def tick(self, waited: float, timeout: float | None) -> None:
        if not timeout or waited < timeout * 2 / 3:
            return
        for arr in self.arrays.values():
            if arr.started or arr.degraded_tried:
                continue
            arr.degraded_tried = True
            log.warning(f"md: {arr.device} is incomplete after {waited:.1f} s: starting it "
                        f"degraded; {self.missing(arr)}")
            rc, _out, err = self._mdadm("--run", arr.device)
            if rc == 0:
                arr.started = True
            else:
                self.errors.append(f"{arr.device} cannot start even degraded: {err}; "
                                   f"{self.missing(arr)}")
                log.error(f"md: {arr.device} cannot start even degraded ({err}); "
                          f"{self.missing(arr)}")

    def seen(self) -> str:
        if not self.arrays and not self.ignored and not self.errors:
            return "md: no RAID member (linux_raid_member) seen"
        parts = [f"{a.device} ({'started' if a.started else 'not started'}; {self.missing(a)})"
                 for a in self.arrays.values()]
        text = "md: arrays: " + ("; ".join(parts) or "none")
        if self.ignored:
            text += "; not named by rd.md.uuid: " + ", ".join(self.ignored)
        if self.errors:
            text += "; errors: " + "; ".join(self.errors)
        return text

    def close(self) -> None:
        pass


def layer(plan: Plan, prog: str) -> MdLayer:
    return MdLayer(plan, prog)
