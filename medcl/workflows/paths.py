"""Paths in a workflow file: relative to the file, made absolute when the file is loaded.

Relative paths written in the file (``data``, stage ``config``, ``data``, ``splits``, ``input``, and
``init`` / ``model`` when they are files, also when they come through ``${vars.X}``) are relative to the
workflow file, so a workflow runs the same from any folder (:func:`rebase_paths`); a stage ``config`` may
also be the name of a shipped config (``hippocampus/demo``, see ``medcl config list``). ``output``
(``--runs``) and paths given with ``--set`` are relative to the working directory, like every medcl flag
(:func:`override_path`). A path that exists only relative to the working directory (the rule before) is
still taken, with a note.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any

_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


def absolute(value: str | None) -> str | None:
    """``value`` as an absolute path, unless it holds a stage reference."""
    if value is None or "${" in value:
        return value
    return str(Path(value).expanduser().resolve())


def absolute_if_file(value: str | None) -> str | None:
    """Make ``init`` / ``model`` absolute only when they are paths (not run ids or MLflow URIs)."""
    if value is None or "${" in value or ":/" in value or _RUN_ID.match(value):
        return value
    return absolute(value)


_PATH_KEYS = ("config", "data", "splits", "input", "init", "model")
_noted_cwd: set[str] = set()


def _is_path(value: Any) -> bool:
    """A relative path to rebase (not a reference, URI, run id, absolute or home path)."""
    if not isinstance(value, str) or not value or "${" in value or ":/" in value or _RUN_ID.match(value):
        return False
    return not (value.startswith("~") or Path(value).is_absolute())


def _relative_to(value: Any, base: Path, key: str) -> Any:
    """``value`` (a path, or a list of paths for ``input``) relative to ``base``, see the module docstring."""
    if isinstance(value, list):
        return [_relative_to(v, base, key) for v in value]
    if not _is_path(value):
        return value
    here = base / value
    if here.exists():
        return str(here)
    if Path(value).exists():  # written relative to the working directory, as before
        if value not in _noted_cwd:
            _noted_cwd.add(value)
            print(
                f"medcl: note: workflow path {value!r} is taken relative to the working directory; paths in a "
                f"workflow file are relative to the file ({base}), write {os.path.relpath(Path(value).resolve(), base)!r}",
                file=sys.stderr,
            )
        return str(Path(value).resolve())
    if key == "config":
        from medcl.shipped import shipped_dir

        shipped = shipped_dir("configs") / f"{value.removeprefix('configs/').removesuffix('.yaml')}.yaml"
        if shipped.is_file():  # a shipped config by name
            return str(shipped)
    return str(here)


def rebase_paths(raw: dict[str, Any], base: Path) -> dict[str, Any]:
    """Relative paths written in a workflow file, made relative to the file's folder ``base``."""
    if "data" in raw:
        raw["data"] = _relative_to(raw["data"], base, "data")
    for stage in raw.get("stages") or []:
        if isinstance(stage, dict):
            for key in _PATH_KEYS:
                if key in stage:
                    stage[key] = _relative_to(stage[key], base, key)
    return raw


def override_path(key: str, value: Any) -> Any:
    """A ``--set`` path value made absolute against the working directory (vars only when the path exists)."""
    parts = key.split(".")
    is_path = key == "data" or (parts[0] == "stages" and len(parts) == 3 and parts[2] in _PATH_KEYS)
    if parts[0] == "vars" and isinstance(value, str) and _is_path(value) and Path(value).exists():
        is_path = True
    if not is_path:
        return value
    if isinstance(value, list):
        return [str(Path(v).resolve()) if _is_path(v) else v for v in value]
    return str(Path(value).resolve()) if _is_path(value) else value
