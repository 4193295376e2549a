"""``mkinitramfs --shutdown``: what the image carries for its shutdown initramfs.

systemd's initrd interface: when ``/run/initramfs/shutdown`` exists and is executable,
systemd-shutdown pivots into ``/run/initramfs`` at the end and runs it, so the root's
mappings can be closed once the root is unmounted. The image gets a manifest,
:data:`MANIFEST`, listing the files of that small root (static busybox, dmsetup with its
libraries, the script ``cryptboot/data/shutdown.sh``), all of which are in the image anyway;
at boot :mod:`cryptboot.shutdown` copies them into ``/run/initramfs`` (about 7 MiB of tmpfs
while the system runs, see docs/systemd.md).
"""

from __future__ import annotations

from pathlib import Path

from cryptboot.errors import CryptbootError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from cryptboot.initramfs.build import Image

MANIFEST = "etc/cryptboot/shutdown"   # image paths of the shutdown root's files, one a line
SCRIPT = "usr/lib/cryptboot/shutdown"  # the script, copied to /run/initramfs/shutdown
SCRIPT_SRC = Path(__file__).resolve().parent.parent / "data" / "shutdown.sh"
TOOLS = ("busybox", "dmsetup")


def add_shutdown(img: Image) -> list[str]:
    """Add the script and the manifest (after the tools were added); returns the manifest."""
    from cryptboot.initramfs import elf
    from cryptboot.initramfs.build import add_tool
    from cryptboot.initramfs.cpio import Entry

    try:
        script = SCRIPT_SRC.read_bytes()
    except OSError as e:
        raise CryptbootError(f"{SCRIPT_SRC}: cannot read: {e.strerror}") from None
    img.add(Entry.file(SCRIPT, script, 0o755))
    paths = {SCRIPT}
    for tool in TOOLS:
        dest = img.canon("/usr/bin/busybox") if tool == "busybox" else img.canon(
            add_tool(img, tool))
        if dest not in img.entries:
            raise CryptbootError(f"--shutdown: {tool} is not in the image")
        paths.add(dest)
        src = _host_file(img, dest)
        for lib in elf.dependencies([src]):
            paths.add(img.canon(lib))
    manifest = sorted(paths)
    img.add(Entry.file(MANIFEST, ("\n".join(manifest) + "\n").encode(), 0o644))
    return manifest


def _host_file(img: Image, dest: str) -> str:
    for real, path in img.by_source.items():
        if path == dest:
            return real
    raise CryptbootError(f"--shutdown: no host file for {dest}")


def describe(manifest: list[str], img: Image) -> str:
    size = 0
    for path in manifest:
        entry = img.entries.get(path)
        if entry is not None and entry.data:
            size += len(entry.data)
    return f"shutdown initramfs: {len(manifest)} files, {size / 2**20:.1f} MiB of tmpfs at run time"

