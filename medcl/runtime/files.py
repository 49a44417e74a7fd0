"""Atomic file writes: a temporary file beside the target, fsync, then ``os.replace``.

A process killed mid-write leaves the previous file intact (or none), never a truncated one. Checkpoints
(:mod:`medcl.runtime.checkpoint`), masks (:mod:`medcl.inference.outputs`) and every JSON/CSV medcl writes
(splits, reports, evaluation summaries, suggestion tables, workflow state) go through here.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["atomic_tempfile", "write_text_atomic"]


def atomic_tempfile(target: Path, suffix: str) -> tuple[int, str]:
    """An open temporary file beside ``target`` for write-then-rename, with the mode a plain ``open`` gives.

    ``tempfile.mkstemp`` creates files readable by their owner only (0600), which the rename would carry over
    to the target; the file is set to ``0666 & ~umask`` instead (0644 under the usual umask 022).

    Returns:
        ``(fd, path)`` as ``mkstemp`` returns them (name ``.<target name>.<random><suffix>``).
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
    umask = os.umask(0o022)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)
    return fd, tmp


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; its folder is created if needed.

    Raises:
        OSError: The file cannot be written; ``path`` keeps its old content and no temporary file is left.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = atomic_tempfile(path, ".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
