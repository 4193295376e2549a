"""``make install`` (tools/install.sh DESTDIR PREFIX): the installed tree, checked file by file.

Runs the real script into a temporary DESTDIR; nothing outside it is touched.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

INSTALL = REPO / "tools" / "install.sh"
DRACUT = "usr/lib/dracut/modules.d/91cryptboot"
ITOOLS = "usr/share/initramfs-tools"
CHECK_HOOKS = ("etc/initramfs/post-update.d/cryptboot-check",
               "usr/lib/kernel/install.d/90-cryptboot-check.install")


def install(destdir: Path, prefix: str = "/usr", python: str = "/usr/bin/python3",
            check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ["PATH"], "PYTHON": python}
    return subprocess.run([str(INSTALL), str(destdir), prefix], env=env, text=True,
                          capture_output=True, check=check)


def package_sources() -> set[str]:
    """Files of the checkout's package that must be installed (no caches)."""
    out = set()
    for p in (REPO / "cryptboot").rglob("*"):
        if p.is_file() and "__pycache__" not in p.parts and (
            p.suffix == ".py" or p.name == "py.typed" or "data" in p.relative_to(REPO).parts
        ):
            out.add(str(p.relative_to(REPO)))
    return out


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_tree_under_destdir(tmp_path: Path) -> None:
    dest = tmp_path / "root"
    install(dest)
    lib = dest / "usr/lib/cryptboot/python"
    installed = {str(p.relative_to(lib)) for p in lib.rglob("*") if p.is_file()}
    assert installed == package_sources()
    for rel in installed:
        assert (lib / rel).read_bytes() == (REPO / rel).read_bytes(), rel
        assert mode(lib / rel) == 0o644, rel

    hooks = {
        f"{DRACUT}/module-setup.sh": "dracut-module/91cryptboot/module-setup.sh",
        f"{DRACUT}/cryptboot-cmdline.sh": "dracut-module/91cryptboot/cryptboot-cmdline.sh",
        f"{DRACUT}/cryptboot-unlock.sh": "dracut-module/91cryptboot/cryptboot-unlock.sh",
        f"{ITOOLS}/hooks/cryptboot": "hooks/initramfs-tools/hooks/cryptboot",
        f"{ITOOLS}/scripts/local-top/cryptboot":
            "hooks/initramfs-tools/scripts/local-top/cryptboot",
    }
    for rel, src in hooks.items():
        assert (dest / rel).read_bytes() == (REPO / src).read_bytes(), rel
        assert mode(dest / rel) == 0o755, rel
    # nothing else was installed
    everything = {str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file()}
    expected = {f"usr/lib/cryptboot/python/{r}" for r in installed} | set(hooks) | {
        "usr/bin/cryptboot", *CHECK_HOOKS}  # issue 17: cryptboot check after a build
    assert everything == expected


def test_command_runs_the_installed_package(tmp_path: Path) -> None:
    dest = tmp_path / "root"
    install(dest, python=sys.executable)
    cmd = dest / "usr/bin/cryptboot"
    assert mode(cmd) == 0o755
    text = cmd.read_text()
    assert text.startswith(f"#!{sys.executable} -I\n")
    assert '"/usr/lib/cryptboot/python"' in text
    # Run the command's own code with the package path moved under DESTDIR: it must import
    # cryptboot from the installed tree, not from this checkout.
    code = text.replace('"/usr/lib/cryptboot/python"', repr(str(dest / "usr/lib/cryptboot/python")))
    code = code.replace("sys.exit(main())",
                        "import cryptboot; print(cryptboot.__file__); sys.exit(main())")
    proc = subprocess.run([sys.executable, "-I", "-c", code, "--version"], text=True,
                          capture_output=True, check=True, cwd=tmp_path)
    first, second = proc.stdout.splitlines()[:2]
    assert first == str(dest / "usr/lib/cryptboot/python/cryptboot/__init__.py")
    assert second.startswith("cryptboot ")


def test_prefix_moves_package_but_not_builder_hooks(tmp_path: Path) -> None:
    dest = tmp_path / "root"
    install(dest, prefix="/usr/local")
    assert (dest / "usr/local/bin/cryptboot").is_file()
    assert (dest / "usr/local/lib/cryptboot/python/cryptboot/cli.py").is_file()
    assert '"/usr/local/lib/cryptboot/python"' in (dest / "usr/local/bin/cryptboot").read_text()
    # dracut and initramfs-tools look only under /usr
    assert (dest / DRACUT / "module-setup.sh").is_file()
    assert (dest / ITOOLS / "hooks/cryptboot").is_file()
    assert not (dest / "usr/bin/cryptboot").exists()


def test_reinstall_over_an_existing_tree(tmp_path: Path) -> None:
    dest = tmp_path / "root"
    install(dest)
    (dest / "usr/bin/cryptboot").write_text("stale\n")
    install(dest)
    assert (dest / "usr/bin/cryptboot").read_text().startswith("#!/usr/bin/python3 -I\n")


def test_relative_prefix_is_refused(tmp_path: Path) -> None:
    dest = tmp_path / "root"
    proc = install(dest, prefix="usr", check=False)
    assert proc.returncode != 0
    assert "PREFIX must be an absolute path, not 'usr'" in proc.stderr
    assert not dest.exists()
