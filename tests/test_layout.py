"""The package's shape: short functions, no import cycle, sam2 only inside the engine."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "medseg"
MAX_LINES = 60


def _modules() -> dict[str, ast.Module]:
    out = {}
    for p in sorted(PKG.rglob("*.py")):
        parts = p.relative_to(PKG.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = ast.parse(p.read_text(encoding="utf-8"), str(p))
    return out


def _resolve(module: str, node: ast.ImportFrom, is_pkg: bool) -> list[str]:
    """Absolute medseg module names an ``from ... import`` at module level refers to."""
    if node.level == 0:
        base = node.module or ""
    else:
        parts = module.split(".")
        parts = parts if is_pkg else parts[:-1]
        parts = parts[: len(parts) - (node.level - 1)]
        base = ".".join(parts + ([node.module] if node.module else []))
    if not base.startswith("medseg"):
        return []
    return [base] + [f"{base}.{a.name}" for a in node.names]


def test_no_function_longer_than_sixty_lines():
    long = [f"{name}.{n.name} ({n.end_lineno - n.lineno + 1} lines)"
            for name, tree in _modules().items() for n in ast.walk(tree)
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
            and n.end_lineno - n.lineno + 1 > MAX_LINES]
    assert not long, long


def test_no_import_cycle_at_module_level():
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for name, tree in mods.items():
        is_pkg = (PKG.parent / name.replace(".", "/") / "__init__.py").exists()
        deps = set()
        for node in tree.body:  # module level only: imports inside functions are lazy
            if isinstance(node, ast.ImportFrom):
                deps |= {d for d in _resolve(name, node, is_pkg) if d in mods and d != name}
        graph[name] = deps
    state: dict[str, int] = {}

    def visit(n: str, path: list[str]) -> None:
        state[n] = 1
        for d in graph[n]:
            assert state.get(d) != 1, "import cycle: " + " -> ".join(path + [d])
            if d not in state:
                visit(d, path + [d])
        state[n] = 2

    for n in graph:
        if n not in state:
            visit(n, [n])


def test_sam2_is_imported_only_by_the_engine():
    users = []
    for name, tree in _modules().items():
        for node in ast.walk(tree):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            if any(m == "sam2" or m.startswith("sam2.") for m in mods) and \
                    not name.startswith("medseg.engine"):
                users.append(name)
    assert not users, users
