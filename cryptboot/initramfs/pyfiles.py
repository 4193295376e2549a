"""The Python files the boot path needs, found by walking imports, compiled to ``.pyc``.

The interpreter is the one this venv is built from (Debian's ``/usr/bin/python3.11``), so the
bytecode compiled here in-process matches it. The roots of the walk are the modules Python
itself loads at start-up (asked from the interpreter, not listed by hand), the subcommand
modules of :data:`cryptboot.cli.COMMANDS` (except the image builder), and ``pyudev``;
:class:`modulefinder.ModuleFinder` follows every ``import`` statement from there, including
those inside functions, so a lazily imported module is present when the boot path needs it.

In the image the files live at their stdlib paths, except cryptboot and pyudev which go to
:data:`SITE` (the launcher puts it on ``sys.path``: the interpreter runs with ``-I -S``).
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import os
import py_compile
import subprocess
import sys
import sysconfig
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptboot.errors import CryptbootError

SITE = "/usr/lib/cryptboot/python"
LAUNCHER = "/usr/bin/cryptboot"
# Subcommand modules that are not on the boot path: the image builder, and `cryptboot check`,
# which judges an image from the installed system and never runs inside one.
EXCLUDED_PACKAGES = ("cryptboot.initramfs", "cryptboot.check")


@dataclass(frozen=True)
class PyFile:
    """One file of the Python runtime: ``src`` on the host, ``dest`` in the image."""

    src: str
    dest: str
    mode: int = 0o644


def interpreter() -> str:
    """The real interpreter binary (not the venv's symlink)."""
    base = getattr(sys, "_base_executable", None) or sys.executable
    return os.path.realpath(base)


def stdlib_dirs() -> tuple[str, str]:
    """(stdlib, lib-dynload) of the base interpreter."""
    paths = sysconfig.get_paths(vars={"base": sys.base_prefix, "platbase": sys.base_prefix})
    stdlib = os.path.realpath(paths["stdlib"])
    return stdlib, os.path.join(os.path.realpath(paths["platstdlib"]), "lib-dynload")


def startup_modules(python: str) -> list[str]:
    """Modules the interpreter loads from files before running any code (``encodings``...)."""
    code = (
        "import sys\n"
        "for k, m in sorted(sys.modules.items()):\n"
        "    s = getattr(m, '__spec__', None)\n"
        "    if s is not None and s.origin not in (None, 'frozen', 'built-in'):\n"
        "        print(k)\n"
    )
    proc = subprocess.run([python, "-I", "-S", "-c", code], env={}, capture_output=True,
                          check=True)
    return proc.stdout.decode().split()


def package_dir(name: str) -> str:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise CryptbootError(f"Python package {name} not found",
                             hint=f"install it in cryptboot's environment (pip install {name})")
    return os.path.realpath(list(spec.submodule_search_locations)[0])


def boot_modules() -> list[str]:
    """cryptboot modules on the boot path: the subcommand table's modules, minus the builder,
    and the key providers and the crypt layer (imported by name from their registries)."""
    from cryptboot.cli import COMMANDS
    from cryptboot.initramfs.tokens import TOKEN_PROVIDERS
    from cryptboot.keys.providers import PROVIDERS
    from cryptboot.layers import LAYERS

    mods = {"cryptboot.cli", "cryptboot.__main__", *PROVIDERS.values(), LAYERS["crypt"]}
    mods -= TOKEN_PROVIDERS  # issue 13: only in images built with --token (initramfs/tokens.py)
    # issue 12: the lvm, md and btrfs layers only in images that get their tools (python_files'
    # ``layers``): a plain LUKS image does not grow
    for module, _func, _help in COMMANDS.values():
        if not module.startswith(EXCLUDED_PACKAGES):
            mods.add(module)
    return sorted(mods)


def _find(name: str, path: list[str]) -> str | None:
    """The file of module ``name`` on ``path`` (``__init__.py`` for a package), else None."""
    from importlib.machinery import PathFinder

    search = path
    origin: str | None = None
    parts = name.split(".")
    for i, part in enumerate(parts):
        spec = PathFinder.find_spec(part, search)
        if spec is None:
            return None
        origin = spec.origin
        if spec.submodule_search_locations is not None:
            search = list(spec.submodule_search_locations)
        elif i != len(parts) - 1:
            return None  # a name imported from a module, not a submodule
    return origin if origin and os.path.isfile(origin) else None


def _is_main_guard(test: ast.expr) -> bool:
    text = ast.unparse(test)
    return "__name__" in text and "__main__" in text


def _catches_import_error(node: ast.Try) -> bool:
    for h in node.handlers:
        names = ast.unparse(h.type) if h.type is not None else "BaseException"
        if "ImportError" in names or "ModuleNotFoundError" in names:
            return True
    return False


def imports_of(source: bytes, modname: str, is_package: bool, lazy: bool) -> list[str]:
    """Module names imported by ``source``.

    Always skipped: ``if __name__ == "__main__"`` and ``if TYPE_CHECKING`` blocks, and imports
    in a ``try`` that catches ImportError (optional by the module's own account). Imports inside
    functions are followed only when ``lazy``: for cryptboot itself, whose boot path imports
    lazily by design; the standard library's function-level imports serve paths the boot
    does not take.
    """
    tree = ast.parse(source)
    out: list[str] = []
    package = modname if is_package else modname.rpartition(".")[0]

    def visit(nodes: list[ast.stmt] | list[ast.AST]) -> None:
        for node in nodes:
            if isinstance(node, ast.If):
                if _is_main_guard(node.test):
                    continue
                if "TYPE_CHECKING" in ast.unparse(node.test):
                    visit(node.orelse)
                    continue
            if isinstance(node, ast.Try) and _catches_import_error(node):
                visit(node.finalbody)
                continue
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) and not lazy:
                continue
            if isinstance(node, ast.Import):
                out.extend(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    pkg = package
                    for _ in range(node.level - 1):
                        pkg = pkg.rpartition(".")[0]
                    base = f"{pkg}.{base}" if base else pkg
                out.append(base)
                out.extend(f"{base}.{a.name}" for a in node.names if a.name != "*")
            visit(list(ast.iter_child_nodes(node)))

    visit(list(tree.body))
    return out


def walk(roots: list[str], path: list[str], lazy_prefix: str = "cryptboot", *,
         provided: tuple[str, ...] = (),
         shipped: Callable[[str], bool] | None = None) -> dict[str, str]:
    """``{module name: file}`` of ``roots`` and everything they import, found on ``path``.

    A name that is not found (a platform module such as ``nt``, a name imported *from* a
    module rather than a submodule, a subcommand still being written) is skipped, and so are
    ``provided`` names (the launcher supplies them: :data:`cryptboot.launch.LeanModules.NAMES`)
    and what only a file that is not ``shipped`` imports (an optional package such as
    ``cryptography``, which the image does not hold).
    """
    found: dict[str, str] = {}
    seen: set[str] = set(provided)
    todo = list(roots)
    while todo:
        name = todo.pop()
        if not name or name in seen:
            continue
        seen.add(name)
        file = _find(name, path)
        if file is None or (shipped is not None and not shipped(file)):
            continue
        found[name] = file
        if "." in name:
            todo.append(name.rpartition(".")[0])
        if file.endswith(".py"):
            with open(file, "rb") as f:
                source = f.read()
            lazy = name == lazy_prefix or name.startswith(lazy_prefix + ".")
            todo.extend(imports_of(source, name, file.endswith("__init__.py"), lazy))
    return found


def _dest_for(file: str, roots: dict[str, str]) -> str | None:
    for src_dir, dest_dir in roots.items():
        if file.startswith(src_dir + os.sep):
            return dest_dir + file[len(src_dir):]
    return None


def python_files(cache_dir: str | Path, layers: tuple[str, ...] = ()) -> list[PyFile]:
    """Every file of the Python runtime for the boot path (interpreter excluded; the caller adds
    it with its ELF dependencies), with the storage ``layers`` the image gets (lvm, md, btrfs).
    Sources are compiled into ``cache_dir``.
    """
    from cryptboot.layers import LAYERS

    python = interpreter()
    stdlib, dynload = stdlib_dirs()
    cb_dir = package_dir("cryptboot")
    pu_dir = package_dir("pyudev")
    dest_roots = {
        dynload: dynload,
        stdlib: stdlib,
        cb_dir: f"{SITE}/cryptboot",
        pu_dir: f"{SITE}/pyudev",
    }
    search = [stdlib, dynload, os.path.dirname(cb_dir), os.path.dirname(pu_dir)]
    launcher_src = launcher_text(python)
    roots = startup_modules(python) + boot_modules() + ["pyudev"]
    roots += [LAYERS[name] for name in layers if name in LAYERS]
    roots += imports_of(launcher_src.encode(), "__main__", False, lazy=True)
    from cryptboot.launch import LeanModules

    found = walk(roots, search, provided=LeanModules.NAMES,
                 shipped=lambda f: _dest_for(os.path.realpath(f), dest_roots) is not None)
    cache = Path(cache_dir)
    files: list[PyFile] = []
    for name in sorted(found):
        src = os.path.realpath(found[name])
        dest = _dest_for(src, dest_roots)
        if dest is None:
            continue  # outside the stdlib and our packages: not shipped (e.g. cryptography)
        if name.split(".")[0] == "cryptboot" and name.startswith(EXCLUDED_PACKAGES):
            continue
        if src.endswith(".py"):
            pyc_dest = dest[:-3] + ".pyc"
            pyc_src = cache / pyc_dest.lstrip("/")
            # -OO for the stdlib and pyudev (no docstrings: smaller, and every byte in the
            # image is unpacked on every boot); cryptboot keeps its docstrings and asserts.
            _compile(src, pyc_src, pyc_dest, 0 if name.split(".")[0] == "cryptboot" else 2)
            files.append(PyFile(str(pyc_src), pyc_dest))
        else:
            files.append(PyFile(src, dest, 0o755 if src.endswith(".so") else 0o644))
    launcher = cache / "launcher" / "cryptboot"
    launcher.parent.mkdir(parents=True, exist_ok=True)
    _write_if_changed(launcher, launcher_src.encode())
    os.chmod(launcher, 0o755)  # copied with its mode by the hooks too
    files.append(PyFile(str(launcher), LAUNCHER, 0o755))
    return files


def _compile(src: str, pyc: Path, dest: str, optimize: int) -> None:
    """Compile ``src`` to ``pyc`` (unchecked-hash: reproducible, no source needed at run time)."""
    pyc.parent.mkdir(parents=True, exist_ok=True)
    tmp = pyc.with_name(pyc.name + f".{os.getpid()}.tmp")
    try:
        py_compile.compile(src, cfile=str(tmp), dfile=dest[:-1], doraise=True,
                           optimize=optimize,
                           invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
    except py_compile.PyCompileError as e:
        raise CryptbootError(f"{src}: cannot compile: {e.msg}") from None
    data = tmp.read_bytes()
    tmp.unlink()
    _write_if_changed(pyc, data)


def _write_if_changed(path: Path, data: bytes) -> None:
    try:
        if hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(data).digest():
            return
    except FileNotFoundError:
        pass
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def launcher_text(python: str) -> str:
    """``/usr/bin/cryptboot`` in the image (``/init`` links to it): a script is compiled from
    source on every run, so everything is in :mod:`cryptboot.launch`, precompiled."""
    return f"""#!{python} -ISB
import sys
sys.path.insert(0, {SITE!r})
from cryptboot.launch import main
sys.exit(main())
"""
