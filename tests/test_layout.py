"""The layering of ARCHITECTURE.md, checked on every module's imports; and modules stay small."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import REPO

PACKAGE = REPO / "hessjax"
NUMERICS = {"model", "loss", "operators", "krylov", "lanczos", "hvp", "spectral", "training", "engine", "flax_mlp"}
NUMPY_ONLY = {"bounds", "refine", "density"}
JAX_NUMERICS = {f"hessjax.{m}" for m in NUMERICS}


def _modules():
    roots = {"hessjax": PACKAGE, "hessjax.bridges": REPO / "bridges", "hessjax.anchors": REPO / "anchors"}
    for prefix, root in roots.items():
        for path in sorted(root.rglob("*.py")):
            if root == PACKAGE and path.relative_to(PACKAGE).parts[0] in ("bridges", "anchors"):
                continue  # symlinks of a development tree
            rel = path.relative_to(root).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            yield ".".join([prefix, *parts]), path


def _imports(name: str, path: Path) -> set[str]:
    """Absolute names of every module imported by ``path`` (relative imports resolved)."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def _layer(name: str) -> str:
    parts = name.split(".")
    if parts[1:2] and parts[1] in NUMERICS:
        return "numerics"
    if parts[1:2] and parts[1] in NUMPY_ONLY:
        return "numpy"
    return parts[1] if len(parts) > 1 else "package"


MODULES = dict(_modules())


def _roots(imported: set[str]) -> set[str]:
    return {m.split(".")[0] for m in imported}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_follow_the_layers(name):
    imported = _imports(name, MODULES[name])
    layer = _layer(name)
    roots = _roots(imported)
    assert "benchmarks" not in roots and "_common" not in roots, f"{name} imports benchmarks"
    if layer != "bridges":
        assert "torch" not in roots, f"{name} imports torch outside hessjax.bridges"
    if layer == "numerics":
        forbidden = {m for m in imported if m.startswith(("hessjax.results", "hessjax.sweep", "hessjax.report",
                                                           "hessjax.bridges", "hessjax.mnist"))}
        assert not forbidden and not roots & {"argparse", "matplotlib", "zarr"}, f"{name}: {forbidden or roots}"
    if layer in ("numpy", "results"):
        assert not roots & {"jax", "flax", "optax"}, f"{name} imports jax"
        assert not imported & JAX_NUMERICS, f"{name} imports the JAX numerics"
    if layer == "report":
        assert not roots & {"jax", "flax", "optax"} and not imported & JAX_NUMERICS, f"{name} imports the numerics"
    if layer == "anchors":
        assert not {m for m in imported if m.startswith("hessjax")}, f"{name} imports hessjax"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_stay_small(name):
    lines = MODULES[name].read_text().count("\n")
    assert lines <= 600, f"{name} has {lines} lines"


def test_the_layers_are_all_there():
    layers = {_layer(n) for n in MODULES}
    assert {"numerics", "numpy", "results", "sweep", "bridges", "anchors"} <= layers
