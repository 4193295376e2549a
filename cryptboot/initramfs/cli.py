"""``cryptboot mkinitramfs``: build a bootable cryptboot initramfs, or list the Python runtime.

``--list-python`` prints ``SRC<TAB>DEST`` lines (sorted by DEST) of every file needed to run
cryptboot's boot path: the interpreter and its libraries, the standard-library subset
(compiled), cryptboot, pyudev, libudev and the ``/usr/bin/cryptboot`` launcher. The dracut and
initramfs-tools hooks copy exactly these; the format is stable.
"""

from __future__ import annotations

import argparse
import os
import sys

from cryptboot import log
from cryptboot.errors import CryptbootError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cryptboot mkinitramfs",
        description="Build an initramfs whose /init is cryptboot boot.",
    )
    p.add_argument("-o", "--output", help="the image to write (written to a temporary file "
                   "beside it, renamed when complete)")
    p.add_argument("--kver", help="kernel version whose modules go in (default: the newest "
                   "in /lib/modules, else the running kernel)")
    p.add_argument("--crypttab", help="crypttab to put in the image as /etc/crypttab "
                   "(default: this machine's /etc/crypttab when it exists; 'none' for none)")
    p.add_argument("--keyfile", action="append", default=[], metavar="SRC[:DEST]",
                   help="a keyfile to include (mode 0400; DEST defaults to SRC); the image "
                   "is then mode 0600")
    p.add_argument("--cmdline", default="", help="default kernel arguments, written to "
                   "/etc/cryptboot/cmdline")
    p.add_argument("--module", action="append", default=[], metavar="NAME",
                   help="a kernel module for the storage (repeatable; default: those loaded "
                   "on this machine, else virtio_pci and virtio_blk); dm-crypt and the xts/aes "
                   "ciphers are always added")
    p.add_argument("--fstype", action="append", default=[], metavar="TYPE",
                   help="root filesystem type: its fsck and module go in (default: ext4)")
    for layer in ("lvm", "md", "btrfs"):
        p.add_argument(f"--{layer}", action="append_const", const=layer, dest="layers",
                       default=[], help=f"put {layer} tooling, rules and modules in (also "
                       "when the image's command line or crypttab names it, or this "
                       "machine's root is on it; --no-host-layers: not the latter)")
    p.add_argument("--no-host-layers", action="store_true",
                   help="do not look at this machine's root for LVM, md or btrfs")
    p.add_argument("--compress", default="zstd", choices=("zstd", "lz4", "gzip", "none"))
    p.add_argument("--cache-dir", default="", help="where compiled .pyc files are kept "
                   "(default: /var/cache/cryptboot/pyc as root)")
    p.add_argument("--list-python", action="store_true",
                   help="print SRC<TAB>DEST of the Python runtime files and exit")
    return p


def default_kver() -> str:
    """The newest kernel with modules installed, else the running one."""
    try:
        names = [n for n in os.listdir("/lib/modules")
                 if os.path.exists(f"/lib/modules/{n}/modules.dep")]
    except FileNotFoundError:
        names = []
    if not names:
        return os.uname().release

    def key(v: str) -> list[int | str]:
        return [int(p) if p.isdigit() else p for p in v.replace("-", ".").split(".")]

    return sorted(names, key=key)[-1]


def _keyfile(spec: str) -> tuple[str, str]:
    src, sep, dest = spec.partition(":")
    if not src:
        raise CryptbootError(f"--keyfile {spec!r}: expected SRC[:DEST]")
    dest = dest if sep and dest else os.path.abspath(src)
    if not dest.startswith("/"):
        raise CryptbootError(f"--keyfile {spec!r}: DEST must be an absolute path in the image")
    return src, dest


def _layers(a: argparse.Namespace, crypttab: str | None) -> tuple[str, ...]:
    from pathlib import Path

    from cryptboot.initramfs.stack import wanted

    text = None
    if crypttab:
        try:
            text = Path(crypttab).read_text()
        except OSError:
            text = None  # reported by the build
    return wanted(a.layers, a.cmdline, text, host_only=not a.no_host_layers)


def main(argv: list[str]) -> int:
    from cryptboot.initramfs import build

    a = _parser().parse_args(argv)
    cache = a.cache_dir or build.default_cache_dir()
    if a.list_python:
        for dest, src in build.python_runtime(cache):
            sys.stdout.write(f"{src}\t{dest}\n")
        return 0
    if not a.output:
        raise CryptbootError("no output: give -o FILE", hint="cryptboot mkinitramfs -o "
                             "/boot/initrd.img-$(uname -r)")
    crypttab = a.crypttab
    if crypttab is None:
        crypttab = "/etc/crypttab" if os.path.exists("/etc/crypttab") else None
    elif crypttab == "none":
        crypttab = None
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", "0") or 0)
    opts = build.Options(
        output=a.output,
        kver=a.kver or default_kver(),
        crypttab=crypttab,
        keyfiles=tuple(_keyfile(k) for k in a.keyfile),
        cmdline=a.cmdline,
        modules=tuple(a.module),
        fstypes=tuple(a.fstype) or ("ext4",),
        compress=a.compress,
        epoch=epoch,
        cache_dir=cache,
        layers=_layers(a, crypttab),
    )
    raw, packed = build.build(opts)
    log.info(f"wrote {a.output}: {packed / 2**20:.1f} MiB ({a.compress}), "
             f"{raw / 2**20:.1f} MiB unpacked, kernel {opts.kver}")
    return 0
