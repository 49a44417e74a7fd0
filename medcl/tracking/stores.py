"""Finding the MLflow store that holds a run or model, from any working folder, without creating one.

``medcl train`` prints ``models:/m-<id>`` and a run id; neither names the store that holds it. So that what
``train`` prints works as printed in ``medcl infer --model`` / ``medcl evaluate --model`` from another
folder, every store medcl writes to is remembered (its URI, one line) in ``stores.txt`` under medcl's state
folder: ``$MEDCL_STATE_DIR``, else ``$XDG_STATE_HOME/medcl``, else ``~/.local/state/medcl``. A lookup tries
the store the user named (``--tracking-uri``, ``MLFLOW_TRACKING_URI``, or the ``--runs`` folder), then the
remembered stores, newest first. Run ids and logged-model ids are UUIDs, so the first store that holds one
is the right one.

A lookup only reads: a SQLite store whose file does not exist is skipped, never created, and MLflow's own
``models:/`` resolution (which opens the *default* tracking store, i.e. a new ``./mlflow.db`` in MLflow 3)
is bypassed by asking the store's client for the model's artifact location directly.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from medcl.defaults import DEFAULT_RUNS
from medcl.errors import MedclError

log = logging.getLogger(__name__)

MAX_REMEMBERED = 50  # older stores drop off the list; a lookup opens each listed store that still exists
_LOGGED_MODEL = re.compile(r"^models:/(m-[0-9a-f]{32})/?(.*)$")


def state_dir() -> Path:
    """medcl's per-user state folder (not created here)."""
    if os.environ.get("MEDCL_STATE_DIR"):
        return Path(os.environ["MEDCL_STATE_DIR"]).expanduser()
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base).expanduser() / "medcl"


def _index() -> Path:
    return state_dir() / "stores.txt"


def _exists(uri: str) -> bool:
    """Whether a store can be opened without creating it (non-SQLite stores are assumed to exist)."""
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///")).is_file()
    return True


def known_stores() -> list[str]:
    """Remembered store URIs, newest first, that still exist."""
    try:
        lines = _index().read_text().splitlines()
    except OSError:
        return []
    seen: list[str] = []
    for uri in reversed(lines):
        uri = uri.strip()
        if uri and uri not in seen and _exists(uri):
            seen.append(uri)
    return seen


def remember_store(uri: str) -> None:
    """Add ``uri`` to the remembered stores (newest last); never fails a run over it."""
    if uri.startswith("file:") or uri.startswith("databricks"):
        return  # file stores are deprecated in MLflow 3; Databricks workspaces are not medcl's to list
    try:
        index = _index()
        old = [u for u in reversed(known_stores()) if u != uri]
        index.parent.mkdir(parents=True, exist_ok=True)
        tmp = index.with_name(f".stores.{os.getpid()}.tmp")
        tmp.write_text("".join(f"{u}\n" for u in [*old[-(MAX_REMEMBERED - 1) :], uri]))
        os.replace(tmp, index)
    except OSError as exc:
        log.debug("could not remember the MLflow store %s: %s", uri, exc)


def candidate_stores(tracking_uri: str | None, runs: str | Path | None) -> tuple[list[str], list[str]]:
    """Stores to search for a run or model, and a note for each named store that does not exist.

    Args:
        tracking_uri: ``--tracking-uri``; else ``MLFLOW_TRACKING_URI``; else the SQLite store of ``runs``.
        runs: the ``--runs`` folder (default ``medcl_runs`` in the working folder).
    """
    from medcl.tracking.mlflow_tracking import resolve_store

    first: list[str] = []
    missing: list[str] = []
    try:
        first.append(resolve_store(tracking_uri, runs or DEFAULT_RUNS, create=False)[0])
    except MedclError as exc:
        missing.append(str(exc))
    stores = first + [u for u in known_stores() if u not in first]
    return stores, missing


def _client(uri: str):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def _not_found(exc: Exception) -> bool:
    code = getattr(exc, "error_code", "")
    return code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE") or "not found" in str(exc).lower()


def _model_location(client, source: str) -> str:
    """Artifact location of a ``models:/`` URI in the store of ``client`` (raises when it is not there)."""
    match = _LOGGED_MODEL.match(source)
    if match:
        location = client.get_logged_model(match.group(1)).artifact_location
        return location.rstrip("/") + (f"/{match.group(2)}" if match.group(2) else "")
    rest = source.removeprefix("models:/").strip("/")
    if "@" in rest:
        name, alias = rest.split("@", 1)
        version = client.get_model_version_by_alias(name, alias)
    elif "/" in rest:
        name, which = rest.split("/", 1)
        if which.isdigit():
            version = client.get_model_version(name, which)
        else:  # a stage or "latest"
            versions = client.get_latest_versions(name, None if which == "latest" else [which])
            if not versions:
                raise MedclError(f"registered model {name!r} has no version in stage {which!r}")
            version = versions[0]
    else:
        raise MedclError(
            f"{source} is not models:/m-<id>, models:/<name>@<alias> or models:/<name>/<version>"
        )
    if getattr(version, "model_id", None):
        return client.get_logged_model(version.model_id).artifact_location
    return client.get_model_version_download_uri(version.name, version.version)


def _run_artifact(client, source: str) -> tuple[str, str]:
    """``(run_id, artifact path)`` of a run id or ``runs:/`` URI; raises when the run is not in the store."""
    if source.startswith("runs:/"):
        run_id, _, path = source.removeprefix("runs:/").partition("/")
    else:
        run_id, path = source, ""
    client.get_run(run_id)
    path = path.strip("/")
    if not path:  # a run id or runs:/<id>: the run's own checkpoint, whatever the method logged
        from medcl.tracking.mlflow_tracking import CHECKPOINT_NAMES

        logged = {Path(a.path).name for a in client.list_artifacts(run_id, "checkpoints")}
        name = next((n for n in CHECKPOINT_NAMES if n in logged), None)
        if name is None:
            raise MedclError(
                f"run {run_id} has logged no checkpoint (checkpoints/best.pt or last.pt): it is still running "
                "or it failed; give its run folder (<output>/runs/<run name>) instead"
            )
        path = f"checkpoints/{name}"
    return run_id, path


def locate(source: str, tracking_uri: str | None, runs: str | Path | None) -> tuple[Path, str]:
    """Download the artifacts a run id, ``runs:/`` or ``models:/`` URI names; return them and their store.

    Returns:
        The local path (a file for runs, the model folder for ``models:/``) and the URI of the store that
        held it.

    Raises:
        MedclError: No store holds ``source``, or ``source`` is not an id or URI.
    """
    import mlflow

    stores, missing = candidate_stores(tracking_uri, runs)
    errors: list[str] = []
    for uri in stores:
        try:
            client = _client(uri)
            if source.startswith("models:/"):
                location = _model_location(client, source)
                local = mlflow.artifacts.download_artifacts(artifact_uri=location, tracking_uri=uri)
            else:
                run_id, path = _run_artifact(client, source)
                local = client.download_artifacts(run_id, path)
            return Path(local), uri
        except MedclError:
            raise
        except Exception as exc:
            if not _not_found(exc):
                errors.append(f"{uri}: {str(exc).strip().splitlines()[0] if str(exc).strip() else exc}")
    looked = [*missing, *(f"not in {u}" for u in stores)]
    hint = "" if len(source) == 32 or "/" in source else " (not a file, folder, run id or MLflow URI)"
    detail = "; ".join(errors) if errors else "; ".join(looked) or "no MLflow store found"
    raise MedclError(
        f"cannot find model {source!r}{hint}: {detail} (give the folder training used as --runs, or "
        "--tracking-uri)"
    )


def find_checkpoint(
    source: str, tracking_uri: str | None, runs: str | Path | None
) -> tuple[Path, str | None]:
    """A local medcl checkpoint for ``source`` and the store its run belongs to (None if there is none).

    ``source`` is a checkpoint file, a run folder, a run id, ``runs:/`` or ``models:/`` URI (see
    :func:`medcl.tracking.mlflow_tracking.resolve_checkpoint`). For a file or run folder the store is the
    ``mlflow.db`` of the runs folder it lies in (``<runs>/runs/<name>/checkpoints/best.pt``), if any.

    Raises:
        MedclError: ``source`` is none of these, or names a run or model no store holds.
    """
    from medcl.tracking.mlflow_tracking import pick_checkpoint

    path = Path(source).expanduser()
    if path.is_dir():
        path = pick_checkpoint(path)
    if path.is_file():
        for parent in list(path.resolve().parents)[:4]:
            if (parent / "mlflow.db").is_file():
                return path, f"sqlite:///{parent / 'mlflow.db'}"
        return path, None
    local, uri = locate(source, tracking_uri, runs)
    if source.startswith("models:/"):
        found = sorted(local.rglob("model.pt")) if local.is_dir() else [local]
        if not found:
            raise MedclError(
                f"{source} holds no medcl inference checkpoint (artifacts/model.pt, or extra_files/model.pt in older models)"
            )
        return found[0], uri
    return (pick_checkpoint(local) if local.is_dir() else local), uri  # runs:/<id>/checkpoints: a folder


def results_store(
    tracking_uri: str | None, runs: str | Path | None, model_store: str | None
) -> tuple[tuple[str, str | None] | None, Path]:
    """The store that gets a run about a model (an evaluation, a suggestion), and the runs folder for its files.

    A store the user named (``tracking_uri``, ``MLFLOW_TRACKING_URI``, ``runs``) may be created; otherwise the
    run goes to the store the model came from, or to an existing ``./medcl_runs`` store, never to a new one: a
    command run from another folder must not leave a stray store behind.

    Args:
        tracking_uri: ``--tracking-uri``, or None.
        runs: The ``--runs`` folder the user gave, or None.
        model_store: The tracking URI of the store holding the model (:func:`find_checkpoint`), or None.

    Returns:
        ``((tracking URI, artifact root or None) or None when nothing is to be logged, runs folder)``; the runs
        folder is the SQLite store's folder when the store is one.
    """
    from medcl.tracking.mlflow_tracking import resolve_store

    named = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or runs
    folder = Path(runs or DEFAULT_RUNS).expanduser()
    root: str | None
    if named:
        uri, root = resolve_store(tracking_uri, folder)
    elif model_store:
        uri, root = model_store, None
        if uri.startswith("sqlite:///"):
            db = Path(uri.removeprefix("sqlite:///"))
            folder, root = db.parent, str(db.parent / "mlartifacts")
    elif (folder / "mlflow.db").is_file():
        uri, root = resolve_store(None, folder, create=False)
    else:
        return None, folder
    if uri.startswith("sqlite:///"):
        folder = Path(uri.removeprefix("sqlite:///")).parent
    return (uri, root), folder
