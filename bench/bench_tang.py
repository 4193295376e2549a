"""Unattended unlock benchmark (issue 13): TPM2 and tang beside the keyfile, and beside
initramfs-tools with Debian's ``clevis-initramfs`` for tang.

One LUKS2 disk (bench_boot's: passphrase and keyfile slots), copied three times: as it is (the
keyfile case), enrolled with the real ``systemd-cryptenroll --tpm2-device=`` against a swtpm
(PCR 15, as tests/vm/tpm2_helpers.py), bound with the real ``clevis luks bind … tang`` to
Debian's ``tangd``. Every boot has the same QEMU flags and the same NIC on the user network
(``restrict=on``, ``guestfwd`` to a ``tangd`` on its stdio: no socket on the host); the TPM2
boots add their swtpm. Nothing is typed in any boot. Cases, round-robin:

- ``cryptboot keyfile``: ``--crypttab`` with the key in the image (``--keyfile``);
- ``cryptboot tpm2``: ``--token tpm2`` (systemd's token plugin through libcryptsetup);
- ``cryptboot tang``: ``--token clevis --network generic`` (its own tang client, udhcpc);
- ``initramfs-tools + clevis-initramfs``: ``mkinitramfs -d CONF`` (MODULES=list: the disk's
  modules and virtio_net) with clevis-initramfs' hook and boot scripts in CONF, the tang disk,
  ``cryptopts=`` and ``ip=::::::dhcp`` on the command line (DHCP on any interface: with the
  short ``ip=dhcp`` clevis-initramfs 19 takes the sixth ``:`` field, which ``cut`` then
  gives as ``dhcp``, for an interface name and waits 10 s for an interface called "dhcp").

clevis-initramfs is not installed on the machine: installed, its hook would go into every
initramfs-tools image built here (the other benchmarks' peers and tests). Its package is
fetched with ``apt-get download`` into the work directory and unpacked; its hook and scripts
are put in the private CONF (``mkinitramfs -d`` runs ``CONF/hooks`` and copies
``CONF/scripts``), what it needs (clevis, clevis-luks, jose, luksmeta, curl) is installed.

Measured: kernel start → real init on the guest clock (its uptime), under TCG. Runs:
``CRYPTBOOT_BENCH_RUNS`` (default 3).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.bench_boot import (
    DISK_MODULES,
    KEY_PATH,
    LUKS_UUID,
    PASSPHRASE,
    image_sizes,
    kernel,
    make_disk,
    sh,
)

REPO = Path(__file__).resolve().parent.parent
TANG_ADDR = "10.0.2.100"


@dataclass
class Case:
    name: str
    image: Path
    disk: Path
    append: str
    tpm: bool = False
    runs: list[float] = field(default_factory=list)
    failures: int = 0


def clevis_initramfs(work: Path) -> Path:
    """clevis-initramfs unpacked into ``work`` (``apt-get download``, once)."""
    root = work / "clevis-initramfs"
    if (root / "usr/share/initramfs-tools/hooks/clevis").exists():
        return root
    dl = work / "deb"
    dl.mkdir(parents=True, exist_ok=True)
    for p in dl.glob("clevis-initramfs_*.deb"):
        p.unlink()
    sh(["apt-get", "download", "clevis-initramfs"], cwd=dl)
    deb = next(dl.glob("clevis-initramfs_*.deb"))
    sh(["dpkg-deb", "-x", str(deb), str(root)])
    return root


def itools_clevis_conf(work: Path) -> Path:
    src = clevis_initramfs(work) / "usr/share/initramfs-tools"
    conf = work / "itools-clevis.conf"
    shutil.rmtree(conf, ignore_errors=True)
    shutil.copytree("/etc/initramfs-tools", conf, symlinks=True)
    (conf / "conf.d").mkdir(exist_ok=True)
    (conf / "conf.d" / "bench").write_text("MODULES=list\nCOMPRESS=zstd\n")
    (conf / "modules").write_text("".join(m + "\n" for m in (*DISK_MODULES, "virtio_net")))
    for sub in ("hooks", "scripts/local-top", "scripts/local-bottom"):
        (conf / sub).mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / sub / "clevis", conf / sub / "clevis")
    return conf


def tang_disk(work: Path, disk: Path, db: Path) -> Path:
    from tests.tang_helpers import TangServer, clevis_luks_bind, fetch_adv_file, make_keys

    if not db.exists():
        make_keys(db)
    out = work / "disk-tang.img"
    shutil.copyfile(disk, out)
    srv = TangServer(db)
    try:
        adv = fetch_adv_file(srv, work / "tang.adv")
    finally:
        srv.close()
    clevis_luks_bind(out, PASSPHRASE.encode(), "tang",
                     json.dumps({"url": f"http://{TANG_ADDR}", "adv": str(adv)}))
    return out


def tpm2_disk(work: Path, disk: Path) -> tuple[Path, Path]:
    from tests.vm.tpm2_helpers import PCR, HostTpm

    out = work / "disk-tpm2.img"
    shutil.copyfile(disk, out)
    state = work / "tpm2-state"
    shutil.rmtree(state, ignore_errors=True)
    tpm = HostTpm(state)
    try:
        tpm.enroll(out, PASSPHRASE, PCR)
    finally:
        tpm.close()
    return out, state


def boot(case: Case, kpath: Path, db: Path, state: Path, work: Path, run: int) -> None:
    import pexpect

    from tests.tang_helpers import guestfwd
    from tests.vm.tpm2_helpers import GuestTpm

    tag = "".join(ch if ch.isalnum() else "-" for ch in case.name)
    tpm = GuestTpm(state, work / f"tpm-{tag}") if case.tpm else None
    argv = ["qemu-system-x86_64", "-accel", "tcg", "-cpu", "max", "-m", "512", "-nographic",
            "-nodefaults", "-serial", "stdio", "-no-reboot",
            "-netdev", f"user,id=n0,restrict=on,{guestfwd(TANG_ADDR, db)}",
            "-device", "virtio-net-pci,netdev=n0", *(tpm.qemu_args() if tpm else []),
            "-kernel", str(kpath), "-initrd", str(case.image),
            "-append", f"console=ttyS0 panic=-1 quiet {case.append}",
            "-drive", f"file={case.disk},format=raw,if=virtio,snapshot=on"]
    child = pexpect.spawn(argv[0], argv[1:], timeout=300, maxread=65536)
    child.logfile_read = open(work / "logs" / f"{tag}-{run}.log", "wb")  # noqa: SIM115
    try:
        child.expect(rb"REAL_INIT_REACHED[\r\n]+\s*([0-9.]+) ")
        case.runs.append(float(child.match.group(1)))
        child.expect(pexpect.EOF, timeout=60)
    except (pexpect.TIMEOUT, pexpect.EOF):
        case.failures += 1
        print(f"bench_tang: {case.name} run {run} failed, see {work / 'logs'}", file=sys.stderr)
    finally:
        child.close(force=True)
        child.logfile_read.close()
        if tpm is not None:
            tpm.close()


def _cell(c: Case) -> str:
    if not c.runs:
        return "failed" if c.failures else "—"
    v = sorted(c.runs)
    return f"{statistics.median(v):.2f} ({v[0]:.2f}–{v[-1]:.2f})"


def _ratio(a: Case, b: Case) -> str:
    if not a.runs or not b.runs:
        return "n/a"
    return f"{statistics.median(a.runs) / statistics.median(b.runs):.2f}x"


def main() -> str:
    runs = int(os.environ.get("CRYPTBOOT_BENCH_RUNS", "3"))
    work = Path(os.environ.get("CRYPTBOOT_BENCH_DIR", REPO / "build" / "bench-tang"))
    (work / "logs").mkdir(parents=True, exist_ok=True)
    kpath, kver = kernel()
    print(f"bench_tang: disks and images in {work}", file=sys.stderr, flush=True)
    disk, key = make_disk(work)
    db = work / "tang-db"
    t_disk = tang_disk(work, disk, db)
    p_disk, state = tpm2_disk(work, disk)
    u = LUKS_UUID
    tab = work / "crypttab-key"
    tab.write_text(f"root UUID={u} {KEY_PATH} luks\n")
    common = [sys.executable, "-m", "cryptboot", "mkinitramfs", "--kver", kver,
              "--cache-dir", str(work / "pyc"),
              *[a for m in DISK_MODULES for a in ("--module", m)]]
    img = {n: work / f"{n}.img" for n in ("keyfile", "tpm2", "tang", "itools-clevis")}
    sh([*common, "-o", str(img["keyfile"]), "--crypttab", str(tab), "--keyfile",
        f"{key}:{KEY_PATH}"])
    sh([*common, "-o", str(img["tpm2"]), "--crypttab", "none", "--token", "tpm2"])
    sh([*common, "-o", str(img["tang"]), "--crypttab", "none", "--token", "clevis",
        "--network", "generic"])
    sh(["mkinitramfs", "-d", str(itools_clevis_conf(work)), "-o", str(img["itools-clevis"]),
        kver])
    cb = f"root=/dev/mapper/root rd.luks.uuid={u} rd.luks.name={u}=root rd.shell=0 " \
         "rd.emergency=poweroff"
    cases = [
        Case("cryptboot keyfile", img["keyfile"], disk,
             "root=/dev/mapper/root rd.shell=0 rd.emergency=poweroff"),
        Case("cryptboot tpm2", img["tpm2"], p_disk, cb, tpm=True),
        Case("cryptboot tang", img["tang"], t_disk, cb),
        Case("initramfs-tools + clevis-initramfs (tang)", img["itools-clevis"], t_disk,
             f"root=/dev/mapper/cryptroot ip=::::::dhcp "
             f"cryptopts=target=cryptroot,source=UUID={u},luks"),
    ]
    t0 = time.monotonic()
    for r in range(runs):
        for case in cases:
            print(f"bench_tang: run {r + 1}/{runs} {case.name}", file=sys.stderr, flush=True)
            boot(case, kpath, db, state, work, r)
    key_case, tpm_case, tang_case, peer = cases
    lines = [
        "## Unattended unlock: TPM2 and tang beside the keyfile, and tang beside "
        "initramfs-tools + clevis-initramfs (QEMU TCG)",
        "",
        f"Kernel {kver}; one LUKS2 disk (copies: as is, TPM2-enrolled with systemd-cryptenroll "
        "against swtpm, PCR 15; bound with `clevis luks bind … tang`); `-accel tcg -cpu max "
        "-m 512` and a virtio NIC on the user network (`restrict=on`, `guestfwd` to Debian's "
        f"tangd) in every boot, swtpm added for TPM2; nothing typed; {runs} boots per case, "
        "round-robin. Cells: kernel start → real init, median (min–max), seconds, guest clock.",
        "",
        "| case | kernel start → real init | image MiB (compressed) | vs cryptboot keyfile |",
        "|---|---|---|---|",
    ]
    for c in cases:
        lines.append(f"| {c.name} | {_cell(c)} | {image_sizes(c.image)[0] / 2**20:.1f} "
                     f"| {_ratio(c, key_case)} |"
                     + (f" ({c.failures} failed boots)" if c.failures else ""))
    lines += [
        "",
        f"tang: cryptboot {_ratio(tang_case, peer)} of initramfs-tools + clevis-initramfs, "
        f"same disk, same run. TPM2 {_ratio(tpm_case, key_case)} and tang "
        f"{_ratio(tang_case, key_case)} of the keyfile boot. The initramfs-tools image: "
        "`mkinitramfs -d CONF` with `MODULES=list` (virtio_pci virtio_blk virtio_net) and "
        "clevis-initramfs' hook and scripts from its Debian package in CONF "
        f"(boots took {time.monotonic() - t0:.0f} s in all).",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(main())
