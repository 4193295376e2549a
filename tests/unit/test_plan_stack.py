"""The stack tree of ``cryptboot plan`` (issue 12): what sits on what, from the plan alone."""

from __future__ import annotations

import json
from typing import Any

from cryptboot.config import stacktree
from cryptboot.config.plan import build_plan
from cryptboot.config.render import render_json, render_text

DEB = "5e1f0000-aaaa-4bbb-8ccc-0000000000d5"
A = "5e1f0000-aaaa-4bbb-8ccc-0000000000ba"
B = "5e1f0000-aaaa-4bbb-8ccc-0000000000bb"
FS = "5e1f0000-aaaa-4bbb-8ccc-0000000000bf"


def chain(node: dict[str, Any]) -> list[str]:
    """kind:name down the first child of each node."""
    out = []
    while True:
        out.append(f"{node['kind']}:{node['name']}")
        if not node["on"]:
            return out
        node = node["on"][0]


def stack(cmdline: str, crypttab: str | None = None) -> list[dict[str, Any]]:
    data = json.loads(render_json(build_plan(cmdline, crypttab)))
    return list(data["stack"])


def test_debian_encrypted_lvm_with_resume() -> None:
    tab = f"vda5_crypt UUID={DEB} none luks,discard\n"
    root, resume = stack("root=/dev/mapper/debian--vg-root resume=/dev/debian-vg/swap_1", tab)
    assert chain(root) == ["filesystem:/", "lv:debian-vg/root", "vg:debian-vg",
                           "luks:vda5_crypt", f"device:UUID={DEB}"]
    assert root["on"][0]["on"][0]["on"][0]["one_of"] is True  # the PV is not known by name
    assert chain(resume) == ["swap:resume", "lv:debian-vg/swap_1", "vg:debian-vg",
                             "luks:vda5_crypt", f"device:UUID={DEB}"]
    text = render_text(build_plan("root=/dev/mapper/debian--vg-root", tab))
    assert ("  `- lv debian-vg/root: LVM logical volume (/dev/mapper/debian--vg-root)\n"
            "     `- vg debian-vg: ") in text
    assert "        `- (one of) luks vda5_crypt: /dev/mapper/vda5_crypt, luks\n" in text


def test_luks_on_lv_named_in_crypttab() -> None:
    (root,) = stack("root=/dev/mapper/cryptroot", "cryptroot /dev/vg0/cryptroot none luks\n")
    assert chain(root) == ["filesystem:/", "luks:cryptroot", "lv:vg0/cryptroot", "vg:vg0"]


def test_luks_on_md() -> None:
    (root,) = stack("root=/dev/mapper/r", "r /dev/md/root none luks\n")
    assert chain(root)[:3] == ["filesystem:/", "luks:r", "md:/dev/md/root"]
    (root,) = stack("root=/dev/mapper/r rd.md.uuid=a1b2c3d4:e5f60718:293a4b5c:6d7e8f90",
                    "r /dev/disk/by-id/md-uuid-a1b2c3d4:e5f60718:293a4b5c:6d7e8f90 none luks\n")
    md = root["on"][0]["on"][0]
    assert md["kind"] == "md" and "a1b2c3d4e5f60718293a4b5c6d7e8f90" in md["on"][0]["detail"]


def test_md_off_is_a_plain_device() -> None:
    (root,) = stack("root=/dev/mapper/r rd.md=0", "r /dev/md/root none luks\n")
    assert chain(root) == ["filesystem:/", "luks:r", "device:/dev/md/root"]


def test_btrfs_subvolume_on_two_luks() -> None:
    tab = f"btra UUID={A} none luks\nbtrb UUID={B} none luks\n"
    (root,) = stack(f"root=UUID={FS} rootflags=subvol=@,compress=zstd", tab)
    assert chain(root) == ["filesystem:/", "subvolume:@", f"device:UUID={FS}", "luks:btra",
                           f"device:UUID={A}"]
    fs = root["on"][0]["on"][0]
    assert [n["name"] for n in fs["on"]] == ["btra", "btrb"]
    assert all(n["one_of"] for n in fs["on"])


def test_plain_luks_root_has_no_guess() -> None:
    (root,) = stack("root=/dev/mapper/cryptroot", f"cryptroot UUID={DEB} none luks\n")
    assert chain(root) == ["filesystem:/", "luks:cryptroot", f"device:UUID={DEB}"]
    assert "one_of" not in root["on"][0]


def test_no_root_no_tree() -> None:
    assert stacktree.build(build_plan("quiet", None)) == ()
    assert "stack (" not in render_text(build_plan("quiet", None))


def test_subvolid() -> None:
    assert stacktree.subvol("ro,subvolid=256") == "subvolid=256"
    assert stacktree.subvol("compress=zstd") == ""
