"""tang (clevis) tokens in real boots: Debian's tangd reached from the guest through QEMU's
user network (``restrict=on``; ``guestfwd=...-cmd:tangd``: no socket on the host), disks bound
with the real ``clevis luks bind`` on the host (against the same key directory's signed
advertisement, saved to a file: the host cannot reach the guest's 10.0.2.x addresses).

Proofs 3-7 of issue 13: a tang-bound root boots with nothing typed; with the server absent the
prompt is there at once, the unreachable line comes, the passphrase boots it; sss with two
servers, threshold 1, one down, boots; keys rotated the tang way (new keys, old ones hidden)
boot; the real root finds the network down and its addresses gone.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.tang_helpers import (
    TangServer,
    clevis_luks_bind,
    fetch_adv_file,
    guestfwd,
    make_keys,
    rotate_keys,
    tang_missing,
)
from tests.vm.conftest import (
    LUKS_UUID,
    PASSPHRASE,
    Machine,
    Vm,
    encrypted_copy,
    luks_args,
    variant_image,
)

pytestmark = [pytest.mark.vm,
              pytest.mark.skipif(tang_missing() is not None, reason=str(tang_missing()))]

PROMPT = r"Please enter passphrase for disk root \(/dev/vda\): "
ARGS = f"root=/dev/mapper/root {luks_args()} rd.emergency=poweroff"
TANG_A, TANG_B = "10.0.2.100", "10.0.2.101"


def net(*fwds: str) -> list[str]:
    opts = ",".join(["user", "id=n0", "restrict=on", *fwds])
    return ["-netdev", opts, "-device", "virtio-net-pci,netdev=n0"]


def keydir(vmdir: Path, name: str) -> Path:
    db = vmdir / f"tang-{name}"
    if not db.exists():
        make_keys(db)
    return db


def bind(disk: Path, pin: str, config: dict[str, object]) -> Path:
    clevis_luks_bind(disk, PASSPHRASE.encode(), pin, json.dumps(config))
    return disk


def adv_of(vmdir: Path, db: Path) -> str:
    """The signed advertisement of ``db``, from a real tangd on loopback, as a file."""
    srv = TangServer(db)
    try:
        return str(fetch_adv_file(srv, vmdir / f"{db.name}.adv"))
    finally:
        srv.close()


@pytest.fixture(scope="session")
def tang_image(vmdir: Path, kver: str, pyc_cache: Path) -> Path:
    return variant_image(vmdir, kver, pyc_cache, "tang", "--crypttab", "none",
                         "--token", "clevis", "--network", "generic")


@pytest.fixture(scope="session")
def tang_disk(vmdir: Path, plain_root: Path) -> Path:
    db = keydir(vmdir, "a")
    disk = encrypted_copy(plain_root, vmdir / "root-tang.img", uuid=LUKS_UUID)
    return bind(disk, "tang", {"url": f"http://{TANG_A}", "adv": adv_of(vmdir, db)})


def _boot(machine: Machine, name: str, image: Path, disk: Path, netargs: list[str],
          vms: list[Vm], args: str = ARGS) -> Vm:
    vm = machine.boot(name, image, [disk], args, extra=netargs)
    vms.append(vm)
    return vm


def test_tang_root_boots_without_typing(machine: Machine, tang_image: Path, tang_disk: Path,
                                        vmdir: Path, vm_cleanup: list[Vm]) -> None:
    """Proofs 3 and 7: nothing typed; the real init sees the mapping, and the network the
    token brought up is down with its addresses gone."""
    vm = _boot(machine, "tang-up", tang_image, tang_disk,
               net(guestfwd(TANG_A, keydir(vmdir, "a"))), vm_cleanup)
    facts = vm.real_init()
    assert facts["pid"] == "1" and facts["root_dm"] == "root", vm.transcript
    assert facts["mappings"] == "root", vm.transcript
    assert f"(root unlocked with the clevis token 0 (tang http://{TANG_A}))" in vm.transcript
    assert "network: eth0 flushed and down" in vm.transcript, vm.transcript
    assert facts["netifs"] == "eth0=down:", vm.transcript


def test_tang_absent_prompt_then_passphrase(machine: Machine, tang_image: Path,
                                            tang_disk: Path, vm_cleanup: list[Vm]) -> None:
    """Proof 4: no tang server: the prompt at once, the unreachable line within the token
    timeout, the passphrase boots it."""
    vm = _boot(machine, "tang-absent", tang_image, tang_disk, net(), vm_cleanup,
               ARGS + " rd.luks.options=token-timeout=8")
    vm.expect(PROMPT)
    vm.expect(rf"root: clevis token 0: tang server http://{TANG_A} did not answer within "
              r"\d+ s: [^\r\n]+; trying the next key source")
    vm.type(PASSPHRASE)
    facts = vm.real_init()
    assert facts["pid"] == "1" and facts["root_dm"] == "root", vm.transcript
    assert "unlocked with the clevis" not in vm.transcript


def test_tang_absent_passphrase_does_not_wait_for_the_token(
        machine: Machine, tang_image: Path, tang_disk: Path, vm_cleanup: list[Vm]) -> None:
    """Proof 4, second half: the passphrase typed at once while the token still retries (its
    timeout far beyond the VM's): the boot goes on, the token is called off rather than left
    to run out (no "did not answer within" line before the real init)."""
    vm = _boot(machine, "tang-absent-typed", tang_image, tang_disk, net(), vm_cleanup,
               ARGS + " rd.luks.options=token-timeout=3000")
    vm.expect(PROMPT)
    vm.type(PASSPHRASE)
    facts = vm.real_init()
    assert facts["pid"] == "1" and facts["root_dm"] == "root", vm.transcript
    before = vm.transcript.split("REAL_INIT_REACHED")[0]
    assert "did not answer within" not in before, vm.transcript
    assert "unlocked with the clevis" not in vm.transcript, vm.transcript


def test_sss_one_of_two_with_one_down(machine: Machine, tang_image: Path, vmdir: Path,
                                      plain_root: Path, vm_cleanup: list[Vm]) -> None:
    """Proof 5: sss, threshold 1, over two tang servers; the first is down at boot."""
    a, b = keydir(vmdir, "a"), keydir(vmdir, "b")
    disk = encrypted_copy(plain_root, vmdir / "root-sss.img", uuid=LUKS_UUID)
    bind(disk, "sss", {"t": 1, "pins": {"tang": [
        {"url": f"http://{TANG_A}", "adv": adv_of(vmdir, a)},
        {"url": f"http://{TANG_B}", "adv": adv_of(vmdir, b)}]}})
    vm = _boot(machine, "tang-sss", tang_image, disk, net(guestfwd(TANG_B, b)), vm_cleanup)
    facts = vm.real_init()
    assert facts["pid"] == "1" and facts["root_dm"] == "root", vm.transcript
    assert f"(root unlocked with the clevis token 0 (sss 1 of [tang http://{TANG_A}, " \
           f"tang http://{TANG_B}]))" in vm.transcript, vm.transcript


def test_rotated_keys_boot(machine: Machine, tang_image: Path, vmdir: Path, plain_root: Path,
                           vm_cleanup: list[Vm]) -> None:
    """Proof 6: bound, then the server's keys rotated as tang documents (new keys made, the
    old ones renamed to hidden files that are still used for recovery): boots."""
    db = vmdir / "tang-rotated"
    if db.exists():
        shutil.rmtree(db)
    old = make_keys(db)
    disk = encrypted_copy(plain_root, vmdir / "root-rotated.img", uuid=LUKS_UUID)
    bind(disk, "tang", {"url": f"http://{TANG_A}", "adv": adv_of(vmdir, db)})
    rotate_keys(db)
    assert {p.name for p in db.iterdir()} >= {"." + n for n in old}
    vm = _boot(machine, "tang-rotated", tang_image, disk, net(guestfwd(TANG_A, db)), vm_cleanup)
    facts = vm.real_init()
    assert facts["pid"] == "1" and facts["root_dm"] == "root", vm.transcript
    assert "(root unlocked with the clevis token 0 (tang" in vm.transcript, vm.transcript
