"""Merging and contradictions: what the plan refuses, and how it says so."""

from __future__ import annotations

from pathlib import Path

import pytest

from cryptboot.config.model import KeyKind
from cryptboot.config.plan import build_plan, load_plan
from cryptboot.errors import ConfigError

U = "b40f1abf-2a53-400a-889a-2eccc27eaa40"
U2 = "2505567a-9e27-4efe-a4d5-15ad146c258b"


def error(cmdline: str, crypttab: str | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as e:
        build_plan(cmdline, crypttab, "/etc/crypttab", "/proc/cmdline")
    return e.value


def test_duplicate_name_across_command_line_and_crypttab() -> None:
    # a crypttab line not named on the command line is left out, unless marked initramfs
    plan = build_plan(f"rd.luks.name={U}=data root=/dev/sda1", f"data UUID={U2}\n")
    assert [str(v.source) for v in plan.volumes] == [f"UUID={U}"]
    e = error(f"rd.luks.name={U}=data root=/dev/sda1", f"data UUID={U2} none initramfs\n")
    assert str(e) == ("/proc/cmdline:1: duplicate volume name 'data': expected each name once, "
                      f"found it here (cmdline: rd.luks.name={U}=data) and at /etc/crypttab:1")
    assert e.exit_code == 2


def test_duplicate_name_cryptdevice_vs_crypttab() -> None:
    e = error("cryptdevice=/dev/sda2:root root=/dev/mapper/root", "root /dev/sdb2\n")
    assert str(e) == ("/proc/cmdline:1: cryptdevice=: volume 'root' is defined twice: expected "
                      "one device, found /dev/sda2 here and /dev/sdb2 at /etc/crypttab:1")


def test_duplicate_name_cgd_vs_crypttab() -> None:
    e = error("cryptboot.cgd=a:/dev/sdc1:/etc/cgd/p root=/dev/sda1",
              "a /dev/sdb2 none x-initrd.attach\n")
    assert "duplicate volume name 'a'" in str(e)


def test_one_device_two_volumes() -> None:
    e = error("root=/dev/sda1", "a /dev/sdb2\nb /dev/sdb2\n")
    assert str(e) == ("/etc/crypttab:2: volumes 'a' and 'b': expected one volume per device, "
                      "found both on /dev/sdb2")


def test_root_that_nothing_provides() -> None:
    e = error("root=/dev/mapper/cryptroot", "data /dev/sdb2\n")
    assert str(e) == ("/proc/cmdline:1: root=/dev/mapper/cryptroot: expected a volume named "
                      "'cryptroot', found data")
    assert e.hint is not None and "rd.luks.name=UUID=NAME" in e.hint
    e = error("root=/dev/disk/by-id/dm-name-vg-root rd.lvm=0")
    assert "expected a volume named 'vg-root', found no volumes" in str(e)
    assert e.hint is not None and "LVM" in e.hint


def test_root_on_the_encrypted_device_itself() -> None:
    e = error(f"root=UUID={U}", f"data UUID={U}\n")
    assert str(e) == (f"/proc/cmdline:1: root=UUID={U}: expected the file system inside a "
                      "volume, found the encrypted device of volume 'data'")
    assert e.hint == "use root=/dev/mapper/data"


@pytest.mark.parametrize("key", [f"/k:UUID={U}", "/k:/dev/mapper/data"])
def test_key_device_that_is_the_volume_itself(key: str) -> None:
    e = error("root=/dev/sda1", f"# keys\ndata UUID={U} {key}\n")
    assert str(e).startswith("/etc/crypttab:2: volume 'data': expected a key device other than "
                             "the volume itself, found ")


def test_key_device_itself_from_the_command_line() -> None:
    e = error(f"rd.luks.uuid={U} rd.luks.key={U}=/k:UUID={U} root=/dev/sda1")
    assert str(e).startswith(f"/proc/cmdline:1: volume 'luks-{U}': expected a key device other")


def test_key_devices_in_a_loop() -> None:
    e = error("root=/dev/sda1", "a /dev/sda2 /k:/dev/mapper/b\nb /dev/sdb2 /k:/dev/mapper/a\n")
    assert "found a loop of volumes holding each other's keys" in str(e)
    assert str(e).startswith("/etc/crypttab:")


def test_volume_holding_a_key_is_opened_first() -> None:
    plan = build_plan("root=/dev/mapper/data",
                      "data /dev/sda2 /data.key:/dev/mapper/keys\nkeys /dev/sdb2\n")
    assert [v.name for v in plan.volumes] == ["keys", "data"]


def test_two_prefixes_naming_two_lines() -> None:
    e = error("rd.luks.name=b40f=x root=/dev/sda1", f"a UUID={U}\nb UUID=b40f{U2[4:]}\n")
    assert "expected one crypttab line with UUID b40f, found 2" in str(e)


def test_key_order_file_then_cmdline_then_cached_then_prompt() -> None:
    plan = build_plan(f"rd.luks.uuid={U} rd.luks.key={U}=/k2:LABEL=usb rd.luks.key=/k3 "
                      "root=/dev/mapper/data",
                      f"data UUID={U} /k1 keyfile-offset=4,keyfile-size=32\n")
    kinds = [(k.kind, k.path) for k in plan.volumes[0].keys]
    assert kinds == [(KeyKind.FILE, "/k1"), (KeyKind.DEVFILE, "/k2"), (KeyKind.FILE, "/k3"),
                     (KeyKind.CACHED, None), (KeyKind.PROMPT, None)]
    assert (plan.volumes[0].keys[0].offset, plan.volumes[0].keys[0].size) == (4, 32)


def test_nothing_silently_dropped() -> None:
    plan = build_plan("root=/dev/mapper/a rd.luks.uuid=" + U,
                      "a /dev/sda2 none initramfs,fido2-device=auto\nb /dev/sdb2\n")
    assert [v.name for v in plan.volumes] == ["a", f"luks-{U}"]
    text = "\n".join(plan.warnings)
    assert "/etc/crypttab:1: option 'fido2-device=auto' is not implemented" in text
    assert "/etc/crypttab:2: volume 'b' left out" in text


def test_missing_root_is_a_warning() -> None:
    plan = build_plan("quiet", "a /dev/sda2\n")
    assert plan.root.spec is None
    assert any("no root= given" in w for w in plan.warnings)


def test_load_plan(tmp_path: Path) -> None:
    cmdline = tmp_path / "cmdline"
    cmdline.write_text("root=/dev/mapper/a ro\n")
    crypttab = tmp_path / "crypttab"
    crypttab.write_text("a /dev/sda2\n")
    assert [v.name for v in load_plan(str(cmdline), str(crypttab)).volumes] == ["a"]
    # a missing crypttab means none; then root=/dev/mapper/a is a contradiction
    with pytest.raises(ConfigError) as e:
        load_plan(str(cmdline), str(tmp_path / "nope"))
    assert f"{cmdline}:1: root=/dev/mapper/a" in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_plan(str(tmp_path / "nocmdline"), str(crypttab))
    assert str(e.value) == f"{tmp_path / 'nocmdline'}: expected the kernel command line, found " \
                           "no such file"
    crypttab.write_bytes(b"a /dev/sd\xff2\n")       # undecodable bytes are kept, not a crash
    (vol,) = load_plan(str(cmdline), str(crypttab)).volumes
    assert vol.source.value.encode("utf-8", "surrogateescape") == b"/dev/sd\xff2"


def test_settings_for_a_uuid_no_volume_has_are_warned() -> None:
    plan = build_plan(f"rd.luks.uuid={U} rd.luks.key={U2}=/k rd.luks.options={U2}=discard "
                      f"rd.luks.data={U2}=/dev/sdx rd.luks.allow-discards={U2} "
                      "rd.luks.key=/k:LABEL=usb:UUID=ffff root=/dev/sda1", None)
    text = "\n".join(plan.warnings)
    for param in (f"rd.luks.key={U2}=/k", f"rd.luks.options={U2}=discard",
                  f"rd.luks.data={U2}=/dev/sdx", f"rd.luks.allow-discards={U2}"):
        assert f"/proc/cmdline:1: {param}: no volume has UUID {U2}; ignored" in text
    assert "rd.luks.key=/k:LABEL=usb:UUID=ffff: no volume is on UUID=ffff*; ignored" in text
    assert [k.kind for k in plan.volumes[0].keys] == [KeyKind.CACHED, KeyKind.PROMPT]


def test_load_plan_image_defaults_come_first(tmp_path: Path) -> None:
    """An image's default words (mkinitramfs --cmdline) are overridden by the kernel's."""
    cmdline = tmp_path / "cmdline"
    cmdline.write_text("root=/dev/mapper/a rd.retry=7\n")
    defaults = tmp_path / "defaults"
    defaults.write_text("rd.retry=99 rd.break=pre-mount\n")
    crypttab = tmp_path / "crypttab"
    crypttab.write_text("a /dev/sda2\n")
    plan = load_plan(str(cmdline), str(crypttab), str(defaults))
    assert plan.device_timeout == 7.0            # the kernel's word wins
    assert plan.breaks == frozenset({"pre-mount"})  # a default the kernel does not override
    assert load_plan(str(cmdline), str(crypttab), str(tmp_path / "none")).breaks == frozenset()
