"""The package's structure, checked: modules of at most 500 lines, no import cycle, no upward import.

Imports are read from the source (every ``import`` of a sparsecc module, those inside functions
included; those under ``if TYPE_CHECKING:`` are annotations only and left out). Each module belongs
to a layer; a module may import its own layer and those below, never one above.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# the source folders and the packages they install as
SOURCES = {"sparsecc": "sparsecc", "passes": "sparsecc.passes", "plugins": "sparsecc.plugins",
           "models": "sparsecc.models"}
MAX_LINES = 500

# Bottom first. A module belongs to the longest prefix listed.
LAYERS = [
    # foundations: no sparsecc import beyond these (numpy-only analysis, plugin references, data)
    ["sparsecc.errors", "sparsecc.log", "sparsecc.tables", "sparsecc.environment", "sparsecc.graphutil",
     "sparsecc.weight_origins", "sparsecc.extensions", "sparsecc.data", "sparsecc.sparsity", "sparsecc.plugins",
     "sparsecc.conv_geometry", "sparsecc.precision", "sparsecc.limits", "sparsecc.interrupts", "sparsecc.locks",
     "sparsecc.outputs", "sparsecc.polygraphy_guard", "sparsecc.feeds", "sparsecc.plot_labels"],
    ["sparsecc.onnx_files", "sparsecc.model_files", "sparsecc.session_files", "sparsecc.model"],  # files and the model
    ["sparsecc.backends"],  # runtimes
    ["sparsecc.shapes", "sparsecc.verify", "sparsecc.verify_options",
     "sparsecc.input_model"],  # graphs run on a runtime
    ["sparsecc.layers", "sparsecc.dsc", "sparsecc.dependency", "sparsecc.plan", "sparsecc.path_constants",
     "sparsecc.counting"],  # analysis
    # measuring, reporting a model; the decision policy reads measurements
    ["sparsecc.inspection", "sparsecc.bench", "sparsecc.evaluate", "sparsecc.validate", "sparsecc.measure",
     "sparsecc.policy"],
    ["sparsecc.passmanager", "sparsecc.nothing_planned"],  # the pass contract
    ["sparsecc.lowering"],  # the lowering toolkit and driver
    ["sparsecc.latency"],  # latency tables and the allocation to a speed target (plan-filters uses it)
    ["sparsecc.passes"],
    ["sparsecc.recipe"],
    ["sparsecc.compiler", "sparsecc.report", "sparsecc.shape_changes"],
    ["sparsecc.study", "sparsecc.finetuning", "sparsecc.torch"],  # libraries built on the compiler's parts
    ["sparsecc.models", "sparsecc.zoo"],  # the model zoo (its checkpoints load through finetuning)
    ["sparsecc.finetuning.job", "sparsecc.demo"],  # jobs the commands run
    ["sparsecc.commands", "sparsecc.cli", "sparsecc"],  # the CLI and the public API's lazy entry points
]
# Upward imports that are the design, with why.
ALLOWED_UPWARD = {
    ("sparsecc.passmanager.registry", "sparsecc.passes"):
        "the pass registry imports the built-in passes to list them (as sparsecc.lowering registers its lowerings)",
}


def _modules() -> dict[str, Path]:
    found = {}
    for folder, package in SOURCES.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            parts = list(path.relative_to(REPO / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    tree = ast.parse(path.read_text())
    annotations_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                        and getattr(node.test, "id", None) == "TYPE_CHECKING" for n in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in annotations_only:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("sparsecc")}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("sparsecc"):
            submodules = {f"{node.module}.{a.name}" for a in node.names} & set(modules)
            found |= submodules or {node.module}
    return {name for name in found if name in modules}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, modules) - {name} for name, path in modules.items()}


def _layer(module: str) -> int:
    best, level = "", None
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > len(best):
                best, level = prefix, index
    assert level is not None, f"{module} is in no layer of tests/test_layering.py: add it"
    return level


def test_no_module_is_over_500_lines():
    long = {name: len(path.read_text().splitlines()) for name, path in _modules().items()
            if len(path.read_text().splitlines()) > MAX_LINES}
    assert long == {}


def test_no_import_cycle():
    graph = _graph()
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(node):  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    assert cycles == []


def test_no_upward_import():
    upward = [(module, target) for module, targets in _graph().items() for target in targets
              if _layer(target) > _layer(module) and (module, target) not in ALLOWED_UPWARD]
    assert upward == []


def test_the_layering_check_sees_imports_inside_functions(tmp_path):
    """The check is not blind: a lazy import is an import."""
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from sparsecc.compiler import compile_model\n")
    assert _imports(source, _modules()) == {"sparsecc.compiler"}
    source.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from sparsecc.compiler import x\n")
    assert _imports(source, _modules()) == set()
