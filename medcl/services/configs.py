"""A run's config from a YAML file (``extends:`` resolved) and overrides, validated once before any work.

Overrides are ``"a.b=value"`` strings from ``--set`` (the value read as YAML) or ``("a.b", value)`` pairs from
typed flags, kept as given. Validation is :func:`medcl.methods.validate_config`: the schema, then the named
method's ``Params`` for ``method.*``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medcl.config import Config
from medcl.config_files import Override, apply_overrides, chain_source, read_config_chain
from medcl.methods import validate_config

__all__ = ["Override", "build_config", "load_config"]


def build_config(raw: dict[str, Any], overrides: Sequence[Override] = (), source: str = "") -> Config:
    """Apply ``overrides`` to a raw config dict and validate it (the method section included)."""
    return validate_config(apply_overrides(raw, overrides), source)


def load_config(path: str | Path, overrides: Sequence[Override] = ()) -> Config:
    """Read (``extends`` resolved), override and validate a YAML config file."""
    raw, chain = read_config_chain(path)
    return build_config(raw, overrides, source=chain_source(chain))
