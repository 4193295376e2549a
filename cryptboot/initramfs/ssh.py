"""The image's SSH part (issue 14): Debian's dropbear, its host keys and authorized_keys.

Host keys are the same in every image of a machine, so clients pin them once:

- ``--ssh-host-keys-from DIR`` (``/etc/ssh``): the machine's OpenSSH host keys
  (``ssh_host_{ed25519,ecdsa,rsa}_key``) converted with ``dropbearconvert``, so the initramfs
  offers the real system's key and clients see no "host key changed" warning;
- otherwise an ed25519 key generated once with ``dropbearkey`` and kept in the key directory
  (``/etc/cryptboot/ssh``, ``--ssh-key-dir`` or ``CRYPTBOOT_SSH_KEY_DIR``; mode 0700, keys
  0600) and reused by every later build.

The public keys are returned for ``mkinitramfs`` to print with their SHA-256 fingerprints (as
``ssh-keygen -l`` shows them). In the image: ``/etc/dropbear/dropbear_*_host_key`` and
``/root/.ssh/authorized_keys``, both 0600 (so the image is 0600).
"""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

from cryptboot import log
from cryptboot.errors import CryptbootError
from cryptboot.initramfs.cpio import Entry
from cryptboot.run import run

TYPE_CHECKING = False
if TYPE_CHECKING:
    from cryptboot.initramfs.build import Image, Options

KEY_DIR = "/etc/cryptboot/ssh"
KEY_DIR_ENV = "CRYPTBOOT_SSH_KEY_DIR"
DEBIAN_AUTHORIZED_KEYS = "/etc/dropbear/initramfs/authorized_keys"  # dropbear-initramfs'
OPENSSH_TYPES = ("ed25519", "ecdsa", "rsa")
IMAGE_KEYS = "etc/dropbear/dropbear_{type}_host_key"   # cryptboot.ssh reads these
KEY_PREFIXES = ("ssh-", "ecdsa-", "sk-")


def key_dir(opts: Options) -> str:
    return opts.ssh_key_dir or os.environ.get(KEY_DIR_ENV) or KEY_DIR


def _tool(name: str) -> str:
    from cryptboot.initramfs.build import PACKAGES, find_tool

    PACKAGES.setdefault(name, "dropbear-bin")
    return find_tool(name)


def host_keys(opts: Options) -> list[tuple[str, str]]:
    """``(type, dropbear key file)`` of the image's host keys."""
    kdir = key_dir(opts)
    os.makedirs(kdir, mode=0o700, exist_ok=True)
    os.chmod(kdir, 0o700)
    if opts.ssh_host_keys_from:
        out = []
        for kind in OPENSSH_TYPES:
            src = os.path.join(opts.ssh_host_keys_from, f"ssh_host_{kind}_key")
            if not os.path.exists(src):
                continue
            dest = os.path.join(kdir, f"dropbear_{kind}_host_key.openssh")
            _fresh(dest)
            run([_tool("dropbearconvert"), "openssh", "dropbear", src, dest])
            os.chmod(dest, 0o600)
            out.append((kind, dest))
        if not out:
            names = ", ".join(f"ssh_host_{k}_key" for k in OPENSSH_TYPES)
            raise CryptbootError(f"--ssh-host-keys-from {opts.ssh_host_keys_from}: no OpenSSH "
                                 f"host key there (looked for {names})")
        return out
    dest = os.path.join(kdir, "dropbear_ed25519_host_key")
    if not os.path.exists(dest):
        run([_tool("dropbearkey"), "-t", "ed25519", "-f", dest])
        log.info(f"ssh: generated the host key {dest} (kept for every later image)")
    os.chmod(dest, 0o600)
    return [("ed25519", dest)]


def _fresh(path: str) -> None:
    try:
        os.unlink(path)  # dropbearconvert refuses to overwrite
    except FileNotFoundError:
        pass


def public_key(path: str) -> str:
    """``TYPE BASE64`` of a dropbear private key file."""
    out = run([_tool("dropbearkey"), "-y", "-f", path]).stdout.decode(errors="replace")
    for line in out.splitlines():
        if line.startswith(KEY_PREFIXES):
            kind, blob = line.split()[:2]
            return f"{kind} {blob}"
    raise CryptbootError(f"{path}: dropbearkey -y printed no public key")


def fingerprint(public: str) -> str:
    """``SHA256:...`` of a ``TYPE BASE64`` public key, as ``ssh-keygen -l`` prints it."""
    blob = base64.b64decode(public.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def authorized_keys(path: str) -> bytes:
    """The file, checked: at least one key, every line a key (options before it allowed)."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise CryptbootError(f"{path}: cannot read: {e.strerror}") from None
    keys = 0
    for n, line in enumerate(text.splitlines(), 1):
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        if not any(w.startswith(KEY_PREFIXES) for w in words):
            raise CryptbootError(f"{path}:{n}: expected a public key (ssh-ed25519 AAAA..., "
                                 f"ecdsa-sha2-..., ssh-rsa ...), found {words[0][:40]!r}")
        keys += 1
    if not keys:
        raise CryptbootError(f"{path}: no public key in it: nobody could log in",
                             hint="put the admins' public keys (~/.ssh/id_ed25519.pub) there")
    return text.encode()


def add_ssh(img: Image, opts: Options) -> list[str]:
    """dropbear, host keys and authorized_keys; returns the public host keys."""
    from cryptboot.initramfs.build import add_tool

    assert opts.ssh_authorized_keys is not None
    add_tool(img, _tool("dropbear"))
    keys = authorized_keys(opts.ssh_authorized_keys)
    img.entries["root"] = Entry.directory("root", 0o700)
    img.add(Entry.directory("root/.ssh", 0o700))
    img.add(Entry.file("root/.ssh/authorized_keys", keys, 0o600))
    img.add(Entry.directory("etc/dropbear", 0o700))
    img.add(Entry.file("etc/shells", b"/bin/sh\n", 0o644))
    publics = []
    for kind, path in host_keys(opts):
        img.add(Entry.file(IMAGE_KEYS.format(type=kind), Path(path).read_bytes(), 0o600))
        publics.append(public_key(path))
    img.has_key = True
    return publics
