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
    p.add_argument("--vconsole", default="/etc/vconsole.conf", metavar="FILE|none",
                   help="systemd's vconsole.conf: KEYMAP=, KEYMAP_TOGGLE=, FONT= for the "
                   "local screen (default: /etc/vconsole.conf, if it exists)")
    p.add_argument("--keyboard", default="/etc/default/keyboard", metavar="FILE|none",
                   help="Debian console-setup's keyboard file, used when vconsole.conf names "
                   "no keymap, through the keymap console-setup compiled from it "
                   "(DIR/console-setup/cached_*.kmap.gz for DIR/default/keyboard)")
    p.add_argument("--keymap", action="append", default=[], metavar="NAME",
                   help="one more keymap in the image, for rd.vconsole.keymap=NAME at boot "
                   "(repeatable)")
    p.add_argument("--cache-dir", default="", help="where compiled .pyc files are kept "
                   "(default: /var/cache/cryptboot/pyc as root)")
    p.add_argument("--shutdown", action="store_true",
                   help="a shutdown initramfs: at boot /run/initramfs gets busybox, dmsetup "
                   "and a script that systemd-shutdown runs to unmount the root and close its "
                   "mappings (about 7 MiB of RAM while the system runs; docs/systemd.md)")
    p.add_argument("--token", action="append", default=[], choices=("clevis", "tpm2"),
                   help="support LUKS2 tokens of this kind: clevis (tang, sss) adds the tang "
                   "client and python3-cryptography, tpm2 systemd's token plugin and tpm2-tss "
                   "(default: the kinds found in the headers of the crypttab's devices)")
    # issue 14: network and SSH unlock (docs/ssh.md)
    p.add_argument("--network", nargs="?", const="host", default="", choices=("host", "generic"),
                   help="put the network in: NIC drivers of this machine (host, the default) "
                   "or the common ones (generic), and DHCP (implied by SSH keys and by ip=, "
                   "rd.neednet, cryptboot.ssh=1 in --cmdline)")
    p.add_argument("--ssh-authorized-keys", metavar="FILE", help="remote unlock over SSH: "
                   "dropbear with these keys goes in and starts at boot (default: "
                   "/etc/dropbear/initramfs/authorized_keys when it exists; 'none' for none)")
    p.add_argument("--ssh-host-keys-from", metavar="DIR", nargs="?", const="/etc/ssh",
                   default="", help="convert this machine's OpenSSH host keys (DIR, default "
                   "/etc/ssh) for the image, instead of cryptboot's own generated key")
    p.add_argument("--ssh-key-dir", metavar="DIR", default="", help="where the generated SSH "
                   "host key is kept (default $CRYPTBOOT_SSH_KEY_DIR, else /etc/cryptboot/ssh)")
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


def _ssh_keys(given: str | None) -> str | None:
    from cryptboot.initramfs.ssh import DEBIAN_AUTHORIZED_KEYS

    if given == "none":
        return None
    if given is None and os.path.exists(DEBIAN_AUTHORIZED_KEYS):
        log.info(f"ssh: using {DEBIAN_AUTHORIZED_KEYS} (dropbear-initramfs' keys); "
                 "--ssh-authorized-keys none leaves SSH out")
        return DEBIAN_AUTHORIZED_KEYS
    return given
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
    tokens = tuple(a.token)
    if not tokens and crypttab:
        from cryptboot.initramfs.tokens import tokens_in_crypttab

        with open(crypttab) as f:
            tokens = tokens_in_crypttab(f.read(), crypttab)
    ssh_keys, cmdline = _ssh_keys(a.ssh_authorized_keys), a.cmdline
    if ssh_keys:  # an image with SSH keys starts SSH (cryptboot.ssh=0 on the kernel's line: not)
        cmdline = ("cryptboot.ssh=1 " + cmdline).strip()
    opts = build.Options(
        output=a.output,
        kver=a.kver or default_kver(),
        crypttab=crypttab,
        keyfiles=tuple(_keyfile(k) for k in a.keyfile),
        cmdline=cmdline,
        modules=tuple(a.module),
        fstypes=tuple(a.fstype) or ("ext4",),
        compress=a.compress,
        epoch=epoch,
        cache_dir=cache,
        shutdown=a.shutdown,
        tokens=tokens,
        network=a.network,
        ssh_authorized_keys=ssh_keys,
        ssh_key_dir=a.ssh_key_dir,
        ssh_host_keys_from=a.ssh_host_keys_from,
        vconsole=None if a.vconsole == "none" else a.vconsole,
        keyboard=None if a.keyboard == "none" else a.keyboard,
        keymaps=tuple(a.keymap),
        layers=_layers(a, crypttab),
    )
    raw, packed = build.build(opts)
    if ssh_keys:
        from cryptboot.initramfs.ssh import fingerprint

        for key in build.last_ssh_host_keys:
            # pin it: ~/.ssh/known_hosts "[HOST]:PORT TYPE BASE64"
            log.info(f"SSH host key of the image: {fingerprint(key)} {key}")
    log.info(f"wrote {a.output}: {packed / 2**20:.1f} MiB ({a.compress}), "
             f"{raw / 2**20:.1f} MiB unpacked, kernel {opts.kver}")
    return 0
