"""Issue 15: the keymap and font from vconsole.conf, console-setup and the command line; the
image's compiled keymaps (real ``loadkeys -b``); the boot's loader on its error paths."""

from __future__ import annotations

import gzip
import io
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cryptboot import keymap, log
from cryptboot.config.cli import main as plan_main
from cryptboot.config.model import Plan, Vconsole
from cryptboot.config.plan import build_plan, load_plan
from cryptboot.config.vconsole import (
    from_console_setup,
    from_vconsole_conf,
    parse_assignments,
    read_vconsole,
)
from cryptboot.errors import ConfigError
from tests.unit.test_boot import logs as logs  # the fixture

LOADKEYS = subprocess.run(["sh", "-c", "command -v loadkeys"], capture_output=True,
                          text=True).stdout.strip()
needs_loadkeys = pytest.mark.skipif(not LOADKEYS, reason="no loadkeys (apt-get install kbd)")


def compiled(*sources: str) -> bytes:
    from cryptboot.initramfs.console import compile_keymap

    return compile_keymap(list(sources))


# --- config -----------------------------------------------------------------------------------

def test_vconsole_conf_fields_and_where() -> None:
    v = from_vconsole_conf('# c\nKEYMAP="de-latin1"\nKEYMAP_TOGGLE=us\nFONT=eurlatgr # x\n',
                           "/etc/vconsole.conf")
    assert v == Vconsole(keymap="de-latin1", keymap_from="/etc/vconsole.conf:2",
                         toggle="us", toggle_from="/etc/vconsole.conf:3",
                         font="eurlatgr", font_from="/etc/vconsole.conf:4")


def test_vconsole_conf_bad_line_names_file_and_line() -> None:
    with pytest.raises(ConfigError, match=r"^/x:2: expected KEY=VALUE, found 'KEYMAP de'"):
        parse_assignments("FONT=a\nKEYMAP de\n", "/x")
    with pytest.raises(ConfigError, match=r"^/x:1: KEYMAP: expected a keymap or font name"):
        from_vconsole_conf('KEYMAP="de latin1"\n', "/x")


def test_console_setup_layout_and_us_default(tmp_path: Path) -> None:
    kb = tmp_path / "etc/default/keyboard"
    kb.parent.mkdir(parents=True)
    (tmp_path / "etc/console-setup").mkdir()
    kmap = tmp_path / "etc/console-setup/cached_UTF-8_del.kmap.gz"
    kmap.write_bytes(gzip.compress(b"keycode 16 = a\n"))
    (tmp_path / "etc/console-setup/cached_ISO-8859-1_del.kmap.gz").write_bytes(b"")
    kb.write_text('XKBMODEL="pc105"\nXKBLAYOUT="fr"\nXKBVARIANT="oss"\n')
    v = read_vconsole(None, str(kb))
    assert (v.keymap, v.kmap) == ("fr(oss)", str(kmap))
    assert v.keymap_from == f"{kb}:2 (XKBLAYOUT=fr(oss)) via {kmap}"
    kb.write_text('XKBLAYOUT="us"\n')
    v = read_vconsole(None, str(kb))
    assert v.keymap is None and "the kernel's default layout" in v.keymap_from
    # not compiled by console-setup yet: no keymap, and the plan says why
    v = from_console_setup('XKBLAYOUT="de"\n', str(kb), [])
    assert v.keymap is None and "setupcon --save-only" in v.keymap_from


def test_vconsole_conf_beats_console_setup(tmp_path: Path) -> None:
    vc = tmp_path / "vconsole.conf"
    vc.write_text("KEYMAP=de-latin1\n")
    kb = tmp_path / "etc/default/keyboard"
    kb.parent.mkdir(parents=True)
    kb.write_text('XKBLAYOUT="fr"\n')
    assert read_vconsole(str(vc), str(kb)).keymap == "de-latin1"
    assert read_vconsole(str(tmp_path / "missing"), None) == Vconsole()


@pytest.mark.parametrize(("cmdline", "keymap", "origin"), [
    ("rd.vconsole.keymap=fr", "fr", "cmdline: rd.vconsole.keymap=fr"),
    ("vconsole.keymap=us", "us", "cmdline: vconsole.keymap=us"),
    # rd. wins over the plain form, whatever the order
    ("rd.vconsole.keymap=fr vconsole.keymap=us", "fr", "cmdline: rd.vconsole.keymap=fr"),
    ("rd.vconsole.keymap=", None, "cmdline: rd.vconsole.keymap= (none)"),
    ("quiet", "de-latin1", "/etc/vconsole.conf:1"),
])
def test_command_line_wins(cmdline: str, keymap: str | None, origin: str) -> None:
    files = from_vconsole_conf("KEYMAP=de-latin1\nFONT=eurlatgr\n", "/etc/vconsole.conf")
    plan = build_plan(f"root=/dev/sda1 {cmdline}", None, vconsole=files)
    assert (plan.vconsole.keymap, plan.vconsole.keymap_from) == (keymap, origin)
    assert plan.vconsole.font == "eurlatgr"
    assert not plan.warnings


def test_font_and_toggle_on_the_command_line_and_the_rest_warned() -> None:
    plan = build_plan("root=/dev/sda1 rd.vconsole.font=ter-v16n vconsole.keymap_toggle=ru "
                      "rd.vconsole.font.map=8859-2", None)
    assert plan.vconsole.font == "ter-v16n" and plan.vconsole.toggle == "ru"
    assert plan.vconsole.keymap is None
    assert any("rd.vconsole.font.map=8859-2: not implemented" in w for w in plan.warnings)


def test_boot_plan_reads_the_images_vconsole_conf(tmp_path: Path) -> None:
    (tmp_path / "cmdline").write_text("root=/dev/sda1\n")
    (tmp_path / "vconsole.conf").write_text("KEYMAP=fr\n")
    plan = load_plan(str(tmp_path / "cmdline"), str(tmp_path / "none"),
                     vconsole_path=str(tmp_path / "vconsole.conf"))
    assert plan.vconsole.keymap == "fr"
    assert load_plan(str(tmp_path / "cmdline"), str(tmp_path / "none")).vconsole == Vconsole()


def test_plan_shows_keymap_and_font_with_their_origin(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    vc = tmp_path / "vconsole.conf"
    vc.write_text("KEYMAP=de-latin1\nFONT=eurlatgr\n")
    assert plan_main(["--cmdline", "root=/dev/sda1", "--crypttab", "/dev/null",
                      "--vconsole", str(vc), "--keyboard", "none"]) == 0
    out = capsys.readouterr().out
    assert f"  keymap:  de-latin1 (from {vc}:1)\n" in out
    assert f"  font:    eurlatgr (from {vc}:2)\n" in out
    assert plan_main(["--cmdline", "root=/dev/sda1 rd.vconsole.keymap=fr", "--crypttab",
                      "/dev/null", "--vconsole", str(vc), "--keyboard", "none", "--json"]) == 0
    import json

    data = json.loads(capsys.readouterr().out)["vconsole"]
    assert data["keymap"] == "fr" and data["keymap_from"] == "cmdline: rd.vconsole.keymap=fr"
    assert data["font"] == "eurlatgr"
    assert plan_main(["--cmdline", "root=/dev/sda1", "--vconsole", "none", "--keyboard",
                      "none", "--crypttab", "/dev/null"]) == 0
    assert "keymap:  none: the kernel's default US layout" in capsys.readouterr().out


def test_plan_names_a_missing_vconsole_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nope: cannot read the vconsole.conf"):
        plan_main(["--cmdline", "root=/dev/sda1", "--vconsole", str(tmp_path / "nope")])


# --- the compiled keymap and the loader ---------------------------------------------------------

@needs_loadkeys
def test_parse_real_loadkeys_output_and_reachable_maps() -> None:
    de = keymap.parse(compiled("de-latin1"))
    assert [i for i, _ in de] == [0, 1, 2, 4, 5, 6, 8, 9, 10, 12]
    plain = dict(de)[0]
    # keycode 26 (right of P) is ü, keycode 21 is z (QWERTZ): letters, KT_LETTER
    assert plain[26] == 0x0B00 | 0xFC and plain[21] == 0x0B00 | ord("z")
    assert keymap.reachable(de) == set(range(16))  # shift, altgr, ctrl, alt


@needs_loadkeys
def test_console_setup_keymap_has_128_maps_few_reachable() -> None:
    kmap = subprocess.run(["ckbcomp", "-layout", "fr"], capture_output=True, check=True).stdout
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".kmap") as f:
        f.write(kmap)
        f.flush()
        tables = keymap.parse(compiled(f.name))
    assert len(tables) == 128
    can = keymap.reachable(tables)
    assert set(range(16)) <= can and len(can) <= 32  # Shift AltGr Control Alt (+ one more)
    assert 16 not in can  # no key of a French keyboard is ShiftL
    # the prompt waits for the typing maps only (plain, Shift, AltGr, Shift+AltGr): at most a
    # quarter of the reachable maps' entries; the Control/Alt and Caps Lock (CtrlL) maps follow
    present = {i for i, _ in tables if i in can}
    first, later = keymap.batches(tables, present)
    rest = list(later)
    maps_first = {e[0] for e in first}
    assert maps_first == {0, 1, 2, 3}, maps_first
    assert {e[0] for e in rest} == present - maps_first
    assert 0 < len(first) < len(rest)


def test_parse_refuses_what_is_not_a_binary_keymap() -> None:
    with pytest.raises(ValueError, match="no 'bkeymap' header"):
        keymap.parse(b"keycode 1 = Escape\n")
    flags = bytearray(256)
    flags[0] = 1
    with pytest.raises(ValueError, match="truncated"):
        keymap.parse(b"bkeymap" + bytes(flags) + b"\0" * 10)


@pytest.fixture
def warnings(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    seen: list[str] = []
    monkeypatch.setattr(log, "warning", seen.append)
    return seen


def test_no_vt_is_said_not_warned(warnings: list[str], tmp_path: Path) -> None:
    out = keymap.load(Vconsole(keymap="de"), str(tmp_path), vt=str(tmp_path / "tty0"))
    assert out.startswith("no virtual terminal") and "keymap de not loaded" in out
    assert warnings == []


def test_missing_keymap_one_warning_naming_it(warnings: list[str], tmp_path: Path) -> None:
    (tmp_path / "fr.bmap").write_bytes(b"")
    assert keymap.load(Vconsole(keymap="xx"), str(tmp_path), vt="/dev/null") == ""
    assert warnings == ["keymap xx: not in this image (it has: fr); the prompt uses the "
                        "kernel's default US layout"]


@needs_loadkeys
def test_keymap_the_kernel_refuses_is_a_warning(warnings: list[str], tmp_path: Path) -> None:
    (tmp_path / "de-latin1.bmap").write_bytes(compiled("de-latin1"))
    # /dev/null is no VT: the ioctl fails as a real refusal would
    assert keymap.load(Vconsole(keymap="de-latin1"), str(tmp_path), vt="/dev/null") == ""
    assert len(warnings) == 1
    assert warnings[0].startswith("keymap de-latin1: cannot load it (")
    assert warnings[0].endswith("the prompt uses the kernel's default US layout")


# --- the image ---------------------------------------------------------------------------------

def _image(tmp_path: Path, **kw: object) -> dict[str, bytes]:
    from cryptboot.initramfs.build import Image, Options
    from cryptboot.initramfs.console import add_console

    img = Image()
    add_console(img, Options(output="x", kver="0", **kw))  # type: ignore[arg-type]
    return {p: e.data for p, e in img.entries.items() if e.data}


@needs_loadkeys
def test_image_gets_the_compiled_keymaps_and_vconsole_conf(tmp_path: Path) -> None:
    vc = tmp_path / "vconsole.conf"
    vc.write_text("KEYMAP=de-latin1\n")
    files = _image(tmp_path, vconsole=str(vc), keymaps=("fr",))
    assert files["etc/cryptboot/keymaps/de-latin1.bmap"] == compiled("de-latin1")
    assert files["etc/cryptboot/keymaps/fr.bmap"] == compiled("fr")
    conf = files["etc/vconsole.conf"].decode()
    assert conf.splitlines()[1:] == ["KEYMAP=de-latin1"]
    assert from_vconsole_conf(conf, "/etc/vconsole.conf").keymap == "de-latin1"


def test_nothing_when_no_keymap_is_configured(tmp_path: Path) -> None:
    assert _image(tmp_path) == {}
    kb = tmp_path / "keyboard"
    kb.write_text('XKBLAYOUT="us"\n')
    assert _image(tmp_path, keyboard=str(kb)) == {}


@needs_loadkeys
def test_a_keymap_loadkeys_cannot_find_is_a_warning_not_a_failed_build(
        tmp_path: Path, warnings: list[str]) -> None:
    vc = tmp_path / "vconsole.conf"
    vc.write_text("KEYMAP=xx-nosuch\n")
    files = _image(tmp_path, vconsole=str(vc))
    assert "etc/cryptboot/keymaps/xx-nosuch.bmap" not in files
    assert "KEYMAP=xx-nosuch" in files["etc/vconsole.conf"].decode()  # so the boot warns too
    assert len(warnings) == 1 and warnings[0].startswith("keymap xx-nosuch: loadkeys -b cannot")


@needs_loadkeys
def test_the_cmdline_keymap_is_compiled_and_the_font_found(tmp_path: Path) -> None:
    files = _image(tmp_path, cmdline="rd.vconsole.keymap=fr rd.vconsole.font=Lat15-Fixed16")
    assert "etc/cryptboot/keymaps/fr.bmap" in files
    font = files["etc/cryptboot/fonts/Lat15-Fixed16"]
    # a plain PSF (setfont in the image would read a gzip file as a bad font)
    assert font[:2] == b"\x36\x04" or font[:4] == b"\x72\xb5\x4a\x86", font[:4]
    assert any(p.endswith("bin/setfont") for p in files)


# --- the boot step ----------------------------------------------------------------------------

def test_boot_step_runs_before_the_prompt_only_with_a_keymap(
        tmp_path: Path, logs: io.StringIO) -> None:
    """The keymap module is imported only for a plan with a keymap; the step comes before
    the volumes are unlocked."""
    from tests.unit.test_boot import FakeSystem, HandedOff, args_for

    class KeymapSystem(FakeSystem):
        def load_keymap(self, plan: Plan, ready: threading.Event | None = None) -> str:
            self._call(f"load_keymap {plan.vconsole.keymap}")
            time.sleep(0.3)  # in a thread: the boot must wait for it before unlocking
            self.calls.append("keymap typing maps in")
            assert ready is not None
            ready.set()
            time.sleep(0.3)  # the rest: joined before the hand-off
            self.calls.append("keymap loaded")
            return "keymap " + str(plan.vconsole.keymap)

    for conf, expect in (("", []), ("KEYMAP=de-latin1\n", ["load_keymap de-latin1"])):
        sysm = KeymapSystem()
        args = args_for(tmp_path, "root=LABEL=rootfs")
        Path(args.vconsole).write_text(conf)
        with pytest.raises(HandedOff):
            from cryptboot.boot import Booter

            Booter(args, sysm).run()
        assert [c for c in sysm.calls if c.startswith("load_keymap ")] == expect
        if expect:
            typing = sysm.calls.index("keymap typing maps in")
            done = sysm.calls.index("keymap loaded")
            mount = next(i for i, c in enumerate(sysm.calls) if c.startswith("mount_root"))
            switch = next(i for i, c in enumerate(sysm.calls) if c.startswith("switch"))
            assert sysm.calls.index("mount_api") < sysm.calls.index(expect[0]) < typing < mount
            assert done < switch, sysm.calls
            assert "load the keymap (in the background): keymap de-latin1; done in" in \
                logs.getvalue()


def test_keymap_module_not_imported_by_the_boot_path() -> None:
    from tests.unit.test_boot_imports import BOOT_MODULES, probe

    seen = probe([*BOOT_MODULES, "cryptboot.config.vconsole"])
    assert seen["boot"][-1] == "cryptboot.config.vconsole"
    out = subprocess.run([sys.executable, "-c", "import sys; import cryptboot.boot, "
                          "cryptboot.config.plan; print('cryptboot.keymap' in sys.modules)"],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
