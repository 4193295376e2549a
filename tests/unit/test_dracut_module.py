"""The dracut module's build-time choices, run in bash with dracut's few functions stubbed.

The VM tests (tests/vm/test_hooks_dracut.py) build real images with real dracut; these cover
what a non-encrypted build host cannot show there: which crypttab lines a host-only image gets.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

MODULE = Path(__file__).resolve().parents[2] / "dracut-module/91cryptboot/module-setup.sh"


def select(tmp_path: Path, crypttab: str, *, hostonly: bool,
           host_luks: list[Path]) -> subprocess.CompletedProcess[str]:
    """Run cryptboot_select_crypttab as dracut would, with ``host_luks`` as the host's LUKS
    devices (dracut's host_fs_types) and stubbed dfatal / inst_simple."""
    tab = tmp_path / "crypttab"
    tab.write_text(crypttab)
    types = " ".join(f"[{p}]=crypto_LUKS" for p in host_luks)
    script = f"""
set -u
dfatal() {{ echo "FATAL: $*" >&2; }}
inst_simple() {{ echo "INSTALLED $1" >&2; }}
declare -A host_fs_types=({types} [/dev/other]=ext4)
hostonly={'yes' if hostonly else "''"}
source {MODULE}
cryptboot_select_crypttab {tab}
"""
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True,
                          env={"PATH": os.environ["PATH"]})


def test_hostonly_takes_the_lines_of_the_hosts_encrypted_devices(tmp_path: Path) -> None:
    root = tmp_path / "vda2"          # stands for the host's LUKS device backing /
    root.touch()
    link = tmp_path / "by-uuid-link"  # crypttab may name it through a link: same inode
    link.symlink_to(root)
    other = tmp_path / "vdb1"         # encrypted too, but backs no host filesystem
    other.touch()
    proc = select(tmp_path, f"# comment\n\ncryptroot {link} none luks,discard\n"
                            f"data {other} none luks\n", hostonly=True, host_luks=[root])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [f"cryptroot {link} none luks,discard"]


def test_generic_image_takes_only_marked_lines_and_drops_force(tmp_path: Path) -> None:
    root = tmp_path / "vda2"
    root.touch()
    key = tmp_path / "root.key"
    key.write_bytes(b"k")
    tab = (f"cryptroot {root} none luks\n"
           f"data /dev/vdb none luks,initramfs\n"
           f"swap /dev/vdc {key} luks,force,discard\n")
    proc = select(tmp_path, tab, hostonly=False, host_luks=[root])
    assert proc.returncode == 0, proc.stderr
    # not host-only: the host's own root line is not taken just because it is the host's
    assert proc.stdout.splitlines() == ["data /dev/vdb none luks,initramfs",
                                        f"swap /dev/vdc {key} luks,discard"]
    assert f"INSTALLED {key}" in proc.stderr       # the keyfile goes into the image


def test_missing_keyfile_names_the_file_and_entry(tmp_path: Path) -> None:
    proc = select(tmp_path, "swap /dev/vdc /etc/nokey luks,force\n", hostonly=False,
                  host_luks=[])
    assert proc.returncode != 0
    assert "entry 'swap' names keyfile /etc/nokey, which does not exist" in proc.stderr
