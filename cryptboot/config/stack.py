"""Command-line words of stacked storage and resume (issue 12): ``rd.lvm=0``, ``rd.lvm.vg=``,
``rd.lvm.lv=``, ``rd.md=0``, ``rd.md.uuid=``, ``rd.md.conf=0``, ``resume=``,
``resume_offset=``, ``noresume``, as dracut and the kernel read them."""

from __future__ import annotations

from cryptboot.config.devspec import parse_devspec
from cryptboot.config.model import DeviceSpec, SpecKind
from cryptboot.config.values import Where, parse_bool, parse_uint

KEYS = frozenset({"rd.lvm", "rd.lvm.vg", "rd.lvm.lv", "rd.lvm.conf", "rd.md", "rd.md.uuid",
                  "rd.md.conf", "rd.md.waitclean", "resume", "resume_offset", "noresume",
                  "rd.btrfs"})
_HEX = frozenset("0123456789abcdefABCDEF")


class StackArgs:
    """What the command line says about LVM, md, btrfs and resume."""

    __slots__ = ("lvm", "md", "btrfs", "vgs", "lvs", "md_uuids", "md_conf", "resume",
                 "resume_offset", "noresume")

    def __init__(self) -> None:
        self.lvm = True
        self.md = True
        self.btrfs = True
        self.vgs: list[str] = []
        self.lvs: list[str] = []
        self.md_uuids: list[str] = []
        self.md_conf = True
        self.resume: DeviceSpec | None = None
        self.resume_offset = 0
        self.noresume = False

    def layers(self) -> tuple[str, ...]:
        return tuple(n for n, on in (("lvm", self.lvm), ("md", self.md), ("btrfs", self.btrfs))
                     if on)


def normalize_md_uuid(text: str) -> str:
    """mdadm's UUID forms (``a1b2c3d4:…`` or dashed) as 32 lower-case hex digits."""
    return "".join(c for c in text.lower() if c in _HEX)


def apply(st: StackArgs, key: str, has: bool, value: str, word: str, where: Where,
          warnings: list[str]) -> None:
    def need() -> str:
        if not has or not value:
            raise where.error(f"{key}=: expected {key}=VALUE, found {word!r}")
        return value

    def flag() -> bool:
        return parse_bool(value, where, key) if has else True

    if key == "rd.lvm":
        st.lvm = flag()
    elif key == "rd.lvm.vg":
        st.vgs.append(need())
    elif key == "rd.lvm.lv":
        lv = need().removeprefix("/dev/")
        if lv.count("/") != 1 or lv.startswith("/") or lv.endswith("/"):
            raise where.error(f"rd.lvm.lv=: expected VG/LV, found {value!r}")
        st.lvs.append(lv)
    elif key == "rd.md":
        st.md = flag()
    elif key == "rd.md.uuid":
        uuid = normalize_md_uuid(need())
        if len(uuid) != 32:
            raise where.error(f"rd.md.uuid=: expected an md array UUID (32 hex digits, "
                              f"mdadm's a:b:c:d form or dashed), found {value!r}")
        st.md_uuids.append(uuid)
    elif key == "rd.md.conf":
        st.md_conf = flag()
    elif key == "rd.btrfs":
        st.btrfs = flag()
    elif key == "resume":
        text = need()
        head, sep, tail = text.partition(":")
        if sep and head.isdigit() and tail.isdigit():
            st.resume = DeviceSpec(SpecKind.PATH, f"/dev/block/{int(head)}:{int(tail)}")
        else:
            st.resume = parse_devspec(text, where)
    elif key == "resume_offset":
        st.resume_offset = parse_uint(need(), where, key)
    elif key == "noresume":
        st.noresume = True
    else:
        warnings.append(f"{where}: {word}: not implemented by cryptboot; ignored")


# LV names (issue 12): kept here (the config layer) so the plan display and the lvm layer share them
def split_dm_name(name: str) -> tuple[str, str] | None:
    """``debian--vg-root`` -> (``debian-vg``, ``root``): the single hyphen splits, ``--`` is
    one hyphen; None when there is no single hyphen."""
    i = 0
    while i < len(name):
        if name[i] == "-":
            if name[i + 1:i + 2] == "-":
                i += 2
                continue
            vg, lv = name[:i], name[i + 1:]
            if vg and lv:
                return vg.replace("--", "-"), lv.replace("--", "-")
            return None
        i += 1
    return None


def lv_of_path(path: str) -> tuple[str, str] | None:
    """The (VG, LV) a path names: ``/dev/VG/LV`` or ``/dev/mapper/VG-LV``; None otherwise."""
    if path.startswith("/dev/mapper/"):
        return split_dm_name(path[len("/dev/mapper/"):])
    parts = path.split("/")
    if len(parts) == 4 and parts[:2] == ["", "dev"] and parts[2] not in (
            "disk", "mapper", "md", "block", "char", "input", "bus", "pts", "shm", "net"):
        return parts[2], parts[3]
    return None
