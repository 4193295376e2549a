"""Issue 15: the user's keyboard layout at the prompt on the local screen (the VT).

Every boot has a VGA device and no display, ``console=tty0 console=ttyS0``: the prompt shows on
the VT and on serial at once. The passphrase is typed as key presses through QEMU's monitor
(``sendkey``: physical keys, the way a person at that keyboard presses them), never on the
serial line; serial shows the prompt, ``(passphrase entered on tty1)`` and the real init's
sentinel. One LUKS2 disk has three passphrases (German, French, ASCII) and serves every case.
"""

from __future__ import annotations

import gzip
import subprocess
import time
from pathlib import Path

import pytest

from tests.vm.conftest import (
    TYPE_DELAY,
    Machine,
    Vm,
    encrypted_copy,
    luks_args,
    sh,
    variant_image,
)
from tests.vm.keymap_helpers import (
    CONSOLES,
    DE_KEYS,
    DE_PASSPHRASE,
    FR_KEYS,
    FR_PASSPHRASE,
    US_KEYS,
    US_PASSPHRASE,
    Keyboard,
    qemu_args,
)

pytestmark = pytest.mark.vm

PROMPT = r"Please enter passphrase for disk root \(/dev/vda\): "
ON_VT = r"\(passphrase entered on tty1\)"


@pytest.fixture(scope="session")
def layouts_root(vmdir: Path, plain_root: Path) -> Path:
    """LUKS2 root opened by ``Zürich-yz``, ``àéç-azqw`` and ``us-typed-1`` (UTF-8)."""
    from tests.vm.conftest import LUKS_UUID

    img = encrypted_copy(plain_root, vmdir / "root-layouts.img", uuid=LUKS_UUID,
                         passphrase=DE_PASSPHRASE)
    first = vmdir / "pw-de"
    first.write_text(DE_PASSPHRASE)
    for n, pw in enumerate((FR_PASSPHRASE, US_PASSPHRASE)):
        new = vmdir / f"pw-{n}"
        new.write_text(pw)
        sh(["cryptsetup", "luksAddKey", "-q", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations",
            "1000", "--key-file", str(first), str(img), str(new)])
    return img


@pytest.fixture(scope="session")
def de_image(vmdir: Path, kver: str, pyc_cache: Path) -> Path:
    """KEYMAP=de-latin1 from a vconsole.conf, and fr-latin9 beside it for rd.vconsole.keymap=.

    de-latin1, not de (and fr-latin9, not fr): Debian's console-data ``de`` and ``fr`` are
    the historical 7-bit maps (the key right of P gives ``@``, the French digit row ``@{/``);
    de-latin1 and fr-latin9 are the layouts upstream kbd calls ``de`` and ``fr``."""
    conf = vmdir / "vconsole-de.conf"
    conf.write_text("# the installed system's console\nKEYMAP=de-latin1\n")
    return variant_image(vmdir, kver, pyc_cache, "kbd-de", "--crypttab", "none",
                         "--vconsole", str(conf), "--keymap", "fr-latin9")


@pytest.fixture(scope="session")
def fr_console_setup_image(vmdir: Path, kver: str, pyc_cache: Path) -> Path:
    """Debian console-setup files for a French keyboard: /etc/default/keyboard and the keymap
    console-setup compiles from it (ckbcomp, as setupcon --save-only does)."""
    etc = vmdir / "etc-fr"
    (etc / "default").mkdir(parents=True, exist_ok=True)
    (etc / "console-setup").mkdir(exist_ok=True)
    (etc / "default/keyboard").write_text(
        'XKBMODEL="pc105"\nXKBLAYOUT="fr"\nXKBVARIANT=""\nXKBOPTIONS=""\nBACKSPACE="guess"\n')
    kmap = subprocess.run(["ckbcomp", "-model", "pc105", "-layout", "fr"], check=True,
                          capture_output=True).stdout
    (etc / "console-setup/cached_UTF-8_del.kmap.gz").write_bytes(gzip.compress(kmap, mtime=0))
    return variant_image(vmdir, kver, pyc_cache, "kbd-fr-cs", "--crypttab", "none",
                         "--keyboard", str(etc / "default/keyboard"))


def unlocked(vm: Vm) -> None:
    """The passphrase opened the volume (fail at once on a wrong one, not at the deadline)."""
    if vm.expect([r"unlock root: done in", r"wrong passphrase for root"]) == 1:
        raise vm.fail("the passphrase typed on the VT was wrong")


def boot_and_type(machine: Machine, vmdir: Path, name: str, initrd: Path, disk: Path,
                  append: str, keys: list[str], cleanup: list[Vm]) -> Vm:
    sock = vmdir / f"{name}.monitor"
    sock.unlink(missing_ok=True)
    vm = machine.boot(name, initrd, [disk],
                      f"{CONSOLES} root=/dev/mapper/root {luks_args()} rd.emergency=poweroff "
                      f"{append}", extra=qemu_args(sock))
    cleanup.append(vm)
    type_at_prompt(vm, sock, PROMPT, keys)
    return vm


def type_at_prompt(vm: Vm, sock: Path, prompt: str, keys: list[str]) -> None:
    """Once ``prompt`` shows, press ``keys`` (and Enter) on the VT through QEMU's monitor."""
    vm.expect(prompt)
    kb = Keyboard(sock)
    try:
        time.sleep(TYPE_DELAY)
        kb.press(keys)
    finally:
        kb.close()


def test_de_from_vconsole_conf(machine: Machine, vmdir: Path, de_image: Path,
                               layouts_root: Path, vm_cleanup: list[Vm]) -> None:
    """Proof 1: KEYMAP=de; ``Zürich-yz`` typed as a German keyboard user presses it."""
    vm = boot_and_type(machine, vmdir, "kbd-de", de_image, layouts_root, "", DE_KEYS,
                       vm_cleanup)
    vm.expect(ON_VT)
    unlocked(vm)
    facts = vm.real_init()
    assert facts["pid"] == "1" and facts["root_dm"] == "root", vm.transcript
    assert "load the keymap (in the background): keymap de-latin1 (" in vm.transcript, vm.transcript
    assert "warning: keymap" not in vm.transcript.split("REAL_INIT_REACHED")[0], vm.transcript


def test_de_keys_without_the_keymap_are_wrong(machine: Machine, vmdir: Path, image: Path,
                                              layouts_root: Path, vm_cleanup: list[Vm]) -> None:
    """Proof 1, the other side: the same key presses with no keymap in the image (US layout)
    are a wrong passphrase. Then the UTF-8 passphrase typed on serial, with a Backspace over a
    two-byte character, opens the volume."""
    vm = boot_and_type(machine, vmdir, "kbd-none", image, layouts_root, "", DE_KEYS,
                       vm_cleanup)
    vm.expect(ON_VT)
    vm.expect(r"wrong passphrase for root \(try 1 of 3\)")
    assert "load the keymap" not in vm.transcript
    # UTF-8 on the serial line: Zürü, Backspace over the ü (two bytes), ich-yz
    vm.expect(PROMPT)
    vm.type("Zürü\x7fich-yz")
    unlocked(vm)
    facts = vm.real_init()
    assert facts["pid"] == "1", vm.transcript


def test_fr_from_console_setup(machine: Machine, vmdir: Path, fr_console_setup_image: Path,
                               layouts_root: Path, vm_cleanup: list[Vm]) -> None:
    """Proof 2: Debian console-setup's French layout; the AZERTY passphrase ``àéç-azqw``."""
    vm = boot_and_type(machine, vmdir, "kbd-fr-cs", fr_console_setup_image, layouts_root, "",
                       FR_KEYS, vm_cleanup)
    vm.expect(ON_VT)
    unlocked(vm)
    facts = vm.real_init()
    assert facts["pid"] == "1" and facts["root_dm"] == "root", vm.transcript
    assert "load the keymap (in the background): keymap fr (" in vm.transcript, vm.transcript


def test_cmdline_overrides_the_file(machine: Machine, vmdir: Path, de_image: Path,
                                    layouts_root: Path, vm_cleanup: list[Vm]) -> None:
    """Proof 3: rd.vconsole.keymap=fr-latin9 beats KEYMAP=de-latin1 (the French keys typed on
    the German layout would give ``0296qway``, a wrong passphrase)."""
    vm = boot_and_type(machine, vmdir, "kbd-override", de_image, layouts_root,
                       "rd.vconsole.keymap=fr-latin9", FR_KEYS, vm_cleanup)
    vm.expect(ON_VT)
    unlocked(vm)
    facts = vm.real_init()
    assert facts["pid"] == "1", vm.transcript
    assert "load the keymap (in the background): keymap fr-latin9 (" in vm.transcript, vm.transcript


def test_missing_keymap_warns_and_asks_with_us(machine: Machine, vmdir: Path, de_image: Path,
                                               layouts_root: Path,
                                               vm_cleanup: list[Vm]) -> None:
    """Proof 4: a keymap name the image does not have: one warning naming it, the prompt with
    the default layout, and the US-typed passphrase boots."""
    vm = boot_and_type(machine, vmdir, "kbd-missing", de_image, layouts_root,
                       "rd.vconsole.keymap=xx-nosuch", US_KEYS, vm_cleanup)
    vm.expect(ON_VT)
    unlocked(vm)
    facts = vm.real_init()
    assert facts["pid"] == "1", vm.transcript
    before = vm.transcript.split("REAL_INIT_REACHED")[0]
    warning = "warning: keymap xx-nosuch: not in this image (it has: de-latin1, fr-latin9)"
    assert before.count(warning) == 1, vm.transcript


def test_itools_image_cryptboot_unlock_reads_the_vt_after_its_keymap(
        machine: Machine, vmdir: Path, kver: str, luks2_root: Path,
        vm_cleanup: list[Vm]) -> None:
    """Inside an initramfs-tools image with ``KEYMAP=y`` the builder loads the keymap
    (``setupcon`` in init-top, this machine's console-setup layout); ``cryptboot unlock``
    (local-top, later) then reads the passphrase typed on the VT's keyboard."""

    from tests.vm.conftest import LUKS_UUID, PASSPHRASE
    from tests.vm.hooks_helpers import image_listing, itools_confdir, make_install
    from tests.vm.test_hooks_itools import mkinitramfs as itools_mkinitramfs

    conf = itools_confdir(make_install(vmdir / "itools-kbd-destdir"), vmdir / "itools-kbd-conf",
                          {"cryptboot-keymap": "KEYMAP=y\n"})
    tab = vmdir / "crypttab-itools-kbd"
    tab.write_text(f"cryptroot UUID={LUKS_UUID} none luks,initramfs\n")
    image = vmdir / "itools-kbd.img"
    itools_mkinitramfs(conf, image, tab, kver)
    listing = image_listing(image)
    assert "bin/setupcon" in listing and "scripts/init-top/keymap" in listing, listing

    sock = vmdir / "itools-kbd.monitor"
    sock.unlink(missing_ok=True)
    vm = machine.boot("itools-kbd", image, [luks2_root],
                      f"{CONSOLES} root=/dev/mapper/cryptroot", extra=qemu_args(sock))
    vm_cleanup.append(vm)
    vm.expect(r"Please enter passphrase for disk cryptroot")
    kb = Keyboard(sock)
    try:
        time.sleep(TYPE_DELAY)
        kb.press([("shift-" + c.lower()) if c.isupper() else c for c in PASSPHRASE])
    finally:
        kb.close()
    vm.expect(ON_VT)
    facts = vm.real_init()
    assert facts["pid"] == "1" and facts["root_dm"] == "cryptroot", vm.transcript


# --- the font: loaded at boot, seen on the screen ---------------------------------------------

SAMPLE = "AaGgQq@&%$#3579Zz"
FONT = "/usr/share/consolefonts/Lat15-Fixed16.psf.gz"
# tty1 stays open from before SCREEN_READY until the Enter is read: a key pressed on a VT that
# nothing holds open is dropped, and the Enter may come before a later open
SCREEN_INIT = ("exec 3<>/dev/tty1\n"
               f"printf '\\033[H\\033[2J%s\\n' '{SAMPLE}' >&3\n"
               "echo SCREEN_READY\n"
               "read -r line <&3\n")


@pytest.fixture(scope="session")
def screen_root(vmdir: Path, root_tree: Path) -> Path:
    """The harness's LUKS2 root whose init writes :data:`SAMPLE` at the top of the cleared VT,
    says SCREEN_READY on serial and waits for Enter on the VT (the screen dump is taken then)."""
    import shutil

    from tests.vm.conftest import LUKS_UUID, REAL_INIT, luks_encrypt, make_ext4

    tree = vmdir / "roottree-screen"
    shutil.rmtree(tree, ignore_errors=True)
    shutil.copytree(root_tree, tree, symlinks=True)
    init = tree / "sbin/init"
    init.unlink()
    marker = 'echo "FACT uptime'
    assert marker in REAL_INIT
    init.write_text(REAL_INIT.replace(marker, SCREEN_INIT + marker, 1))
    init.chmod(0o755)
    img = make_ext4(vmdir / "root-screen.img", tree, label="realroot")
    return luks_encrypt(img, uuid=LUKS_UUID)


@pytest.fixture(scope="session")
def font_image(vmdir: Path, kver: str, pyc_cache: Path) -> Path:
    conf = vmdir / "vconsole-font.conf"
    conf.write_text("KEYMAP=de-latin1\nFONT=Lat15-Fixed16\n")
    return variant_image(vmdir, kver, pyc_cache, "kbd-font", "--crypttab", "none",
                         "--vconsole", str(conf))


def sample_on_screen(machine: Machine, vmdir: Path, name: str, initrd: Path, disk: Path,
                     cleanup: list[Vm]) -> tuple[list[list[int]], Vm]:
    """Boot, type the passphrase on serial, and read :data:`SAMPLE`'s cells off the screen
    the real init drew it on."""
    from tests.vm.conftest import PASSPHRASE
    from tests.vm.keymap_helpers import screen_cells

    sock = vmdir / f"{name}.monitor"
    sock.unlink(missing_ok=True)
    vm = machine.boot(name, initrd, [disk], f"{CONSOLES} root=/dev/mapper/root {luks_args()} "
                      "rd.emergency=poweroff loglevel=1", extra=qemu_args(sock))
    cleanup.append(vm)
    vm.expect(PROMPT)
    vm.type(PASSPHRASE)
    vm.expect("REAL_INIT_REACHED")
    vm.expect("SCREEN_READY")
    kb = Keyboard(sock)
    try:
        screen = kb.screendump(vmdir / f"{name}.ppm")
        kb.press([])  # Enter on the VT: the real init goes on
    finally:
        kb.close()
    vm.expect("REAL_INIT_DONE")
    vm.wait_exit()
    return screen_cells(screen, 0, len(SAMPLE)), vm


def test_the_font_is_loaded_at_boot(machine: Machine, vmdir: Path, font_image: Path,
                                    image: Path, screen_root: Path,
                                    vm_cleanup: list[Vm]) -> None:
    """FONT=Lat15-Fixed16: after the boot the VT draws its text with that font's glyphs (the
    screen as QEMU renders it, cell by cell, against the glyphs of the font file); the same
    boot without a font draws the same text with other glyphs (the firmware's)."""
    from tests.vm.keymap_helpers import psf_glyphs

    glyphs = psf_glyphs(gzip.decompress(Path(FONT).read_bytes()))
    want = [glyphs[c] for c in SAMPLE]

    cells, vm = sample_on_screen(machine, vmdir, "kbd-font", font_image, screen_root,
                                 vm_cleanup)
    assert "warning: font" not in vm.transcript, vm.transcript
    assert "font Lat15-Fixed16" in vm.transcript, vm.transcript
    wrong = [c for c, got, exp in zip(SAMPLE, cells, want, strict=True) if got != exp]
    assert not wrong, f"cells not drawn with Lat15-Fixed16: {wrong}"

    cells, vm = sample_on_screen(machine, vmdir, "kbd-nofont", image, screen_root, vm_cleanup)
    assert all(any(rows) for rows in cells), "the sample is not on the screen"
    same = [c for c, got, exp in zip(SAMPLE, cells, want, strict=True) if got == exp]
    assert len(same) < len(SAMPLE) // 2, f"without the font, Lat15-Fixed16's glyphs: {same}"


# --- dracut: its i18n module loads the keymap, cryptboot unlock reads the VT after it --------


@pytest.fixture(scope="session")
def dracut_kbd_image(vmdir: Path, kver: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A non-systemd dracut image with cryptboot's module and dracut's own ``i18n`` module.

    dracut's i18n takes the console files from the first ``kbddir`` holding consolefonts,
    consoletrans, keymaps and unimaps; this host's console-data has no unimaps, so the build
    gets a private one (``kbddir`` in dracut's environment): the host's i386 keymaps and their
    includes, and the font Lat15-Fixed16. ``--no-hostonly``: i18n copies them all in, and at
    boot its cmdline hook writes ``rd.vconsole.keymap=`` into vconsole.conf and its udev rule
    runs ``loadkeys -u`` on tty0 from the initqueue (before cryptboot's unlock job). Debian's
    ``console-setup`` dracut module is left out: it would put this host's layout in instead."""
    import os
    import shutil

    from tests.vm.hooks_helpers import dracut_base, image_listing
    from tests.vm.test_hooks_dracut import OMIT, dracut

    work = tmp_path_factory.mktemp("dracut-kbd")
    kbd = work / "kbd"
    for sub in ("consolefonts", "consoletrans", "keymaps", "unimaps"):
        (kbd / sub).mkdir(parents=True)
    (kbd / "keymaps/i386").symlink_to("/usr/share/keymaps/i386")
    (kbd / "keymaps/include").symlink_to("/usr/share/keymaps/include")
    shutil.copy(FONT, kbd / "consolefonts")
    empty = work / "crypttab-empty"
    empty.write_text("")
    image = vmdir / "dracut-kbd.img"
    os.environ["kbddir"] = str(kbd)
    try:
        # Debian's console-setup module (this host's setupcon layout) replaces i18n's udev rule
        dracut(dracut_base(work), image, empty, kver, "--add", "cryptboot i18n", "--omit",
               f"{OMIT} console-setup")
    finally:
        del os.environ["kbddir"]
    listing = image_listing(image)
    assert "lib/udev/console_init" in listing and "qwertz/de-latin1.kmap" in listing, listing
    return image


def test_dracut_image_cryptboot_unlock_reads_the_vt_after_its_keymap(
        machine: Machine, vmdir: Path, dracut_kbd_image: Path, layouts_root: Path,
        vm_cleanup: list[Vm]) -> None:
    """Inside a dracut image, dracut's i18n module loads ``rd.vconsole.keymap=de-latin1``;
    ``cryptboot unlock`` (a later initqueue job) reads ``Zürich-yz`` typed on the VT's keyboard
    as a German user presses it. The same image and key presses without the keymap option
    (dracut then loads none): a wrong passphrase."""
    from tests.vm.conftest import LUKS_UUID
    from tests.vm.test_hooks_dracut import APPEND

    name = f"luks-{LUKS_UUID}"
    prompt = rf"Please enter passphrase for disk {name} \(/dev/vda\): "
    for case, option in (("dracut-kbd-de", "rd.vconsole.keymap=de-latin1 "
                          "rd.vconsole.font=Lat15-Fixed16"), ("dracut-kbd-none", "")):
        sock = vmdir / f"{case}.monitor"
        sock.unlink(missing_ok=True)
        vm = machine.boot(case, dracut_kbd_image, [layouts_root],
                          f"{CONSOLES} root=/dev/mapper/{name} rd.luks.uuid={LUKS_UUID} "
                          f"{APPEND} {option}", extra=qemu_args(sock))
        vm_cleanup.append(vm)
        type_at_prompt(vm, sock, prompt, DE_KEYS)
        vm.expect(ON_VT)
        if option:
            if vm.expect([rf"cryptboot: {name}: unlocked", r"wrong passphrase for"]) == 1:
                raise vm.fail("the passphrase typed on the VT was wrong")
            facts = vm.real_init()
            assert facts["pid"] == "1" and facts["root_dm"] == name, vm.transcript
            assert f"cryptboot: {name}: unlocked" in vm.transcript, vm.transcript
            assert "wrong passphrase" not in vm.transcript, vm.transcript
        else:
            vm.expect(rf"wrong passphrase for {name} \(try 1 of \d+\)")
            vm.close()
