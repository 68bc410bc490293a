"""The package's shape: short functions with few parameters, no import cycle at any level
(imports inside functions and ``lazy_import`` included), sam2 only inside the engine."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "medseg"
MAX_LINES = 60
MAX_PARAMS = 10


def _modules() -> dict[str, ast.Module]:
    out = {}
    for p in sorted(PKG.rglob("*.py")):
        parts = p.relative_to(PKG.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = ast.parse(p.read_text(encoding="utf-8"), str(p))
    return out


def _is_pkg(name: str) -> bool:
    return (PKG.parent / name.replace(".", "/") / "__init__.py").exists()


def _type_checking_nodes(tree: ast.Module) -> set[int]:
    """ids of nodes inside ``if TYPE_CHECKING:`` blocks (never executed)."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for b in node.body for n in ast.walk(b)}
    return skip


def _edges(name: str, tree: ast.Module, mods: dict[str, ast.Module]) -> set[str]:
    """Every medseg module ``name`` imports, at any level (``lazy_import`` included)."""
    skip = _type_checking_nodes(tree)
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                base = node.module or ""
            else:
                parts = name.split(".") if _is_pkg(name) else name.split(".")[:-1]
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join(parts + ([node.module] if node.module else []))
            subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in mods]
            out |= set(subs) if subs and len(subs) == len(node.names) else {base, *subs}
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "lazy_import" \
                and node.args and isinstance(node.args[0], ast.Constant):
            out.add(str(node.args[0].value))
    return {m for m in out if m in mods and m != name}


def test_no_import_cycle_at_any_level():
    mods = _modules()
    graph = {name: _edges(name, tree, mods) for name, tree in mods.items()}
    # a module importing its own package's __init__ is Python's normal partial import
    graph = {n: {d for d in deps if not n.startswith(d + ".")} for n, deps in graph.items()}
    state: dict[str, int] = {}

    def visit(n: str, path: list[str]) -> None:
        state[n] = 1
        for d in sorted(graph[n]):
            assert state.get(d) != 1, "import cycle: " + " -> ".join(path + [d])
            if d not in state:
                visit(d, path + [d])
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n, [n])


def test_the_cycle_check_sees_function_level_and_lazy_imports():
    """The check is not blind: a function-level import and a lazy_import both count."""
    a = ast.parse("def f():\n    from .b import x\n")
    b = ast.parse("from ._lazy import lazy_import\nm = lazy_import('medseg.a')\n")
    mods = {"medseg.a": a, "medseg.b": b, "medseg._lazy": ast.parse("")}
    assert "medseg.b" in _edges("medseg.a", a, mods)
    assert "medseg.a" in _edges("medseg.b", b, mods)


def test_no_function_longer_than_sixty_lines():
    long = [f"{name}.{n.name} ({n.end_lineno - n.lineno + 1} lines)"
            for name, tree in _modules().items() for n in ast.walk(tree)
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
            and n.end_lineno - n.lineno + 1 > MAX_LINES]
    assert not long, long


def test_no_function_with_more_than_ten_parameters():
    """Settings travel as objects; ``self``/``cls`` are not counted, ``**options`` of a
    command whose parameters are its options is one parameter."""
    many = []
    for name, tree in _modules().items():
        for n in ast.walk(tree):
            if not isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            a = n.args
            params = [p.arg for p in (*a.posonlyargs, *a.args, *a.kwonlyargs)
                      if p.arg not in ("self", "cls")]
            count = len(params) + bool(a.vararg) + bool(a.kwarg)
            if count > MAX_PARAMS:
                many.append(f"{name}.{n.name} ({count})")
    assert not many, many


def test_no_lambda_assigned_to_a_name():
    text = [p for p in PKG.rglob("*.py") if "noqa: E731" in p.read_text(encoding="utf-8")]
    assert not text, text


def test_sam2_is_imported_only_by_the_engine():
    users = []
    for name, tree in _modules().items():
        for node in ast.walk(tree):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else \
                [str(node.args[0].value)] if isinstance(node, ast.Call) and \
                getattr(node.func, "id", None) == "lazy_import" and node.args and \
                isinstance(node.args[0], ast.Constant) else []
            if any(m == "sam2" or m.startswith("sam2.") for m in mods) and \
                    not name.startswith("medseg.engine"):
                users.append(name)
    assert not users, users


def test_heavy_libraries_are_not_imported_at_module_level():
    """torch, sam2, SimpleITK, scipy, matplotlib, highdicom, ray load through lazy_import
    (or inside the engine's predictor, which is itself imported lazily)."""
    heavy = ("torch", "sam2", "SimpleITK", "scipy", "matplotlib", "highdicom", "ray",
             "albumentations", "monai", "skimage")
    found = []
    for name, tree in _modules().items():
        if name in ("medseg.engine.predictor", "medseg.transforms"):
            continue  # loaded only through lazy_import / by MONAI users
        for node in tree.body:
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            if any(m.split(".")[0] in heavy for m in mods):
                found.append(name)
    assert not found, found
