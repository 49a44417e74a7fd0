"""Where a run starts from: a killed run's ``last.pt`` (``--resume``) or another run's weights (``--init``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from medcl.config import Config
from medcl.data.cases import DatasetInfo
from medcl.data.splits import Splits
from medcl.engine.data_setup import training_cases
from medcl.errors import ConfigError, MedclError
from medcl.methods import validate_config
from medcl.runtime import distributed as dist
from medcl.runtime.checkpoint import load_checkpoint
from medcl.tracking.mlflow_tracking import resolve_checkpoint

log = logging.getLogger(__name__)


def find_resume_checkpoint(resume: str, output: str | Path) -> Path:
    """``--resume`` value -> a ``last.pt``: a checkpoint file, a run folder, or ``auto`` (newest under output)."""
    if resume == "auto":
        candidates = sorted(Path(output).glob("runs/*/checkpoints/last.pt"), key=lambda p: p.stat().st_mtime)
        if not candidates:
            raise MedclError(
                f"--resume: no run with a last.pt checkpoint under {Path(output).resolve()}/runs"
            )
        return candidates[-1]
    path = Path(resume)
    if path.is_dir():
        path = path / "checkpoints" / "last.pt" if (path / "checkpoints").is_dir() else path / "last.pt"
    if not path.is_file():
        raise MedclError(f"--resume: checkpoint not found: {path}")
    return path


def check_init_preprocessing(init: dict[str, Any], source: str, cfg: Config, modality: str) -> None:
    """Fine-tuning must normalise intensities as the run it starts from did.

    The modality (CT HU window vs MRI z-score) is stored in every checkpoint (``data_spec.modality``); a
    different one means the pretrained filters saw another intensity scale. A different CT window or MRI
    percentile clip only warns: it shifts intensities, and can be deliberate.

    Raises:
        ConfigError: The checkpoint's modality differs from this run's.
    """
    theirs = (init.get("data_spec") or {}).get("modality")
    if theirs is None:
        return
    if theirs != modality:
        how = {"ct": "CT (HU window scaled to [0, 1])", "mri": "MRI (per-volume z-score)"}
        raise ConfigError(
            f"--init {source} was trained on {how.get(theirs, theirs)} images, but this run's data is "
            f"{how.get(modality, modality)} (data.modality {cfg.data.modality!r}"
            f"{', from dataset.json' if cfg.data.modality == 'auto' else ''}): the pretrained network would see "
            f"intensities on another scale. Fine-tune on {theirs.upper()} data, or pass --modality {theirs} if "
            "this data really is that modality"
        )
    data = (init.get("config") or {}).get("data") or {}
    key = "ct_window" if modality == "ct" else "percentiles"
    mine = list(getattr(cfg.data, key))
    if key in data and [float(v) for v in data[key]] != [float(v) for v in mine]:
        log.warning(
            "--init %s normalised intensities with data.%s=%s, this run with %s; pass --set data.%s=%s to "
            "preprocess as it did",
            source,
            key,
            list(data[key]),
            mine,
            key,
            list(data[key]),
        )


@dataclass
class InitSource:
    """What ``--init`` loaded: the MLflow run the weights came from, and the labels that shaped them.

    Attributes:
        run_id: The MLflow run id stored in the checkpoint, if any.
        label_cases: Dataset name -> ids of the cases whose labels trained those weights (the checkpoint's
            own ``--init`` chain included), see :func:`label_cases`; None for a checkpoint saved before medcl
            recorded it.
    """

    run_id: str | None = None
    label_cases: dict[str, list[str]] | None = field(default_factory=dict)


def init_weights(
    method: torch.nn.Module, source: str, cfg: Config, modality: str | None = None
) -> InitSource:
    """Copy every weight of a checkpoint whose name and shape match into ``method``.

    Args:
        method: The method of the new run.
        source: A checkpoint file, run folder, run id or MLflow URI (any method's run).
        cfg: The new run's config (store lookup, preprocessing check).
        modality: The new run's resolved modality; when given, the checkpoint must have been trained with
            the same one (:func:`check_init_preprocessing`).

    Returns the run the weights came from and the labels they were trained with.
    """
    loaded = load_checkpoint(resolve_checkpoint(source, cfg.tracking.uri, cfg.output))
    if modality is not None:
        check_init_preprocessing(loaded, source, cfg, modality)
    state, state_run_id = loaded["model"], loaded.get("mlflow_run_id")
    state = method.upgrade_state_dict(state) if hasattr(method, "upgrade_state_dict") else state
    own = method.state_dict()
    matched = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not matched:
        raise MedclError(
            f"--init {source}: no weight of that checkpoint matches this model (different architecture?)"
        )
    method.load_state_dict(matched, strict=False)
    log.info("initialised %d of %d tensors from %s", len(matched), len(own), source)
    return InitSource(state_run_id, loaded.get("label_cases"))


def label_cases(
    info: DatasetInfo, method: Any, splits: Splits, inherited: dict[str, list[str]] | None = None
) -> dict[str, list[str]]:
    """Dataset name -> the cases whose labels shape this run's weights, stored in its checkpoints.

    They are the cases of every stream that loads labels, plus what the weights it started from had seen
    (``inherited``, from ``--init`` or a resumed checkpoint): a pretraining that read labels (ACTION++ stage 2)
    passes them on to every run initialised from it.
    """
    merged = {name: set(ids) for name, ids in (inherited or {}).items()}
    merged.setdefault(info.name, set()).update(i for i, lab in training_cases(method, splits).items() if lab)
    return {name: sorted(ids) for name, ids in merged.items() if ids}


def check_init_labels(init: InitSource, source: str, info: DatasetInfo, splits: Splits, method: Any) -> str:
    """Warn when the ``--init`` weights were trained with labels this run withholds; return a summary tag.

    Cases this run treats as unlabeled, or does not list in its splits at all, mean it really starts from more
    labeled cases than its labeled set; validation (when the method validates) or test cases mean their
    scores are optimistic. Nothing is refused: continuing from a model trained on everything can be deliberate.
    Only cases of a dataset with this run's dataset name are compared. Validation labels that picked the
    ``--init`` run's best checkpoint are not counted. Warnings come from rank 0 only.

    Returns:
        The ``medcl.init_label_overlap`` tag value (``"unlabeled:2,val:1"``), or ``""`` when nothing overlaps
        or the checkpoint predates the lineage (saved without ``label_cases``).
    """
    if init.label_cases is None:
        log.info("--init %s: the checkpoint records no label lineage (older medcl); not checked", source)
        return ""
    seen = set(init.label_cases.get(info.name, ()))
    listed = {*splits.labeled, *splits.unlabeled, *splits.val, *splits.test}
    more = f"so the weights have seen more labeled cases than this run's labeled set ({len(splits.labeled)})"
    overlap = {
        "unlabeled": (seen & set(splits.unlabeled), f"this run treats as unlabeled, {more}"),
        "unlisted": (seen - listed, f"this run's splits do not list, {more}"),
        "val": (
            seen & set(splits.val) if method.validates else set(),
            "this run validates on: its validation scores and best checkpoint are optimistic",
        ),
        "test": (seen & set(splits.test), "this run holds out as test cases: scores on them are optimistic"),
    }
    found = {subset: sorted(ids) for subset, (ids, _) in overlap.items() if ids}
    if dist.is_main():
        for subset, ids in found.items():
            shown = ", ".join(ids[:5]) + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")
            log.warning(
                "--init %s was trained with the labels of %d case(s) (%s) that %s. Train the --init run with this "
                "run's --splits and --labeled to compare label budgets fairly",
                source,
                len(ids),
                shown,
                overlap[subset][1],
            )
    return ",".join(f"{subset}:{len(ids)}" for subset, ids in found.items())


def load_resume(resume: str, output: str | Path) -> tuple[Path, dict[str, Any], Config]:
    """The checkpoint ``--resume`` names, its state and its own config (the run continues as it started).

    Raises:
        MedclError: No such checkpoint, or the run already reached its ``train.steps``.
    """
    path = find_resume_checkpoint(resume, output)
    state = load_checkpoint(path)
    cfg = validate_config(state["config"], source=f"config stored in {path}")
    if int(state["step"]) >= cfg.train.steps:
        run_dir = path.parent.parent
        raise MedclError(
            f"run {run_dir} is finished ({state['step']} of {cfg.train.steps} steps): --resume only "
            f"continues a stopped run, and nothing was changed; to train further, start a new run with "
            f"--init {run_dir}"
        )
    print(f"resuming {path} at step {state['step']} of {cfg.train.steps}")
    return path, state, cfg
