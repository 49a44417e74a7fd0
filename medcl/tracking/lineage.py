"""Lineage of a run: which medcl made it, on which files, and which model an evaluation scored.

* :func:`code_tags`: the medcl version and, when medcl runs from a git checkout, its commit (and whether the
  checkout had uncommitted changes) as MLflow tags. Outside a checkout (an installed wheel) only the version.
* :func:`files_digest` / :func:`dataset_input`: the case files a run read, as an MLflow dataset input
  (``mlflow.log_input``) whose digest changes when a file is added, removed, renamed or rewritten. The digest
  hashes each file's path (relative to the dataset folder), its size and its first and last 64 KiB: cheap on
  any dataset (a compressed NIfTI ends with the CRC of its whole content), and unlike modification times it
  survives copying the dataset elsewhere.
* :func:`model_lineage`: the training run and MLflow logged model a ``--model`` value stands for, so an
  evaluation run can name them (tags), take the model as an input and attach its metrics to the model.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: Bytes read from each end of a file for the dataset digest.
EDGE_BYTES = 64 * 1024
#: Hex characters of a dataset digest (MLflow stores at most 36).
DIGEST_CHARS = 16


@functools.lru_cache(maxsize=1)
def git_commit() -> tuple[str, bool] | None:
    """``(commit, dirty)`` of the git checkout medcl is imported from, or None when it is not one.

    Only a checkout whose top folder holds this very package counts (not, say, a repository that happens to
    contain the virtual environment medcl is installed in). Git missing or failing gives None, never an error.
    """
    import medcl

    root = Path(medcl.__file__).resolve().parent.parent
    if not (root / ".git").exists():  # a folder in a clone, a file in a worktree
        return None
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if commit.returncode != 0:
            return None
        status = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        log.debug("no git commit for the run: %s", exc)
        return None
    return commit.stdout.strip(), bool(status.stdout.strip()) if status.returncode == 0 else False


def code_tags() -> dict[str, str]:
    """MLflow tags naming the code of a run: ``medcl.version``, and ``medcl.git_commit``, ``medcl.git_dirty``
    and MLflow's own ``mlflow.source.git.commit`` (shown as the run's source version) in a git checkout."""
    from medcl import __version__

    tags = {"medcl.version": __version__}
    found = git_commit()
    if found is not None:
        commit, dirty = found
        tags.update(
            {
                "medcl.git_commit": commit,
                "medcl.git_dirty": "true" if dirty else "false",
                "mlflow.source.git.commit": commit,
            }
        )
    return tags


def _file_entries(path: Path) -> list[Path]:
    """A file, or every file under a folder (a DICOM series), sorted."""
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file())
    return [path]


def _edges(path: Path, size: int) -> bytes:
    with open(path, "rb") as f:
        head = f.read(EDGE_BYTES)
        if size <= 2 * EDGE_BYTES:
            return head + f.read()
        f.seek(size - EDGE_BYTES)
        return head + f.read(EDGE_BYTES)


def files_digest(files: Iterable[Path], root: Path | None = None) -> str:
    """A digest of the files: their paths (relative to ``root`` when inside it), sizes and first/last 64 KiB.

    Args:
        files: Files or folders (every file under a folder counts); order and repeats do not matter.
        root: The dataset folder; paths inside it are hashed relative to it, so a moved copy digests alike.

    Raises:
        OSError: A file cannot be read.
    """
    paths = sorted({p for f in files for p in _file_entries(Path(f))})
    h = hashlib.sha256()
    for path in paths:
        try:
            name = path.relative_to(root).as_posix() if root is not None else path.name
        except ValueError:
            name = path.as_posix()
        size = path.stat().st_size
        h.update(f"{name}\0{size}\0".encode())
        h.update(hashlib.sha256(_edges(path, size)).digest())
    return h.hexdigest()[:DIGEST_CHARS]


def case_files(cases: Iterable[Any], with_labels: bool = True) -> list[Path]:
    """The image files (and label files, when ``with_labels``) of :class:`medcl.data.dataset.Case` objects."""
    files: list[Path] = []
    for case in cases:
        files.extend(Path(p) for p in case.images)
        if with_labels and case.label is not None:
            files.append(Path(case.label))
    return files


def dataset_input(name: str, root: Path, files: list[Path]) -> Any:
    """An MLflow dataset (metadata only: name, source folder, digest of ``files``) for ``mlflow.log_input``."""
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.data.sources import LocalArtifactDatasetSource

    return MetaDataset(
        source=LocalArtifactDatasetSource(str(root)), name=name, digest=files_digest(files, root)
    )


def log_dataset(
    mlflow: Any, name: str, root: Path, files: list[Path], context: str, cases: int
) -> Any | None:
    """Log ``files`` as a dataset input of the active run, with ``context`` (training, validation, ...).

    Returns the dataset (for ``log_metrics(..., dataset=)``), or None when the files could not be read; a
    lineage failure never stops a run.
    """
    try:
        dataset = dataset_input(name, root, files)
        mlflow.log_input(dataset, context=context, tags={"cases": str(cases), "files": str(len(files))})
        return dataset
    except Exception as exc:
        log.warning("the %s dataset was not logged as an MLflow input: %s", context, exc)
        return None


def model_lineage(source: str, checkpoint: Path, store: str | None) -> dict[str, str]:
    """The training run and logged model that ``--model SOURCE`` stands for, as far as ``store`` knows.

    Args:
        source: The ``--model`` value (checkpoint file, run folder, run id, ``runs:/`` or ``models:/`` URI).
        checkpoint: The local checkpoint it resolved to (its ``mlflow_run_id`` names the training run).
        store: The tracking URI of the store holding the run or model, if any.

    Returns:
        ``{"run_id": ..., "model_id": ...}`` with the keys that could be found (possibly none).
    """
    import re

    found: dict[str, str] = {}
    match = re.match(r"^models:/(m-[0-9a-f]{32})", source)
    if match:
        found["model_id"] = match.group(1)
    elif source.startswith("runs:/"):
        found["run_id"] = source.removeprefix("runs:/").split("/", 1)[0]
    elif re.fullmatch(r"[0-9a-f]{32}", source):
        found["run_id"] = source
    if "run_id" not in found and "model_id" not in found:
        try:
            from medcl.runtime.checkpoint import load_checkpoint

            run_id = load_checkpoint(checkpoint).get("mlflow_run_id")
            if run_id:
                found["run_id"] = str(run_id)
        except Exception as exc:  # lineage is best effort
            log.debug("no run id in %s: %s", checkpoint, exc)
    if store is None:
        return found
    try:
        import mlflow

        client = mlflow.MlflowClient(tracking_uri=store, registry_uri=store)
        if source.startswith("models:/") and "model_id" not in found:
            name, _, which = source.removeprefix("models:/").strip("/").partition("@")
            version = (
                client.get_model_version_by_alias(name, which)
                if which
                else client.get_model_version(*name.split("/", 1))
            )
            if getattr(version, "model_id", None):
                found["model_id"] = version.model_id
        if "model_id" in found and "run_id" not in found:
            run_id = client.get_logged_model(found["model_id"]).source_run_id
            if run_id:
                found["run_id"] = run_id
        if "run_id" in found and "model_id" not in found:
            outputs = client.get_run(found["run_id"]).outputs
            models = [m.model_id for m in getattr(outputs, "model_outputs", None) or []]
            if models:
                found["model_id"] = models[-1]
    except Exception as exc:
        log.debug("lineage of %s not found in %s: %s", source, store, exc)
    return found
