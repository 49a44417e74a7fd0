"""Checkpoints: atomic writes, safe loads, RNG state capture.

A checkpoint is a dict of tensors and plain Python values only, so it loads with
``torch.load(weights_only=True)``: loading never executes pickled code. Writes go to a temporary file in
the same folder (``.<name>.<random>.tmp``) followed by ``os.replace``, so a run killed while saving leaves the
previous checkpoint intact; the temporary files such a kill leaves behind are removed by the next save.
"""

from __future__ import annotations

import errno
import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medcl.errors import MedclError
from medcl.runtime.files import atomic_tempfile

FORMAT = "medcl-checkpoint/1"


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` to ``path`` atomically (temp file + fsync + rename).

    Temporary files of earlier writes to the same ``path`` that were killed (``kill -9``, power loss) before
    their rename are removed first, so they do not pile up and fill the disk.

    Args:
        state: Tensors and plain Python values only (see the module docstring).
        path: The checkpoint file; its folder is created if needed.

    Returns:
        ``path``.

    Raises:
        MedclError: The file cannot be written (disk full, no permission); ``path`` keeps its old content.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = atomic_tempfile(path, ".tmp")
        _remove_stale_temporaries(path, Path(tmp))
        with os.fdopen(fd, "wb") as fh:
            torch.save({"format": FORMAT, **state}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        os_error = _os_error(exc) if isinstance(exc, Exception) else None
        if os_error is None:  # not the file system's doing (an object that cannot be saved): a bug, keep it
            raise
        hint = "; free some disk space" if os_error.errno in (errno.ENOSPC, errno.EDQUOT) else ""
        raise MedclError(
            f"cannot write checkpoint {path}: {os_error.strerror or os_error}{hint} "
            "(the previous checkpoint at that path, if any, is unchanged)"
        ) from os_error
    return path


def _os_error(exc: BaseException) -> OSError | None:
    """The ``OSError`` behind ``exc``: torch reports a failed write as a RuntimeError raised during it."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _remove_stale_temporaries(path: Path, current: Path) -> None:
    """Delete ``.<name>.<random>.tmp`` files beside ``path`` older than ``current`` (the write under way)."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.[a-z0-9_]+\.tmp")
    try:
        started = current.stat().st_mtime_ns
        for entry in os.scandir(path.parent):
            if entry.name != current.name and pattern.fullmatch(entry.name):
                if entry.stat(follow_symlinks=False).st_mtime_ns < started:
                    Path(entry.path).unlink(missing_ok=True)
    except OSError:  # cleaning up is a courtesy; the write itself decides success
        pass


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a medcl checkpoint safely (``weights_only=True``) with clear errors.

    Args:
        path: A checkpoint written by :func:`save_checkpoint`.
        map_location: Device the tensors are loaded onto.

    Returns:
        The saved state, with its ``"format"`` key.

    Raises:
        MedclError: The file is missing, empty, damaged, or not a medcl checkpoint; one line naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise MedclError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise MedclError(
            f"cannot read checkpoint {path}: the file is empty (0 bytes); it is not a medcl checkpoint"
        )
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        # torch's own text runs over several lines and suggests weights_only=False, which would execute code
        # from the file: only the exception type is kept.
        raise MedclError(
            f"cannot read checkpoint {path}: it is not a medcl checkpoint or it is damaged "
            f"(truncated or overwritten; torch raised {type(exc).__name__})"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise MedclError(f"{path} is not a medcl checkpoint (expected format {FORMAT!r})")
    return state


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch RNG states as weights_only-loadable values."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
