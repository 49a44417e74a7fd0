"""The configs and workflows that ship with medcl, by name.

Their source is the repository's top-level ``configs/`` and ``workflows/`` folders; the package reaches them
through ``medcl/_shipped/{configs,workflows}`` (symbolic links in a checkout, real folders in an installed
wheel: ``[tool.setuptools.package-data]`` in pyproject.toml). A shipped config is named by its path under
``configs/`` without ``.yaml`` (``hippocampus/supervised``); a workflow by its file name (``demo``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from medcl.errors import ConfigError

Kind = Literal["configs", "workflows"]
_ROOT = Path(__file__).resolve().parent / "_shipped"


def shipped_dir(kind: Kind) -> Path:
    """The folder of shipped configs or workflows."""
    return _ROOT / kind


def shipped_names(kind: Kind) -> list[str]:
    """Every shipped name of ``kind``, sorted (``hippocampus/supervised``, ``acdc/cpu/mcsc``, ``demo``)."""
    root = shipped_dir(kind)
    return sorted(p.relative_to(root).with_suffix("").as_posix() for p in root.rglob("*.yaml"))


def shipped_path(kind: Kind, name: str) -> Path:
    """The file of a shipped name; ``configs/hippocampus/demo.yaml`` and ``hippocampus/demo`` both work.

    Raises:
        ConfigError: No shipped file has that name; the message lists the names.
    """
    key = name.removesuffix(".yaml").removesuffix(".yml").strip("/")
    key = key.removeprefix(f"{kind}/")
    path = shipped_dir(kind) / f"{key}.yaml"
    if key and path.is_file():
        return path
    names = shipped_names(kind)
    head, _, tail = key.rpartition("/")
    close = [n for n in names if (head and n.startswith(head + "/")) or n.endswith("/" + tail)] or names
    close.sort(key=lambda n: (n.count("/"), n))  # the folder's own configs before its subfolders' (cpu/...)
    raise ConfigError(
        f"no shipped {kind[:-1]} named {name!r}; `medcl config list` shows them all "
        f"(e.g. {', '.join(close[:8])})"
    )


def find_file(kind: Kind, value: str) -> Path:
    """``value`` as a file if it exists, else the shipped file of that name (a path like
    ``configs/hippocampus/demo.yaml`` from the docs works from any folder).

    Raises:
        ConfigError: Neither a file nor a shipped name.
    """
    path = Path(value).expanduser()
    if path.is_file():
        return path
    try:
        return shipped_path(kind, value)
    except ConfigError as exc:
        raise ConfigError(f"{kind[:-1]} file not found: {value} (and {exc})") from None
