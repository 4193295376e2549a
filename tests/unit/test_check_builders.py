"""``cryptboot check`` against images of all three builders: cryptboot's ``mkinitramfs``, the
distribution's real ``dracut`` (with the module 91cryptboot) and initramfs-tools'
``mkinitramfs`` (with the cryptboot hook), each built once for the module.

The machine is the VM tier's (tests/check_facts.py: a virtio disk holding a LUKS2 volume whose
mapping ``root`` is the ext4 root), given as a tree to ``--root``; its ``dev/vda`` is a real
LUKS2 header made here with cryptsetup, so the ciphers come from ``luksDump`` and the keyfile is
tested with ``cryptsetup open --test-passphrase``. A complete image reports nothing; the same
image with one needed module or the keyfile left out reports exactly that.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.check_facts import VIRTIO_LUKS_ROOT, build_tree, image_without

UUID = "5e1f0000-aaaa-4bbb-8ccc-000000000001"
CMDLINE = "root=/dev/mapper/root ro"
CRYPTBOOT = [sys.executable, "-m", "cryptboot"]


def kver() -> str:
    found = sorted(Path("/boot").glob("vmlinuz-*-cloud-amd64"))
    if not found:
        pytest.skip("no /boot/vmlinuz-*-cloud-amd64 (apt-get install linux-image-cloud-amd64)")
    return found[-1].name[len("vmlinuz-"):]


def need(*progs: str) -> None:
    for p in progs:
        if shutil.which(p) is None:
            pytest.skip(f"{p} not installed (tools/setup.sh installs it)")


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("check-builders")


@pytest.fixture(scope="module")
def machine(work: Path) -> dict[str, Path]:
    """The LUKS2 device (a 20 MiB file, keyfile slot), the keyfile, crypttab, the facts tree."""
    need("cryptsetup")
    disk = work / "vda.img"
    with open(disk, "wb") as f:
        f.truncate(20 << 20)
    keys = work / "keys"
    keys.mkdir(mode=0o700)
    key = keys / "root.key"
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(os.urandom(64))
    subprocess.run(["cryptsetup", "luksFormat", "-q", "--type", "luks2", "--uuid", UUID,
                    "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", str(disk),
                    str(key)], check=True, capture_output=True)
    crypttab = work / "crypttab"
    crypttab.write_text(f"root UUID={UUID} {key} luks,initramfs,headless=true\n")
    tree = build_tree(work / "facts", VIRTIO_LUKS_ROOT, {"vda": disk})
    return {"disk": disk, "key": key, "crypttab": crypttab, "tree": tree}


def check(image: Path, machine: dict[str, Path], k: str) -> tuple[int, dict[str, object]]:
    proc = subprocess.run([*CRYPTBOOT, "check", str(image), "--kver", k, "--cmdline", CMDLINE,
                           "--root", str(machine["tree"]), "--json"],
                          capture_output=True, text=True)
    assert proc.returncode in (0, 1), proc.stderr
    assert "Traceback" not in proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def messages(report: dict[str, object]) -> list[str]:
    findings = report["findings"]
    assert isinstance(findings, list)
    return [f["message"] for f in findings]


# --- the three builders, each run once ------------------------------------------------------


@pytest.fixture(scope="module")
def cryptboot_image(work: Path, machine: dict[str, Path]) -> Path:
    need("cryptsetup", "zstd")
    k = kver()
    out = work / "cryptboot.img"
    subprocess.run([*CRYPTBOOT, "mkinitramfs", "-o", str(out), "--kver", k,
                    "--crypttab", str(machine["crypttab"]), "--keyfile", str(machine["key"]),
                    "--cache-dir", str(work / "pyc")], check=True, capture_output=True,
                   env={**os.environ, "SOURCE_DATE_EPOCH": "1700000000"})
    return out


@pytest.fixture(scope="module")
def installed(work: Path) -> Path:
    from tests.vm.hooks_helpers import make_install

    return make_install(work / "destdir")


@pytest.fixture(scope="module")
def dracut_image(work: Path, machine: dict[str, Path], installed: Path) -> Path:
    need("dracut", "cryptsetup")
    from tests.vm.hooks_helpers import CRYPTBOOT as HOOK_CRYPTBOOT
    from tests.vm.hooks_helpers import dracut_base

    base = dracut_base(work / "dracut")
    out = work / "dracut.img"
    env = dict(os.environ, dracutbasedir=str(base), CRYPTBOOT=HOOK_CRYPTBOOT,
               CRYPTBOOT_CRYPTTAB=str(machine["crypttab"]))
    proc = subprocess.run(["dracut", "-q", "--no-hostonly", "--kver", kver(), "--add",
                           "cryptboot", "--omit", "crypt systemd systemd-initrd dracut-systemd",
                           "-f", str(out)], env=env, capture_output=True)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-4000:]
    return out


@pytest.fixture(scope="module")
def itools_image(work: Path, machine: dict[str, Path], installed: Path) -> Path:
    need("mkinitramfs", "cryptsetup")
    from tests.vm.hooks_helpers import CRYPTBOOT as HOOK_CRYPTBOOT
    from tests.vm.hooks_helpers import itools_confdir

    conf = itools_confdir(installed, work / "initramfs-tools",
                          {"cryptboot-test": "UMASK=0077\n"})
    out = work / "itools.img"
    env = dict(os.environ, CRYPTBOOT=HOOK_CRYPTBOOT, CRYPTBOOT_CRYPTTAB=str(machine["crypttab"]))
    proc = subprocess.run(["mkinitramfs", "-d", str(conf), "-o", str(out), kver()], env=env,
                          capture_output=True)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-4000:]
    return out


BUILDERS = ["cryptboot_image", "dracut_image", "itools_image"]


def image_of(request: pytest.FixtureRequest, builder: str) -> Path:
    path = request.getfixturevalue(builder)
    assert isinstance(path, Path)
    return path


def module_file(name: str) -> Callable[[str], bool]:
    return lambda p: "/lib/modules/" in "/" + p and \
        os.path.basename(p).split(".ko")[0].replace("-", "_") == name


@pytest.mark.parametrize("builder", BUILDERS)
def test_complete_image_has_no_finding(request: pytest.FixtureRequest, builder: str,
                                       machine: dict[str, Path]) -> None:
    rc, report = check(image_of(request, builder), machine, kver())
    assert messages(report) == [] and rc == 0, report
    assert report["boots"] is True
    checked = report["checked"]
    assert isinstance(checked, dict)
    # the keyfile was really tried against the LUKS header, and the ciphers read from it
    assert checked["keyfiles"] == [f"{machine['key']}: the image's copy opens root"]
    assert "xts" in checked["ciphers needed"][0]


@pytest.mark.parametrize("builder", BUILDERS)
def test_disk_driver_left_out(request: pytest.FixtureRequest, builder: str,
                              machine: dict[str, Path], work: Path) -> None:
    img = image_without(image_of(request, builder), work / f"{builder}-no-virtio_blk.img",
                        module_file("virtio_blk"))
    rc, report = check(img, machine, kver())
    assert messages(report) == [
        "module virtio_blk (driver of /dev/vda, under the LUKS volume root of /) is not in "
        "the image"], report
    assert rc == 1


@pytest.mark.parametrize("builder", BUILDERS)
def test_cipher_module_left_out(request: pytest.FixtureRequest, builder: str,
                                machine: dict[str, Path], work: Path) -> None:
    img = image_without(image_of(request, builder), work / f"{builder}-no-xts.img",
                        module_file("xts"))
    rc, report = check(img, machine, kver())
    assert messages(report) == [
        "module xts (cipher aes-xts-plain64 of LUKS volume root on /dev/vda, under /) is not "
        "in the image"], report
    assert rc == 1


@pytest.mark.parametrize("builder", BUILDERS)
def test_keyfile_left_out(request: pytest.FixtureRequest, builder: str,
                          machine: dict[str, Path], work: Path) -> None:
    key = str(machine["key"]).lstrip("/")
    img = image_without(image_of(request, builder), work / f"{builder}-no-key.img",
                        lambda p: p == key)
    rc, report = check(img, machine, kver())
    assert messages(report) == [
        f"keyfile {machine['key']} (key of volume root ({img}:/etc/crypttab:1)) is not in the "
        "image"], report
    assert rc == 1


# --- more findings, on the cryptboot image (built once above) ---------------------------------


def run_check(image: Path, tree: Path, cmdline: str, *extra: str) -> tuple[int, list[str]]:
    proc = subprocess.run([*CRYPTBOOT, "check", str(image), "--kver", kver(), "--cmdline",
                           cmdline, "--root", str(tree), "--json", *extra],
                          capture_output=True, text=True)
    assert proc.returncode in (0, 1), proc.stderr
    report = json.loads(proc.stdout)
    assert report["boots"] is (proc.returncode == 0)
    return proc.returncode, [("error: " if f["blocking"] else "warning: ") + f["message"]
                             for f in report["findings"]]


def test_program_left_out(cryptboot_image: Path, machine: dict[str, Path], work: Path) -> None:
    img = image_without(cryptboot_image, work / "no-cryptsetup.img",
                        lambda p: os.path.basename(p) == "cryptsetup")
    assert run_check(img, machine["tree"], CMDLINE) == (1, [
        "error: program cryptsetup (to unlock /dev/mapper/root under /) is not in the image"])


def test_dependency_of_a_present_module_left_out(cryptboot_image: Path,
                                                 machine: dict[str, Path], work: Path) -> None:
    img = image_without(cryptboot_image, work / "no-dm_mod.img", module_file("dm_mod"))
    assert run_check(img, machine["tree"], CMDLINE) == (1, [
        "error: module dm_mod (needed by dm_crypt: dm-crypt, for /dev/mapper/root under /) is "
        "not in the image"])


def test_volume_device_missing(cryptboot_image: Path, machine: dict[str, Path]) -> None:
    other = "5e1f0000-dead-4bbb-8ccc-00000000beef"
    rc, found = run_check(cryptboot_image, machine["tree"],
                          f"{CMDLINE} rd.luks.uuid={other}")
    assert (rc, found) == (1, [
        f"error: device UUID={other} of volume luks-{other} (cmdline: rd.luks.uuid={other}) "
        "does not exist on this system"])


def test_running_root_volume_not_in_the_plan(machine: dict[str, Path], work: Path) -> None:
    """An image without the crypttab line (the classic generic-image mistake): the LUKS volume
    under / is unlocked by nothing, and this system's crypttab line is named as the fix."""
    facts = VIRTIO_LUKS_ROOT + "U 253:0 E:ID_FS_LABEL=realroot\nU 253:0 E:ID_FS_TYPE=ext4\n"
    tree = build_tree(work / "facts-label", facts, {"vda": machine["disk"]})
    img = image_without(request_image(work), work / "no-crypttab.img",
                        lambda p: p == "etc/crypttab")
    rc, found = run_check(img, tree, "root=LABEL=realroot", "--crypttab",
                          str(machine["crypttab"]))
    assert (rc, found) == (1, [
        "error: the LUKS volume root on /dev/vda (under /) is unlocked by nothing the boot "
        "reads: no crypttab line in the image and nothing on the command line names it "
        f"({machine['crypttab']}:1 names it as root: mark it 'initramfs' and rebuild the "
        "image)"])


def request_image(work: Path) -> Path:
    path = work / "cryptboot.img"
    assert path.exists(), "the cryptboot image fixture runs first"
    return path


def test_root_names_no_volume(cryptboot_image: Path, machine: dict[str, Path]) -> None:
    rc, found = run_check(cryptboot_image, machine["tree"], "root=/dev/mapper/cryptroot")
    assert rc == 1
    assert found == [
        "error: the boot's plan fails: --cmdline:1: root=/dev/mapper/cryptroot: expected a "
        "volume named 'cryptroot', found root"], found


def test_resume_device_driver(cryptboot_image: Path, machine: dict[str, Path],
                              work: Path) -> None:
    """A swap disk on a VMware PVSCSI controller: the SCSI disk driver and the controller's
    (modules of the cloud kernel that an image built for a virtio VM leaves out)."""
    dev = "pci0000:00/0000:00:15.0/host2/target2:0:0/2:0:0:0"
    facts = VIRTIO_LUKS_ROOT + (
        f"B sdb 8:16 {dev}/block/sdb 0\n"
        f"D {dev} sd sd_mod\n"
        "D pci0000:00/0000:00:15.0 vmw_pvscsi vmw_pvscsi\n")
    tree = build_tree(work / "facts-resume", facts, {"vda": machine["disk"]})
    rc, found = run_check(cryptboot_image, tree, f"{CMDLINE} resume=/dev/sdb")
    assert (rc, found) == (1, [
        "error: module sd_mod (driver sd of /dev/sdb, under the resume device) is not in the "
        "image",
        "error: module vmw_pvscsi (driver of 0000:00:15.0, a controller of /dev/sdb, under the "
        "resume device) is not in the image"])


PROMPTED = (f"rd.luks.crypttab=0 rd.luks.uuid={UUID} rd.luks.name={UUID}=root "
            "root=/dev/mapper/root")


@pytest.mark.parametrize("builder", BUILDERS)
def test_keymap_of_a_prompted_volume(request: pytest.FixtureRequest, builder: str,
                                     machine: dict[str, Path], work: Path) -> None:
    """This system types on a German keyboard (console-setup) and the volume will ask: an image
    without the keymap gets a warning (the boot still goes on: a passphrase may be typeable)."""
    tree = work / f"facts-keymap-{builder}"
    if not tree.exists():
        shutil.copytree(machine["tree"], tree, symlinks=True)
        (tree / "etc/default").mkdir(parents=True)
        (tree / "etc/default/keyboard").write_text('XKBMODEL="pc105"\nXKBLAYOUT="de"\n'
                                                  'XKBVARIANT=""\n')
    rc, found = run_check(image_of(request, builder), tree, PROMPTED)
    assert (rc, found) == (0, [
        "warning: keymap de (set in /etc/default/keyboard) is not in the image: the passphrase "
        "of root will be read with the kernel's US layout"])
    # a headless keyfile volume never asks: no keymap needed
    assert run_check(image_of(request, builder), tree, CMDLINE) == (0, [])


def test_root_spec_that_nothing_holds(cryptboot_image: Path, machine: dict[str, Path]) -> None:
    """root=LABEL= of a file system that exists nowhere, while the plan's only volume is open
    here (vda has the holder dm-0): no mapping the plan makes can hold it."""
    rc, found = run_check(cryptboot_image, machine["tree"], "root=LABEL=elsewhere")
    assert (rc, found) == (1, [
        "error: root=LABEL=elsewhere is no device on this system, and every volume of the plan "
        "is open here: no mapping the plan makes holds it"])


def test_image_for_another_kernel(cryptboot_image: Path, machine: dict[str, Path]) -> None:
    proc = subprocess.run([*CRYPTBOOT, "check", str(cryptboot_image), "--kver", "6.1.0-0-none",
                           "--cmdline", CMDLINE, "--root", str(machine["tree"])],
                          capture_output=True, text=True)
    assert proc.returncode == 1, proc
    lines = proc.stdout.splitlines()
    assert lines[:-1] == [
        "warning: no modules.dep for kernel 6.1.0-0-none in /lib/modules/6.1.0-0-none: module "
        "needs are not checked",
        f"error: the image holds modules for {kver()}, not for kernel 6.1.0-0-none"], lines
