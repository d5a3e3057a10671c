"""The layering of ARCHITECTURE.md, checked on every module's imports; and modules stay small."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import REPO

PACKAGE = REPO / "hessjax"
NUMERICS = {"models", "loss", "operators", "krylov", "lanczos", "hvp", "linearized", "ggn", "spectral", "training",
            "engine", "certified"}
NUMPY_ONLY = {"bounds", "refine", "density"}
DATA = {"mnist", "datasets"}
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
    if parts[1:2] and parts[1] in DATA:
        return "data"
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
                                                           "hessjax.bridges", "hessjax.mnist", "hessjax.datasets"))}
        assert not forbidden and not roots & {"argparse", "matplotlib", "zarr"}, f"{name}: {forbidden or roots}"
    if layer in ("numpy", "results"):
        assert not roots & {"jax", "flax", "optax"}, f"{name} imports jax"
        assert not imported & JAX_NUMERICS, f"{name} imports the JAX numerics"
    if layer == "report":
        assert not roots & {"jax", "flax", "optax"} and not imported & JAX_NUMERICS, f"{name} imports the numerics"
    if layer == "anchors":
        assert not {m for m in imported if m.startswith("hessjax")}, f"{name} imports hessjax"
    if layer == "data":
        assert not roots & {"jax", "flax", "optax"} and not imported & JAX_NUMERICS, f"{name} imports the numerics"


def _private_imports(name: str, path: Path) -> list[str]:
    """``module.name`` for every ``_name`` that ``path`` imports from another hessjax module."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module != "__future__":
            if node.level:
                base = package.split(".")
                module = ".".join(base[: len(base) - node.level + 1] + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module.startswith("hessjax"):
                found += [f"{module}.{a.name}" for a in node.names if a.name.startswith("_")]
    return found


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_imports_another_modules_private_names(name):
    assert _private_imports(name, MODULES[name]) == []


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle of module imports (one path per strongly connected component of more than one module)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_report_and_the_model_layer_have_no_import_cycles():
    """Within ``hessjax.report`` and ``hessjax.models`` no module imports (even for type checking only) a
    module that imports it back."""
    for package in ("hessjax.report", "hessjax.models"):
        members = {n for n in MODULES if n.startswith(package + ".")}
        graph = {n: {m for m in members if m in _imports(n, MODULES[n]) or any(
            i.startswith(m + ".") for i in _imports(n, MODULES[n]))} - {n} for n in members}
        assert _cycles(graph) == [], package


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_stay_small(name):
    lines = MODULES[name].read_text().count("\n")
    assert lines <= 600, f"{name} has {lines} lines"


def test_the_layers_are_all_there():
    layers = {_layer(n) for n in MODULES}
    assert {"numerics", "numpy", "data", "results", "sweep", "bridges", "anchors"} <= layers


def test_the_package_exports_load_lazily_and_match_their_modules():
    """``import hessjax`` loads no JAX; each public name is its submodule's own object; the ``TYPE_CHECKING``
    imports that static analysers read name exactly the lazy ones; ``hessjax.hvp`` stays the function
    after the submodule of the same name is imported."""
    import importlib
    import subprocess
    import sys

    code = ("import sys, hessjax; cold = 'jax' in sys.modules; import hessjax.hvp; "
            "print(cold, callable(hessjax.hvp), hessjax.hvp.__module__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.stdout.split() == ["False", "True", "hessjax.hvp"], out.stderr
    import hessjax

    for name, module in hessjax._LAZY.items():
        assert getattr(hessjax, name) is getattr(importlib.import_module(f"hessjax.{module}"), name), name
    assert hessjax.models is importlib.import_module("hessjax.models")
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    typed = {alias.name: node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level == 1
             for alias in node.names}
    assert typed == {**hessjax._LAZY, "models": None}
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        hessjax.nope  # noqa: B018
