"""The import rule of docs/architecture.md, checked from the AST of every module in ``medcl/``.

A module imports only from its own layer or the layers below (imports inside functions and under
``TYPE_CHECKING`` count too: an arrow is an arrow), and no two packages import each other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "medcl"

#: Layer of each top-level module or package of medcl (docs/architecture.md, "Layers").
LAYERS: dict[str, int] = {
    **dict.fromkeys(
        ["config", "config_files", "defaults", "errors", "precision", "schedules", "shipped", "runtime"], 0
    ),
    **dict.fromkeys(["losses", "models", "data"], 1),
    "methods": 2,
    **dict.fromkeys(["engine", "inference", "evaluation", "tracking"], 3),
    **dict.fromkeys(["services", "suggest"], 4),
    **dict.fromkeys(["cli", "commands", "workflows", "docs_gen"], 5),
}
MAX_LINES = 450


def _unit(module: str) -> str:
    """``medcl.engine.run`` -> ``engine``; ``medcl`` itself -> ``medcl``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "medcl"


def _modules() -> list[tuple[Path, str]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if "_shipped" in path.parts:
            continue
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out.append((path, ".".join(parts[:-1] if parts[-1] == "__init__" else parts)))
    return out


def _imports(path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` of every absolute import of a medcl module in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{path}:{node.lineno}: relative import; medcl uses absolute imports")
    return [(line, m) for line, m in found if m == "medcl" or m.startswith("medcl.")]


def test_every_module_has_a_layer() -> None:
    units = {_unit(module) for _, module in _modules()} - {"medcl"}
    assert units <= set(LAYERS), f"add {sorted(units - set(LAYERS))} to LAYERS and docs/architecture.md"


def test_no_module_imports_a_higher_layer() -> None:
    upward = []
    for path, module in _modules():
        here = _unit(module)
        if here == "medcl":  # the package __init__: version only
            continue
        for line, target in _imports(path):
            there = _unit(target)
            if there != "medcl" and LAYERS[there] > LAYERS[here]:
                upward.append(
                    f"{path.relative_to(PACKAGE.parent)}:{line}: {here} (layer {LAYERS[here]}) imports "
                    f"{target} (layer {LAYERS[there]})"
                )
    assert not upward, "imports against the layer rule:\n" + "\n".join(upward)


def test_no_two_packages_import_each_other() -> None:
    edges: dict[tuple[str, str], str] = {}
    for path, module in _modules():
        for line, target in _imports(path):
            a, b = _unit(module), _unit(target)
            if a != b and "medcl" not in (a, b):
                edges.setdefault((a, b), f"{path.relative_to(PACKAGE.parent)}:{line}")
    cycles = [f"{a} <-> {b} ({edges[a, b]}, {edges[b, a]})" for a, b in edges if a < b and (b, a) in edges]
    assert not cycles, "packages importing each other:\n" + "\n".join(cycles)


def test_no_module_is_over_the_size_limit() -> None:
    long = {
        str(p.relative_to(PACKAGE.parent)): n
        for p, _ in _modules()
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert not long, f"split by concern (limit {MAX_LINES} lines): {long}"


@pytest.mark.parametrize("rule_breaker", ["methods", "commands"])
def test_the_checker_sees_an_upward_import(tmp_path: Path, rule_breaker: str) -> None:
    """The checker itself: a losses module importing a higher layer is reported, whatever the import form."""
    bad = tmp_path / "bad.py"
    bad.write_text(f"def f():\n    from medcl.{rule_breaker} import x\n")
    ((line, target),) = _imports(bad)
    assert line == 2 and LAYERS[_unit(target)] > LAYERS["losses"]
