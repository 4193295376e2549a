"""The layer rule, checked: every import in the package points down (or within its layer).

Each module belongs to one layer (the README's architecture table); a module may import from
its own layer and from layers below it, never from one above, and never from a sibling layer of
the same rank (keys, unlock and mount know nothing of each other). Imports inside functions and
under ``TYPE_CHECKING`` count too: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "cryptboot"

# (layer, rank, module prefixes): the longest matching prefix decides; higher rank = higher up
LAYERS: list[tuple[str, int, tuple[str, ...]]] = [
    # the image builder packs every layer below (and reads the entry's command table)
    ("build", 10, ("cryptboot.initramfs",)),
    # issue 17: "cryptboot check" reads built images, the plan and the running system
    ("check", 10, ("cryptboot.check",)),
    ("entry", 9, ("cryptboot.cli", "cryptboot.__main__", "cryptboot.launch",
                  "cryptboot.config.cli", "cryptboot.switch.cli", "cryptboot.unlock.cgd_cli")),
    ("flow", 8, ("cryptboot.boot", "cryptboot.steps", "cryptboot.system",
                 "cryptboot.background", "cryptboot.bootargs")),
    ("switch", 7, ("cryptboot.switch",)),
    ("storage layers", 6, ("cryptboot.layers",)),
    ("ssh unlock", 6, ("cryptboot.ssh",)),  # issue 14: dropbear + the prompt's socket
    ("keys", 5, ("cryptboot.keys",)),
    ("unlock", 5, ("cryptboot.unlock",)),
    ("mount", 5, ("cryptboot.mount",)),
    ("devices", 4, ("cryptboot.devices", "cryptboot.udev", "cryptboot.modload")),
    ("network", 4, ("cryptboot.network",)),  # issue 14; below keys: tang waits on it
    ("config", 3, ("cryptboot.config",)),
    ("system", 2, ("cryptboot.run", "cryptboot.log", "cryptboot.errors", "cryptboot.record",
                   "cryptboot.syscalls", "cryptboot.blkid", "cryptboot.clock",
                   "cryptboot.paths")),
    ("package", 1, ("cryptboot",)),
]


def layer_of(module: str) -> tuple[str, int]:
    best: tuple[int, str, int] | None = None
    for name, rank, prefixes in LAYERS:
        for p in prefixes:
            if module == p or module.startswith(p + "."):
                if best is None or len(p) > best[0]:
                    best = (len(p), name, rank)
    assert best is not None, f"{module} belongs to no layer: add it to LAYERS (and the README)"
    return best[1], best[2]


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path, mod: str) -> list[tuple[int, str]]:
    """(line, module) of every cryptboot import in the file, wherever it stands."""
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            found.append((node.lineno, target))
            if target == "cryptboot":  # from cryptboot import log, syscalls
                found += [(node.lineno, f"cryptboot.{a.name}") for a in node.names]
    return [(line, m) for line, m in found if m == "cryptboot" or m.startswith("cryptboot.")]


def file_violations(path: Path, mod: str) -> list[str]:
    layer, rank = layer_of(mod)
    out = []
    for line, target in imports(path, mod):
        if target == "cryptboot":
            continue
        tlayer, trank = layer_of(target)
        if trank > rank or (trank == rank and tlayer != layer):
            out.append(f"{path.name}:{line}: {mod} ({layer}) imports {target} ({tlayer})")
    return out


def violations() -> list[str]:
    out = []
    for path in sorted(PKG.rglob("*.py")):
        out += file_violations(path, module_name(path))
    return out


def test_no_import_points_up() -> None:
    assert violations() == []


def test_every_module_has_a_layer() -> None:
    for path in PKG.rglob("*.py"):
        layer_of(module_name(path))


@pytest.mark.parametrize(("source", "line"), [
    ("from cryptboot.boot import Booter\n", 1),
    ("def f():\n    from cryptboot.steps import STEPS\n", 2),
    ("if TYPE_CHECKING:\n    import cryptboot.layers.crypt\n", 2),
    ("from cryptboot import keys\n", 1),          # a sibling of the same rank
])
def test_the_checker_sees_every_kind_of_import(tmp_path: Path, source: str, line: int) -> None:
    """An upward import from the mount layer is caught at module level, in a function, under
    TYPE_CHECKING, and as ``from cryptboot import X``."""
    probe = tmp_path / "probe.py"
    probe.write_text(source)
    found = file_violations(probe, "cryptboot.mount")
    assert len(found) == 1 and found[0].startswith(f"probe.py:{line}: cryptboot.mount (mount)")
    assert file_violations(probe, "cryptboot.cli") == []  # the same imports from the top: fine
