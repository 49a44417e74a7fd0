"""Config files: one YAML file read with clear errors, and the ``extends:`` chain that composes them.

Kept apart from the schema (:mod:`medcl.config`): this is file handling, the schema is what the values mean.
A file may say ``extends: <config>`` (a path relative to it, or a shipped name such as
``hippocampus/supervised``); its parent is read first and the file's keys are merged over it.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from medcl.errors import ConfigError

__all__ = [
    "apply_overrides",
    "YamlLoader",
    "chain_source",
    "load_yaml",
    "merge_configs",
    "parse_override",
    "read_config_chain",
    "read_mapping",
    "read_yaml",
    "resolve_extends",
    "set_dotted",
]


class YamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's floats: ``3e-4`` and ``5E+2`` are numbers, not strings.

    PyYAML follows YAML 1.1, whose float pattern needs a dot (``3.0e-4``); a learning rate written ``3e-4`` would
    arrive as the string ``"3e-4"`` and only survive where the schema happens to coerce strings.
    """


YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:float"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def load_yaml(text: str) -> Any:
    """Parse YAML text with :class:`YamlLoader` (safe: plain data only)."""
    return yaml.load(text, Loader=YamlLoader)  # noqa: S506 (a SafeLoader subclass)


#: One override: ``"a.b=value"`` text from ``--set`` (the value read as YAML) or a ``("a.b", value)`` pair
#: from a typed command-line flag (the value kept as given: ``--runs 2024`` stays the string ``"2024"``).
Override = str | tuple[str, Any]


def read_mapping(path: Path) -> dict[str, Any]:
    """One YAML file as a dict, with a clear error for a missing or malformed file (no ``extends``)."""
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = load_yaml(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, got {type(data).__name__}")
    return data


def resolve_extends(value: Any, child: Path) -> Path:
    """The file an ``extends:`` value names: a path relative to the extending file, else a shipped name.

    Args:
        value: The value of ``extends`` (``supervised.yaml``, ``../cpu/mcsc.yaml``, ``hippocampus/supervised``).
        child: The file that holds it.

    Raises:
        ConfigError: ``value`` is not a non-empty string, or names neither a file nor a shipped config.
    """
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(
            f"config file {child}: 'extends' must name one config (a path relative to this file, or a shipped "
            f"name such as hippocampus/supervised), got {value!r}"
        )
    candidate = child.parent / Path(value.strip()).expanduser()  # an absolute path stays absolute
    if candidate.is_file():
        return candidate
    from medcl.shipped import shipped_path

    try:
        return shipped_path("configs", value.strip())
    except ConfigError:
        raise ConfigError(
            f"config file {child} extends {value!r}, which is neither a file (looked for {candidate}) nor a "
            "shipped config name (`medcl config list` shows them)"
        ) from None


def merge_configs(base: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    """``child`` deep-merged over ``base``: the child's keys win, sections merge key by key, lists are replaced.

    One exception: a child whose ``method.name`` differs from the base's replaces the whole ``method``
    section, since the base's method parameters belong to another method.
    """
    base_method, child_method = base.get("method"), child.get("method")
    other_method = (
        isinstance(base_method, dict)
        and isinstance(child_method, dict)
        and "name" in child_method
        and child_method["name"] != base_method.get("name")
    )
    if other_method:
        base = {**base, "method": {}}
    return _deep_merge(base, child)


def _deep_merge(base: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in child.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_config_chain(path: str | Path) -> tuple[dict[str, Any], list[Path]]:
    """A config file with its ``extends`` chain resolved, and the chain (the file first, its root last).

    A file may say ``extends: <config>`` (see :func:`resolve_extends`); that config is read first (itself
    perhaps extending another) and the file's own keys are merged over it (:func:`merge_configs`).

    Raises:
        ConfigError: A file of the chain is missing or malformed, a parent cannot be found, or the chain
            comes back to a file it already holds (the message lists the cycle).
    """
    chain: list[Path] = []
    layers: list[dict[str, Any]] = []
    current: Path | None = Path(path)
    while current is not None:
        if any(current.resolve() == seen.resolve() for seen in chain):
            cycle = " -> ".join(str(p) for p in [*chain, current])
            raise ConfigError(f"config 'extends' forms a cycle: {cycle}")
        data = read_mapping(current)
        chain.append(current)
        parent = data.pop("extends", None)
        layers.append(data)
        current = resolve_extends(parent, current) if parent is not None else None
    merged: dict[str, Any] = {}
    for layer in reversed(layers):
        merged = merge_configs(merged, layer)
    return merged, chain


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file into a dict, its ``extends`` chain resolved (:func:`read_config_chain`)."""
    return read_config_chain(path)[0]


def chain_source(chain: list[Path]) -> str:
    """``a.yaml`` or ``a.yaml, extending b.yaml, extending c.yaml``: where a config's values came from."""
    return ", extending ".join(str(p) for p in chain)


def parse_override(text: str) -> tuple[str, Any]:
    """Parse ``a.b=value``; the value is read as YAML (``3``, ``0.1``, ``true``, ``[64, 64]``, ``null``)."""
    if "=" not in text:
        raise ConfigError(f"--set expects KEY=VALUE (e.g. optim.lr=3e-4), got {text!r}")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not p for p in key.split(".")):
        raise ConfigError(f"--set has an empty key in {text!r}")
    try:
        value = load_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    """Set ``tree[a][b] = value`` for ``key='a.b'``, creating dicts on the way."""
    parts = key.split(".")
    node = tree
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key}: '{'.'.join(parts[: i + 1])}' is a value, not a section")
        node = child
    node[parts[-1]] = value


def apply_overrides(raw: dict[str, Any], overrides: Sequence[Override] = ()) -> dict[str, Any]:
    """A copy of ``raw`` with every override set, in order (a later one wins)."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        key, value = parse_override(item) if isinstance(item, str) else item
        set_dotted(raw, key, value)
    return raw
