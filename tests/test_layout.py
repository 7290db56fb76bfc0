"""The package layout: imports resolve, layers point one way, no cycles, no private cross-imports.

Walks every module of ``msutils`` with :mod:`ast`, including imports inside
functions (lazy imports count: they are where cycles hide).
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "msutils"

#: Layer of each top-level part of the package; a module may import only from its own
#: layer or lower ones (same-layer imports are allowed but must not form cycles).
LAYERS: dict[str, int] = {
    "core": 0,
    "stats": 1,
    "data": 1,
    "synth": 2,
    "features": 3,
    "segmentation": 3,
    "models": 3,
    "studies": 4,
    "pipeline": 5,
    "cli": 6,
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_module(name: str, modules: dict[str, Path]) -> bool:
    return name in modules


def _imports(path: Path, modules: dict[str, Path]) -> list[tuple[str, str | None, int]]:
    """(imported module, imported name or None, line) for every msutils import in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out: list[tuple[str, str | None, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "msutils":
                    out.append((alias.name, None, node.lineno))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                out.append(("<relative>", None, node.lineno))
                continue
            if not node.module or node.module.split(".")[0] != "msutils":
                continue
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                if _is_module(full, modules):
                    out.append((full, None, node.lineno))
                else:
                    out.append((node.module, alias.name, node.lineno))
    return out


def _part(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_every_msutils_import_resolves() -> None:
    modules = _modules()
    problems = []
    for name, path in modules.items():
        for target, attr, line in _imports(path, modules):
            if target == "<relative>":
                problems.append(f"{name}:{line}: relative import (use absolute msutils.* imports)")
                continue
            if target not in modules:
                problems.append(f"{name}:{line}: imports {target}, which does not exist")
                continue
            if attr is not None and attr != "*":
                mod = importlib.import_module(target)
                if not hasattr(mod, attr):
                    problems.append(f"{name}:{line}: {target} has no name {attr!r}")
    assert problems == []


def test_layers_point_downwards() -> None:
    modules = _modules()
    problems = []
    for name, path in modules.items():
        src_part = _part(name)
        if src_part is None:  # msutils/__init__.py imports nothing heavy
            continue
        assert src_part in LAYERS, f"{name}: top-level part {src_part!r} has no layer in LAYERS"
        for target, _attr, line in _imports(path, modules):
            dst_part = _part(target)
            if target == "msutils" or dst_part is None or dst_part == src_part:
                continue
            if LAYERS[dst_part] > LAYERS[src_part]:
                problems.append(f"{name}:{line}: imports {target} (layer {dst_part} is above {src_part})")
    assert problems == []


def test_no_import_cycles() -> None:
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for target, _attr, _line in _imports(path, modules):
            if target in modules and target != name and not name.startswith(target + "."):
                graph[name].add(target)
    # a package __init__ that re-exports its submodules is not a cycle edge back
    for name in modules:
        graph[name] = {t for t in graph[name] if not (modules[t].name == "__init__.py" and name.startswith(t + "."))}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert cycles == []


def test_no_private_names_across_modules() -> None:
    modules = _modules()
    problems = []
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        aliases: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "msutils":
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        problems.append(f"{name}:{node.lineno}: imports private {node.module}.{alias.name}")
                    if f"{node.module}.{alias.name}" in modules:
                        aliases.add(alias.asname or alias.name)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("msutils.") and alias.asname:
                        aliases.add(alias.asname)
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                problems.append(f"{name}:{node.lineno}: uses private {node.value.id}.{node.attr}")
    assert problems == []


def test_checker_catches_a_cycle_and_an_upward_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The checks above can fail: a fake package with a cycle and an upward import is caught."""
    fake = tmp_path / "msutils"
    (fake / "core").mkdir(parents=True)
    (fake / "studies").mkdir()
    (fake / "__init__.py").write_text("")
    (fake / "core" / "__init__.py").write_text("")
    (fake / "studies" / "__init__.py").write_text("")
    (fake / "core" / "a.py").write_text("def f():\n    from msutils.studies.b import g\n")
    (fake / "studies" / "b.py").write_text("from msutils.core.a import f\nfrom msutils.core.a import _hidden\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", fake)
    with pytest.raises(AssertionError, match="layer studies is above core"):
        test_layers_point_downwards()
    with pytest.raises(AssertionError, match="msutils.core.a"):
        test_no_import_cycles()
    with pytest.raises(AssertionError, match="imports private msutils.core.a._hidden"):
        test_no_private_names_across_modules()


def test_no_study_imports_another_study() -> None:
    """Study modules are siblings: what two studies share lives in a lower layer."""
    modules = _modules()
    shared = {"msutils.studies", "msutils.studies.paper_numbers"}
    problems = []
    for name, path in modules.items():
        if not name.startswith("msutils.studies."):
            continue
        for target, _attr, line in _imports(path, modules):
            if target.startswith("msutils.studies") and target not in shared and target != name:
                problems.append(f"{name}:{line}: imports {target}")
    assert problems == []
