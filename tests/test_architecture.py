"""The package's layers, read from its imports: every arrow points down the map in DESIGN.md, no
module imports itself back through others, and no module grows past 500 lines.

Every import counts: at module level, inside functions (deferred for speed) and under
``TYPE_CHECKING`` (a type is knowledge too). ``from P import m`` where ``m`` is a module counts as an
arrow to ``P.m`` only, as Python's implicit import of a parent package is not a dependency.
"""

from __future__ import annotations

import ast
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "fewshot_cryoet"

#: The map: each layer and the layers it may import (its own modules always). ``""`` is the
#: package's ``__init__``; top-level modules (``episodes``, ``testing``) are layers of their own.
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "plugins": {"core"},
    "datasets": {"core", "plugins"},
    "segmentation": {"core"},
    "episodes": {"core", "datasets"},
    "models": {"core", "plugins", "datasets"},
    "methods": {"core", "plugins", "datasets", "segmentation", "episodes", "models"},
    "results": {"core"},
    "evaluation": {"core", "plugins", "datasets", "segmentation", "episodes", "models", "methods", "results"},
    "reports": {"core", "datasets", "episodes", "results", "evaluation"},
    "inference": {"core", "datasets", "episodes", "segmentation", "evaluation"},
    "tuning": {"core", "plugins", "datasets", "episodes", "methods", "evaluation"},
    "testing": {"core", "datasets", "episodes", "methods", "evaluation"},
    "api": {"core", "plugins", "datasets", "segmentation", "episodes", "models", "methods", "results", "evaluation",
            "reports", "inference", "tuning"},
    "cli": {"core", "api"},
    "__main__": {"cli"},
    "": {"core", "plugins"},
}
#: What the command line may use of the core: errors, progress reporting, the version. It declares
#: options and prints; everything else is the API's.
CLI_CORE = {"fewshot_cryoet.core.errors", "fewshot_cryoet.core.reporting", "fewshot_cryoet.core.redact",
            "fewshot_cryoet.core.version"}
MAX_LINES = 500


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports_of(module: str) -> set[str]:
    """The package's modules that ``module`` imports, anywhere in its body."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
    return {name for name in found if name in MODULES and name != module}


GRAPH = {module: imports_of(module) for module in MODULES}


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_module_sits_on_the_map():
    """A new subpackage or top-level module must be placed on the map (and in DESIGN.md)."""
    assert sorted({layer(m) for m in MODULES} - set(ALLOWED)) == []


def test_imports_go_down_the_layers():
    wrong = sorted(f"{m} → {t}" for m, targets in GRAPH.items() for t in targets
                   if layer(t) != layer(m) and layer(t) not in ALLOWED[layer(m)])
    assert wrong == []


def test_the_map_itself_has_no_circle():
    seen: dict[str, int] = {}  # 1 on the path, 2 done

    def visit(name: str, path: list[str]) -> None:
        if seen.get(name) == 1:
            pytest.fail(f"the map has a circle: {' → '.join(path + [name])}")
        if seen.get(name) == 2:
            return
        seen[name] = 1
        for below in ALLOWED[name]:
            visit(below, path + [name])
        seen[name] = 2

    for name in ALLOWED:
        visit(name, [])


def test_no_import_circle_anywhere():
    """Tarjan's strongly connected components of the module graph: every one must be a single
    module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in sorted(GRAPH):
        if v not in index:
            connect(v)
    assert circles == []


def test_the_command_line_uses_only_the_api_and_presentation():
    wrong = sorted(f"{m} → {t}" for m, targets in GRAPH.items() if layer(m) == "cli"
                   for t in targets if layer(t) == "core" and t not in CLI_CORE)
    assert wrong == []


def test_methods_and_data_know_nothing_above_them():
    """Spelled out, as the issue that drew the map asked: methods know nothing of scoring, stores
    or the command line; data know nothing of methods, episodes or the runner."""
    for module, targets in GRAPH.items():
        if layer(module) == "methods":
            assert not {layer(t) for t in targets} & {"evaluation", "results", "cli", "api"}, module
        if layer(module) == "datasets":
            assert not {layer(t) for t in targets} & {"methods", "episodes", "evaluation"}, module


def test_no_module_over_500_lines():
    long = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_shared_types_live_below_the_layers_that_share_them():
    from fewshot_cryoet.core import types

    for name in ("Budget", "FitReport", "ValidationScore"):
        assert getattr(types, name).__module__ == "fewshot_cryoet.core.types"
    assert GRAPH["fewshot_cryoet.core.types"] <= {"fewshot_cryoet.core.errors"}  # plain dataclasses


def test_old_module_paths_still_import_with_a_deprecation_warning():
    """Third-party plugins and scripts written against the flat layout keep working for one
    release: the old path is the new module itself, and says where it went."""
    import importlib
    import sys

    from fewshot_cryoet.core.moved import MOVED

    for old, new in MOVED.items():
        sys.modules.pop(old, None)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            module = importlib.import_module(old)
        assert module is importlib.import_module(new), old
        messages = [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)]
        assert any(new in m for m in messages), (old, messages)
        assert [w.filename for w in caught] == [__file__] * len(caught), "the warning points at the caller"


def test_a_plugin_written_against_the_old_paths_passes_the_conformance_kit(monkeypatch):
    """tests/plugins/legacy imports everything by its 0.1 path: it loads with a DeprecationWarning
    per moved path, its classes are the new ones, and the conformance kit passes."""
    import importlib
    import sys

    from fewshot_cryoet.core.types import ValidationScore
    from fewshot_cryoet.methods.torch_method import TorchMethod
    from fewshot_cryoet.testing import check_method

    monkeypatch.syspath_prepend(str(ROOT / "tests" / "plugins" / "legacy"))
    for old in ("fewshot_cryoet.errors", "fewshot_cryoet.params", "fewshot_cryoet.scoring", "fsc_legacy_plugin"):
        monkeypatch.delitem(sys.modules, old, raising=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plugin = importlib.import_module("fsc_legacy_plugin")
    moved = sorted({str(w.message).split(" has moved")[0] for w in caught if issubclass(w.category, DeprecationWarning)})
    assert moved == ["fewshot_cryoet.errors", "fewshot_cryoet.methods.base.TorchMethod", "fewshot_cryoet.params",
                     "fewshot_cryoet.scoring"]
    assert {Path(w.filename).name for w in caught} == {"fsc_legacy_plugin.py"}  # each points at the plugin's line
    assert issubclass(plugin.LegacyTiny, TorchMethod) and plugin.ValidationScore is ValidationScore

    passed = check_method(plugin.LegacyTiny)
    assert len(passed) >= 10 and all(isinstance(line, str) for line in passed)
    assert plugin.describe(plugin.FitReport(episodes=2), plugin.Budget(episodes=4),
                           ValidationScore(0.5, 0.7)) == "2/4 episodes, selection 0.600"
