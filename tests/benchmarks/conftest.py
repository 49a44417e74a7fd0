"""Load a benchmark script (``benchmarks/<name>.py``, not a package) as a module."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture
def benchmark_script():
    """Factory: ``load(name)`` -> the module of ``benchmarks/<name>.py``, its sibling scripts importable."""

    def load(name: str) -> ModuleType:
        sys.path.insert(0, str(BENCHMARKS))  # scripts import their siblings as top-level modules
        try:
            spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module  # dataclasses look their module up
            spec.loader.exec_module(module)
        finally:
            sys.path.remove(str(BENCHMARKS))
        return module

    return load
