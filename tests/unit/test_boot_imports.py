"""The boot path imports no heavy standard modules.

``cryptboot boot`` runs as ``/init``, under QEMU TCG in the VM tests, where every import costs
10-15x its native time. ``dataclasses`` alone (it imports ``inspect``, ``ast``, ``dis``,
``tokenize``) was ~10-15 ms natively; ``argparse`` and ``json`` belong to the CLI tools, and
``shutil`` pulls in ``bz2`` and ``lzma``. A fresh ``python -I -S`` imports the boot-path modules
(the venv's site-packages added by hand, as in the initramfs) and lists what it loaded.

``typing`` costs more than the rest of the config layer (see cryptboot.record). As in the image,
the launcher's lean ``ctypes.util`` and ``datetime`` are installed first (cryptboot.launch): the
standard ``ctypes.util``, which pyudev imports, would bring ``shutil``, ``tempfile``, ``random``.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

BOOT_MODULES = [
    "cryptboot.cli", "cryptboot.boot", "cryptboot.devices", "cryptboot.keys.prompt",
    "cryptboot.unlock.dmcrypt", "cryptboot.switch.switch_root", "cryptboot.config.plan",
    "cryptboot.mount", "cryptboot.udev", "cryptboot.steps", "cryptboot.layers.crypt",
    "cryptboot.keys.cache", "cryptboot.keys.keyfile", "cryptboot.unlock.header",
    "cryptboot.background",
]
# imported only when a volume or the plan uses them (key providers, storage layers)
ON_DEMAND = ["cryptboot.keys.keydev"]
HEAVY = ["dataclasses", "inspect", "ast", "argparse", "json", "shutil", "typing", "tempfile",
         "random"]

PROBE = """
import sys
sys.path[:0] = sys.argv[1:3]
import cryptboot.launch
cryptboot.launch.install()
heavy = sys.argv[3].split(",")
def loaded():
    return ",".join(m for m in heavy if m in sys.modules)
for name in sys.argv[4].split(","):
    __import__(name)
print("before:" + loaded())
print("boot:" + ",".join(m for m in sys.argv[4].split(",") if m in sys.modules))
if len(sys.argv) > 5:
    __import__(sys.argv[5])
    print("after:" + loaded())
"""


def site_packages() -> str:
    """The directory pyudev is installed in (the venv's site-packages)."""
    spec = importlib.util.find_spec("pyudev")
    assert spec is not None and spec.submodule_search_locations
    return str(Path(next(iter(spec.submodule_search_locations))).parent)


def probe(modules: list[str], then: str | None = None,
          watch: list[str] = HEAVY) -> dict[str, list[str]]:
    argv = [sys.executable, "-I", "-S", "-c", PROBE, str(REPO), site_packages(),
            ",".join(watch), ",".join(modules)] + ([then] if then else [])
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=60).stdout
    result: dict[str, list[str]] = {}
    for line in out.splitlines():
        key, _, value = line.partition(":")
        result[key] = [v for v in value.split(",") if v]
    return result


def test_boot_modules_import_none_of_the_heavy_ones() -> None:
    seen = probe(BOOT_MODULES, then="pyudev")
    assert seen["boot"] == BOOT_MODULES          # the probe really imported them
    assert seen["before"] == []
    assert seen["after"] == []  # pyudev too, with the launcher's ctypes.util


def test_providers_and_layers_not_in_use_are_not_imported() -> None:
    """The boot path imports a key provider or layer only when a volume uses it."""
    seen = probe(BOOT_MODULES, then="cryptboot.keys.keydev", watch=ON_DEMAND)
    assert seen["before"] == []
    assert seen["after"] == ON_DEMAND  # the probe would see it


def test_probe_sees_a_heavy_import() -> None:
    """The same probe does report a heavy module when one is imported (``plan``'s argparse)."""
    seen = probe(["cryptboot.config.cli"])
    assert "argparse" in seen["before"]
