"""The package's shape, read from its source: qkv's import graph is acyclic and its layers only import
downward — attention → layers → models → decode / viz / families → train / api → compare → cli."""

from __future__ import annotations

import ast
from pathlib import Path

import qkv

ROOT = Path(qkv.__file__).parent

# Each module's layer; a module may import modules of its own layer or below. The most specific
# prefix wins. Utilities that know nothing of models (errors, config, linear, devices, data, checkpoint) are 0.
LAYERS = {
    "qkv.errors": 0,
    "qkv.config": 0,
    "qkv.linear": 0,
    "qkv.devices": 0,
    "qkv.objectives": 0,
    "qkv.checkpoint": 0,
    "qkv.data": 0,
    "qkv.attention": 1,
    "qkv.layers": 2,
    "qkv.models": 3,
    "qkv.decode": 4,
    "qkv.interop.hf": 4,
    "qkv.interop.marian": 4,
    "qkv.interop.ct2": 4,
    "qkv.viz": 5,
    "qkv.families": 5,
    "qkv.recipes": 6,
    "qkv.distributed": 6,
    "qkv.trainlog": 6,
    "qkv.train": 7,
    "qkv.api": 7,
    "qkv.interop": 7,
    "qkv.env": 7,
    "qkv": 7,  # the package itself: qkv.load defers to qkv.api
    "qkv.compare": 8,
    "qkv.cli": 9,
    "qkv.__main__": 9,
}
# Deferred imports allowed to point upward, with the reason. Only convenience constructors qualify.
UPWARD_OK = {
    ("qkv.models.gpt", "qkv.interop.hf"): "GPT.from_hf, a shortcut to the Hugging Face mapping",
    ("qkv.models.bert", "qkv.interop.hf"): "BERT.from_hf, a shortcut to the Hugging Face mapping",
}


def module_name(path: Path) -> str:
    """qkv/models/gpt.py -> qkv.models.gpt; qkv/models/__init__.py -> qkv.models."""
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> int:
    """The layer of ``module`` (its longest prefix in LAYERS)."""
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return LAYERS[best]


def imports(path: Path, modules: set[str]) -> list[tuple[str, bool]]:
    """(imported qkv module, at module level?) for every import in the file; ``if TYPE_CHECKING`` blocks
    are skipped (they never run)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    type_only = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for n in ast.walk(node)
    }
    tried = [n for node in tree.body if isinstance(node, ast.Try) for n in node.body]
    top_level = {id(n) for n in [*tree.body, *tried]}
    found = []
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names]
            targets = [n for n in names if n in modules] or [node.module]  # `from pkg import submodule`
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            continue
        found += [(t, id(node) in top_level) for t in targets if t == "qkv" or t.startswith("qkv.")]
    return found


def graph() -> dict[str, list[tuple[str, bool]]]:
    """Every qkv module -> its qkv imports."""
    files = {module_name(p): p for p in ROOT.rglob("*.py")}
    return {m: imports(p, set(files)) for m, p in files.items()}


def test_every_module_has_a_layer():
    for module in graph():
        assert layer(module) >= 0


def test_layers_import_only_downward():
    upward = [
        (m, t) for m, edges in graph().items() for t, _ in edges if layer(t) > layer(m) and (m, t) not in UPWARD_OK
    ]
    assert upward == [], "modules importing from a higher layer"


def test_the_allowed_upward_imports_are_deferred_and_still_exist():
    g = graph()
    for m, t in UPWARD_OK:
        edges = [top for target, top in g[m] if target == t]
        assert edges and not any(edges), f"{m} -> {t} must exist and be inside a function"


def test_module_level_import_graph_is_acyclic():
    g = {m: [t for t, top in edges if top and t != m] for m, edges in graph().items()}
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in g.get(m, []):
            if t not in g:
                continue
            assert state.get(t) != 1, f"import cycle: {' -> '.join([*path, m, t])}"
            if t not in state:
                visit(t, [*path, m])
        state[m] = 2

    for m in g:
        if m not in state:
            visit(m, [])
