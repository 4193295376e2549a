"""blkid's low-level probe of a block device: the ``ID_FS_*`` / ``ID_PART_ENTRY_*`` properties
udev would report, for waits without udevd, plain-mode checks and mounts of unknown type."""

from __future__ import annotations

from cryptboot import log


def parse_udev_export(text: str) -> dict[str, str]:
    """``KEY=value`` lines (``blkid -o udev``) into a dict."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key:
            out[key.strip()] = value
    return out


def probe(node: str) -> dict[str, str]:
    """Low-level probe of ``node`` (``blkid -p -o udev``); {} when it has no signature."""
    from cryptboot.run import run

    try:
        proc = run(["blkid", "-p", "-o", "udev", node], check=False, timeout=30)
    except Exception as e:  # noqa: BLE001 - a probe failure only means "unknown"
        log.debug(f"blkid {node}: {e}")
        return {}
    if proc.returncode not in (0, 2):
        err = (proc.stderr or b"").decode(errors="replace").strip()
        log.debug(f"blkid {node}: exit {proc.returncode}: {err}")
    return parse_udev_export((proc.stdout or b"").decode(errors="replace"))


