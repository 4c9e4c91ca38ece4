"""The package's import graph: no circle (deferred imports included), and no import that points
upward in the layering of docs/architecture.md."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "mtopnet"

LAYERS: tuple[tuple[str, ...], ...] = (
    # 0: facts and errors, importing nothing of mtopnet
    ("mtopnet", "mtopnet.constants", "mtopnet.config", "mtopnet.logs"),
    # 1: data descriptions
    ("mtopnet.lines", "mtopnet.templates", "mtopnet.instruments", "mtopnet.store", "mtopnet.columns",
     "mtopnet.provenance", "mtopnet.cluster"),
    # 2: physics and readers
    ("mtopnet.galaxies", "mtopnet.io", "mtopnet.preprocess", "mtopnet.model", "mtopnet.quality", "mtopnet.devices"),
    # 3: artefacts built on them
    ("mtopnet.checkpoint", "mtopnet.catalogue", "mtopnet.simulate", "mtopnet.refine", "mtopnet.plots",
     "mtopnet.priors"),
    # 4: a trained model
    ("mtopnet.trained",),
    # 5: workflows
    ("mtopnet.shards", "mtopnet.predict", "mtopnet.domain", "mtopnet.train", "mtopnet.baselines", "mtopnet.testing"),
    # 6: workflows on workflows
    ("mtopnet.evaluate", "mtopnet.inspect", "mtopnet.calibrate"),
    # 7: entry points
    ("mtopnet.demo", "mtopnet.cli", "mtopnet.__main__"),
)
"""Bottom to top. A module may import its own package and any package of a lower layer;
modules of one layer may import each other as long as there is no circle."""


MAX_LINES = 520
"""~500 lines: a module longer than this says why in its docstring ("Over 500 lines: ...")."""


def module_name(path: Path, root: Path = SRC) -> str:
    """Dotted name of a source file (``pkg/__init__.py`` is ``pkg``)."""
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, root: Path = SRC) -> set[str]:
    """Every mtopnet module ``path`` imports, at module level or inside functions (absolute or relative)."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == root.name}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != root.name:
                continue
            # `from . import x` / `from .pkg import mod`: count submodules where they exist
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                out.add(sub if _exists(sub, root) else target)
    out.discard(name)
    return out


def _exists(dotted: str, root: Path) -> bool:
    rel = Path(*dotted.split(".")[1:])
    return (root / rel).with_suffix(".py").is_file() or (root / rel / "__init__.py").is_file()


def import_graph(root: Path = SRC) -> dict[str, set[str]]:
    """Module -> the mtopnet modules it imports, for every module under ``root``."""
    return {module_name(p, root): imports_of(p, root) for p in sorted(root.rglob("*.py"))}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A circle of imports (first module repeated at the end), or None. Depth-first search."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def layer_of(module: str) -> int:
    """Index in :data:`LAYERS` of the longest entry that is ``module`` or a package above it."""
    best, depth = None, -1
    for i, layer in enumerate(LAYERS):
        for entry in layer:
            inside = module == entry or ("." in entry and module.startswith(entry + "."))  # root: itself only
            if inside and entry.count(".") > depth:
                best, depth = i, entry.count(".")
    if best is None:
        raise KeyError(f"{module}: in no layer of LAYERS (add it, and to docs/architecture.md)")
    return best


def upward_imports(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """(importer, imported) pairs where the imported module sits in a higher layer."""
    bad = []
    for mod, targets in graph.items():
        for t in targets:
            # a package's __init__ may import its own modules; a module its package
            if t.startswith(mod + ".") or mod.startswith(t + ".") and t != "mtopnet":
                continue
            if layer_of(t) > layer_of(mod):
                bad.append((mod, t))
    return sorted(bad)


def test_the_graph_sees_relative_and_deferred_imports():
    graph = import_graph()
    assert "mtopnet.quality" in graph["mtopnet.predict"]  # `from .quality import ...`
    assert "mtopnet.refine.basis" in graph["mtopnet.refine.fit"]  # `from .basis import ...`
    assert "mtopnet.constants" in graph["mtopnet.refine.basis"]  # `from ..constants import ...`
    assert len(graph) > 40


def test_no_import_circle():
    assert find_cycle(import_graph()) is None


def test_every_module_has_a_layer():
    for mod in import_graph():
        layer_of(mod)
    with pytest.raises(KeyError, match="mtopnet.newmodule: in no layer"):
        layer_of("mtopnet.newmodule")


def test_no_import_points_upward():
    assert upward_imports(import_graph()) == []


def test_a_synthetic_circle_is_found(tmp_path):
    graph = import_graph()
    graph["mtopnet.constants"] = graph["mtopnet.constants"] | {"mtopnet.predict"}  # predict -> ... -> constants
    cycle = find_cycle(graph)
    assert cycle is not None and cycle[0] == cycle[-1] and "mtopnet.constants" in cycle
    # and in source: a function-level (deferred) import closing a circle is seen too
    pkg = tmp_path / "mtopnet"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import g\n")
    (pkg / "b.py").write_text("def g():\n    from . import a\n    return a\n")
    toy = import_graph(pkg)
    assert toy["mtopnet.b"] == {"mtopnet.a"}
    assert find_cycle(toy) == ["mtopnet.a", "mtopnet.b", "mtopnet.a"]


def test_an_upward_import_is_found():
    graph = import_graph()
    graph["mtopnet.quality"] = graph["mtopnet.quality"] | {"mtopnet.predict"}
    assert ("mtopnet.quality", "mtopnet.predict") in upward_imports(graph)


@pytest.mark.parametrize("path", sorted(SRC.rglob("*.py")), ids=lambda p: str(p.relative_to(SRC)))
def test_modules_stay_short_or_say_why(path):
    text = path.read_text()
    n = text.count("\n")
    doc = ast.get_docstring(ast.parse(text)) or ""
    assert n <= MAX_LINES or "Over 500 lines:" in doc, f"{path.name}: {n} lines, and its docstring says not why"
