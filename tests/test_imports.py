"""The project's import graph points down: no circles, and each layer imports only what lies below it.

The graph is read from the source with ``ast``, so it holds every import a module can make: at module level, inside
functions (a lazy import is still a dependency), and under ``if TYPE_CHECKING:`` (an annotation naming a type from
another module depends on it as much as a call does; ``typing.get_type_hints`` imports it). ``from pkg import name``
is an import of ``pkg/name.py`` when that module exists, else of ``pkg``; relative imports are resolved against the
importing module's package. An import of a package's submodule is an edge to that submodule only (Python runs the
package's ``__init__`` first, but that is the package's own business, not a dependency of the importer).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("encoder", "analysis", "viz", "ui", "tutorial", "bench", "corpus")
SCRIPTS = ("app.py", "cli.py")
HEAVY = ("tensorflow", "keras", "streamlit")  # the model runtime and the page: never in analysis/ or viz/
ABOVE_ENCODER = ("analysis", "viz", "ui", "tutorial", "bench", "corpus", "app", "cli")
ABOVE_VIZ = ("ui", "app", "cli", "bench")
ABOVE_ANALYSIS = ("viz", *ABOVE_VIZ)


@dataclass(frozen=True)
class Import:
    """One import statement's target: ``module`` (dotted), where it sits, and whether it runs at import time."""

    importer: str
    module: str
    line: int
    in_function: bool


def module_name(path: Path) -> str:
    """``encoder/trace.py`` -> ``encoder.trace``; ``encoder/__init__.py`` -> ``encoder``."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def our_modules() -> dict[str, Path]:
    """Every module of ours: the packages' .py files (subpackages included) and the top-level scripts."""
    files = [path for package in PACKAGES if (ROOT / package).is_dir() for path in (ROOT / package).rglob("*.py")]
    files += [ROOT / script for script in SCRIPTS]
    return {module_name(path): path for path in files}


def _package_of(name: str, path: Path) -> str:
    """The package a relative import in ``name`` starts from (the module itself when it is a package)."""
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def _resolve(package: str, node: ast.Import | ast.ImportFrom) -> Iterator[str]:
    """The dotted modules ``node`` imports, ours or not (an ``import a.b`` is ``a.b``); ``package`` is where a
    relative import starts."""
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
        return
    base = node.module or ""
    if node.level:
        parts = package.split(".")
        base = ".".join([*parts[: len(parts) - node.level + 1], *([base] if base else [])])
    for alias in node.names:
        submodule = f"{base}.{alias.name}"
        yield submodule if submodule in our_modules() else base


def _in_function(tree: ast.AST) -> dict[ast.AST, bool]:
    """Each import node of ``tree`` -> whether it sits inside a function (it runs when called, not on import)."""
    found: dict[ast.AST, bool] = {}

    def visit(node: ast.AST, inside: bool) -> None:
        if isinstance(node, ast.Import | ast.ImportFrom):
            found[node] = inside
        for child in ast.iter_child_nodes(node):
            visit(child, inside or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda))

    visit(tree, False)
    return found


def imports_in(name: str, package: str, source: str) -> list[Import]:
    """The imports of module ``name`` (its code ``source``; relative imports start from ``package``), each imported
    name once per statement."""
    return [Import(name, module, node.lineno, inside) for node, inside in _in_function(ast.parse(source)).items()
            for module in _resolve(package, node)]


@cache
def imports() -> tuple[Import, ...]:
    """Every import statement in our modules."""
    return tuple(found for name, path in sorted(our_modules().items())
                 for found in imports_in(name, _package_of(name, path), path.read_text(encoding="utf-8")))


def graph() -> dict[str, set[str]]:
    """Our module -> our modules it imports."""
    edges: dict[str, set[str]] = {name: set() for name in our_modules()}
    for each in imports():
        if each.module in our_modules() and each.module != each.importer:
            edges[each.importer].add(each.module)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The cycles (``[a, b, ..., a]``) of each strongly connected component of more than one module (Tarjan): the
    shortest through each of its modules, each cycle once."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges[node]):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(edges):
        if node not in index:
            connect(node)
    found: dict[tuple[str, ...], list[str]] = {}
    for component in components:
        for start in sorted(component):
            cycle = _cycle_through(start, component, edges)[:-1]
            first = cycle.index(min(cycle))
            cycle = [*cycle[first:], *cycle[:first], min(cycle)]  # from its first module, e.g. a -> b -> a
            found.setdefault(tuple(cycle), cycle)
    return list(found.values())


def _cycle_through(start: str, component: set[str], edges: dict[str, set[str]]) -> list[str]:
    """A shortest cycle from ``start`` back to it inside its component (breadth-first)."""
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for target in sorted(edges[node] & component):
                if target == start:
                    return [*paths[node], start]
                if target not in paths:
                    paths[target] = [*paths[node], target]
                    following.append(target)
        frontier = following
    raise AssertionError(f"no cycle through {start} in its component {sorted(component)}")


def _top(module: str) -> str:
    return module.partition(".")[0]


def _show(found: Import) -> str:
    where = "inside a function" if found.in_function else "at module level"
    return f"{found.importer} line {found.line} imports {found.module} ({where})"


SAMPLE = """
from typing import TYPE_CHECKING

import numpy as np

from encoder import errors
from . import common
from ..trace import EncoderTrace
from .. import limits, nothing

if TYPE_CHECKING:
    from encoder.sources import LoadedModel


def load():
    from encoder.compiled import CompiledEncoder
"""


def test_the_graph_sees_imports_inside_functions_relative_ones_and_type_checking_ones():
    """The reader itself, on a sample module ``encoder.families.sample``: a lazy import, a ``TYPE_CHECKING`` import,
    relative imports and ``from pkg import module`` are all edges; a name that is not a module is its package."""
    found = imports_in("encoder.families.sample", "encoder.families", SAMPLE)
    assert [(each.module, each.in_function) for each in found] == [
        ("typing", False), ("numpy", False), ("encoder.errors", False), ("encoder.families.common", False),
        ("encoder.trace", False), ("encoder.limits", False), ("encoder", False), ("encoder.sources", False),
        ("encoder.compiled", True)]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b", "c"}, "b": {"a"}, "c": {"a"}}) == [["a", "b", "a"], ["a", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles():
    found = cycles(graph())
    assert not found, "import circles (counting imports inside functions and under TYPE_CHECKING):\n" + "\n".join(
        " -> ".join(cycle) for cycle in found)


def test_encoder_imports_nothing_above_it():
    wrong = [_show(found) for found in imports()
             if _top(found.importer) == "encoder" and _top(found.module) in ABOVE_ENCODER]
    assert not wrong, "\n".join(wrong)


def test_analysis_and_viz_never_import_tensorflow_keras_or_streamlit_themselves():
    """``analysis/`` and ``viz/`` are NumPy and Plotly. An analysis that re-runs the model does so through
    ``encoder/`` (``LoadedModel``, ``encoder.compiled``, the model's hooks), which imports TensorFlow when a model is
    built; it never names TensorFlow, Keras or Streamlit itself, at module level or inside a function."""
    wrong = [_show(found) for found in imports()
             if _top(found.importer) in ("analysis", "viz") and _top(found.module) in HEAVY]
    assert not wrong, "\n".join(wrong)


def test_analysis_imports_neither_figures_nor_the_page():
    wrong = [_show(found) for found in imports()
             if _top(found.importer) == "analysis" and _top(found.module) in ABOVE_ANALYSIS]
    assert not wrong, "\n".join(wrong)


def test_serving_never_imports_the_page_except_its_launcher():
    """``ui.serving`` receives what it loads and traces as arguments; only ``python -m ui.serving`` starts the page."""
    page = [name for name in our_modules() if name == "app" or name == "ui"
            or (name.startswith("ui.") and not name.startswith("ui.serving"))]
    wrong = [_show(found) for found in imports() if found.importer.startswith("ui.serving")
             and found.importer != "ui.serving.__main__" and found.module in page]
    assert not wrong, "\n".join(wrong)


def test_viz_never_imports_the_page_or_the_command_line():
    wrong = [_show(found) for found in imports()
             if _top(found.importer) == "viz" and _top(found.module) in ABOVE_VIZ]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("module", ["app", "viz.registry", "analysis"])
def test_importing_the_page_or_the_figures_does_not_load_tensorflow_or_start_a_thread(module):
    """Importing is free of side effects: no thread started (the warm-up starts from ``main()`` or ``python -m
    ui.serving``), and no TensorFlow (the page draws before the model loads)."""
    code = (
        "import sys, threading\n"
        "before = {thread.name for thread in threading.enumerate()}\n"
        f"import {module}\n"
        "started = sorted({thread.name for thread in threading.enumerate()} - before)\n"
        "assert not started, started\n"
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
