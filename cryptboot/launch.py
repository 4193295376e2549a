"""Start-up of ``cryptboot`` inside an image (``/usr/bin/cryptboot``, which ``/init`` links to).

The launcher script itself is three lines (a script is compiled from source on every run; a
module comes precompiled), and the interpreter runs with ``-I -S -B``: no site, no environment,
no user site, no bytecode writes. Here:

- Two stdlib modules are replaced by what the boot uses of them (nothing else imports them in
  the image): ``ctypes.util`` by its ``find_library``, answered from the sonames in the image
  (the real one runs ``ldconfig``/``gcc``/``ld``, absent and slow under emulation, and imports
  shutil, tempfile, random, bz2...; pyudev uses it to find libudev), and ``datetime`` by its C
  core ``_datetime``, which has every public name of it (the real module first defines them all
  again in Python; pyudev takes ``timedelta`` from it). Together ~0.1 s of every boot under
  emulation.
- As ``/init`` with build-time defaults (``mkinitramfs --cmdline``), the boot reads the defaults
  followed by the kernel's own words, so that the kernel's win where both set a value.
"""

from __future__ import annotations

import os
import sys

from cryptboot.paths import CMDLINE_DEFAULTS

CMDLINE_MERGED = "/etc/cryptboot/cmdline.boot"
LIB_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib")


def find_library(name: str) -> str | None:
    """``ctypes.util.find_library`` for the image: the first ``libNAME.so.*`` in its lib dirs."""
    for d in LIB_DIRS:
        try:
            names = sorted(os.listdir(d))
        except OSError:
            continue
        for n in names:
            if n.startswith("lib" + name + ".so."):
                return os.path.join(d, n)
    return None


class LeanModules:
    """A meta-path finder and loader for the two replaced modules."""

    NAMES = ("ctypes.util", "datetime")

    @staticmethod
    def find_spec(fullname: str, path: object = None, target: object = None) -> object:
        if fullname not in LeanModules.NAMES:
            return None
        from importlib.machinery import ModuleSpec

        return ModuleSpec(fullname, LeanModules)  # type: ignore[arg-type]

    @staticmethod
    def create_module(spec: object) -> object:
        if getattr(spec, "name", "") == "datetime":
            import _datetime  # type: ignore[import-not-found]

            return _datetime
        return None

    @staticmethod
    def exec_module(module: object) -> None:
        if getattr(module, "__name__", "") == "ctypes.util":
            module.find_library = find_library  # type: ignore[attr-defined]


def install() -> None:
    if LeanModules not in sys.meta_path:  # type: ignore[comparison-overlap]
        sys.meta_path.insert(0, LeanModules)  # type: ignore[arg-type]


def cmdline_defaults() -> None:
    """As PID 1 with an image's defaults: boot with ``--cmdline`` of defaults + kernel words."""
    if os.getpid() != 1 or "--cmdline" in sys.argv or not os.path.exists(CMDLINE_DEFAULTS):
        return
    if not os.path.exists("/proc/cmdline"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).mount(b"proc", b"/proc", b"proc", 0, None)
    with open(CMDLINE_DEFAULTS) as f:
        defaults = f.read().strip()
    with open("/proc/cmdline") as f:
        given = f.read().strip()
    with open(CMDLINE_MERGED, "w") as f:
        f.write(defaults + " " + given + "\n")
    sys.argv += ["--cmdline", CMDLINE_MERGED]


def main() -> int:
    install()
    cmdline_defaults()
    from cryptboot.cli import main as cli_main

    return cli_main()
