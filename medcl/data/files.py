"""Whether the files of a case can be opened, and why not: missing, a symbolic link loop, no permission.

Only metadata is read (one ``stat`` per file), so datasets of a few hundred cases are checked in
milliseconds; reading the voxels is :mod:`medcl.data.volume`'s job.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from medcl.data.cases import Case
from medcl.errors import DataError

__all__ = ["unreadable_reason"]


def unreadable_reason(path: Path) -> str | None:
    """Why a file cannot be opened, or ``None`` when it can (only its metadata is read, not its content).

    Args:
        path: An image or label file.

    Returns:
        ``"symbolic link loop (a.nii.gz -> b.nii.gz -> a.nii.gz)"``, ``"file does not exist"``, the system's
        reason (``"Permission denied"``), or ``None``.
    """
    try:
        os.stat(path)
    except OSError as err:
        if err.errno == errno.ELOOP:
            chain = _link_chain(Path(path))
            return f"symbolic link loop ({chain})" if chain else "symbolic link loop"
        if isinstance(err, FileNotFoundError):
            return "file does not exist"
        return err.strerror or str(err)
    return None


def _link_chain(path: Path, limit: int = 8) -> str:
    """The links followed from ``path`` until one repeats (``a.nii.gz -> b.nii.gz -> a.nii.gz``); empty if
    ``path`` itself is no link (the loop is in one of its folders)."""
    chain = [path]
    while len(chain) <= limit:
        try:
            target = Path(os.readlink(chain[-1]))
        except OSError:
            break
        chain.append(Path(os.path.normpath(chain[-1].parent / target)))
        if chain[-1] in chain[:-1]:
            break
    if len(chain) == 1:
        return ""
    return " -> ".join(p.name if p.parent == path.parent else str(p) for p in chain)


def _missing_reason(path: Path) -> str:
    """``"does not exist"`` or, for a path that exists but cannot be followed, why (a symbolic link loop)."""
    reason = unreadable_reason(path)
    if reason is None or reason == "file does not exist":
        return "does not exist"
    return f"cannot be opened: {reason}"


def _check_openable(cases: list[Case]) -> None:
    """Raise for the first image or label file that cannot be opened (one ``stat`` per file, no read)."""
    for case in cases:
        for path in (*case.images, *([case.label] if case.label is not None else [])):
            reason = unreadable_reason(path)
            if reason is not None:
                raise DataError(
                    f"File {path} of case {case.id!r} cannot be opened: {reason}; fix or remove it "
                    "(`medcl data check` lists every such file)."
                )
