"""The tree's layers: imports point one way (serving -> engine -> contract), and the modules
that say they are pure import no torch, directly or through another module of the project."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT

MODEL = ROOT / "model"
LAYERS = ("contract", "engine", "serving")  # each may import only those before it
HEAVY = ("torch", "diffusers", "transformers")
# The modules whose docstring says they are pure (no torch), and the placement policy.
PURE = (
    "model.contract.cache",
    "model.contract.errors",
    "model.contract.images",
    "model.contract.prompt",
    "model.contract.request",
    "model.contract.tables",
    "model.engine.options",
    "model.engine.placement.binding",
    "model.engine.plan",
    "model.engine.tokens",
    "model.engine.weights",
    "model.serving.prefetch",
    "model.serving.settings",
    "model.serving.warmup",
)


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every module `path` imports at any depth of its code (functions included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


GRAPH = {module_name(path): imports(path) for path in MODEL.rglob("*.py")}


def project_imports(name: str) -> set[str]:
    return {m for m in GRAPH[name] if m in GRAPH and m != name}


def layer(name: str) -> int | None:
    parts = name.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None


def test_every_module_sits_in_a_layer() -> None:
    loose = [name for name in GRAPH if name != "model" and layer(name) is None]
    assert not loose, f"modules outside model/contract, model/engine, model/serving: {loose}"


@pytest.mark.parametrize("name", sorted(GRAPH))
def test_imports_point_down(name: str) -> None:
    own = layer(name)
    if own is None:
        return  # model/__init__.py installs the log filters, the root of every layer
    upward = sorted(m for m in project_imports(name) if (layer(m) or 0) > own)
    assert not upward, f"{name} ({LAYERS[own]}) imports a higher layer: {upward}"


@pytest.mark.parametrize("name", PURE)
def test_pure_modules_import_no_torch(name: str) -> None:
    seen, todo = set(), [name]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        heavy = sorted(m for m in GRAPH[current] if m.split(".")[0] in HEAVY)
        assert not heavy, f"{name} is pure, but {current} imports {heavy}"
        todo += [m for m in project_imports(current) if m != "model"]
