"""Assemble and run one training job from a config: data, splits, method, tracking, trainer.

:func:`train` is what ``medcl train`` calls and what workflows call programmatically. The pieces it
assembles live beside it: what the run reads (:mod:`~medcl.engine.data_setup`), where it starts from
(:mod:`~medcl.engine.resume`), its folder and MLflow run (:mod:`~medcl.engine.run_folder`) and what it
leaves at the end (:mod:`~medcl.engine.final`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from monai.utils import set_determinism

from medcl.config import Config
from medcl.data.dataset import refuse_writing_inside
from medcl.data.sampling import TrainBatches
from medcl.data.validate import require_clean
from medcl.engine.data_setup import (
    build_samplers,
    check_image_only_method,
    data_spec,
    load_training_data,
    run_splits,
    used_case_ids,
)
from medcl.engine.final import log_final
from medcl.engine.resume import InitSource, check_init_labels, init_weights, label_cases, load_resume
from medcl.engine.run_folder import claim_run_dir, new_run_name, start_tracking
from medcl.engine.trainer import Trainer, TrainResult
from medcl.methods import build_method
from medcl.runtime import distributed as dist
from medcl.runtime.device import resolve_device
from medcl.tracking.mlflow_tracking import NullTracker

log = logging.getLogger(__name__)


def train(
    cfg: Config,
    *,
    resume: str | None = None,
    progress: bool = True,
    tags: dict[str, str] | None = None,
) -> TrainResult:
    """Run (or resume) one training job and return its result.

    Args:
        cfg: validated config with ``data.path`` set (``data.splits`` optional: 80/20 split by seed).
        resume: ``auto``, a run folder or a ``last.pt``; the checkpoint's own config is used.
        progress: tqdm progress bars.
        tags: extra MLflow run tags.
    """
    resume_path: Path | None = None
    resume_state: dict[str, Any] | None = None
    if resume:
        resume_path, resume_state, cfg = load_resume(resume, cfg.output)
    device = resolve_device(cfg.train.device)
    dist.init_from_env(device)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    set_determinism(seed=cfg.train.seed + dist.rank())
    if device.type == "cuda" and not cfg.train.deterministic:
        torch.backends.cudnn.deterministic = False
        torch.backends.cudnn.benchmark = True  # fixed patch sizes: the autotuned kernels are reused

    info = load_training_data(cfg)
    extra = cfg.data.unlabeled_dir or []
    extra = [info.root / Path(d).expanduser() for d in ([extra] if isinstance(extra, str) else extra)]
    for read_only in [info.root, *info.image_folders, *extra]:
        refuse_writing_inside(read_only, cfg.output, "output")  # runs, store and cache go under output
    spec = data_spec(cfg, info)
    method = build_method(cfg, spec)
    if info.image_folders:
        check_image_only_method(method, cfg)
    if extra and not ({"unlabeled", "images"} & set(method.streams)):
        log.warning(
            "method %s trains on labeled cases only: the --unlabeled images are not used", cfg.method_name
        )
    method.inference_network().check_spatial_shape(cfg.data.patch_size)  # e.g. SwinUNETR: multiples of 32
    splits = run_splits(cfg, info, method, extra)
    init = InitSource(label_cases=(resume_state or {}).get("label_cases", {}))
    if cfg.init and resume_state is None:
        init = init_weights(method, cfg.init, cfg, modality=spec.modality)
        overlap = check_init_labels(init, cfg.init, info, splits, method)
        tags = {**(tags or {}), **({"medcl.init_label_overlap": overlap} if overlap else {})}
    # Every case this run reads passes the checks of `medcl data check` first (on every rank, so all stop).
    require_clean(
        info, [info.case(i) for i in used_case_ids(method, splits)], progress=progress and dist.is_main()
    )
    samplers, val_vols = build_samplers(cfg, info, method, splits, progress=progress)

    # Run folder and tracking (rank 0 only); the run name is broadcast so all ranks agree.
    runs = Path(cfg.output).resolve() / "runs"
    if resume_path is not None:
        run_dir = resume_path.parent.parent
    else:
        claimed = None
        if dist.is_main():
            claimed = claim_run_dir(runs, new_run_name(cfg, info), explicit=bool(cfg.tracking.run_name)).name
        run_dir = runs / dist.broadcast_object(claimed)  # every rank uses the folder rank 0 claimed
    tracker: Any = (
        start_tracking(
            cfg,
            run_dir,
            info,
            splits,
            method,
            spec,
            resume_state=resume_state,
            init_run=init.run_id,
            tags=tags,
        )
        if dist.is_main()
        else NullTracker()
    )
    if dist.is_main() and resume_state is None:
        (run_dir / "config.json").write_text(json.dumps(cfg.model_dump(mode="json"), indent=1))
        splits.save(run_dir / "splits.json")

    status = "FAILED"
    try:
        batches = TrainBatches(samplers, seed=cfg.train.seed, rank=dist.rank())
        lineage = label_cases(info, method, splits, init.label_cases)
        trainer = Trainer(
            cfg,
            method,
            spec,
            batches,
            val_vols,
            run_dir,
            tracker=tracker,
            progress=progress,
            label_cases=lineage,
        )
        # What "auto" chose here, and the schedule's step counts in steps (fractions of train.steps resolved).
        tracker.log_params({"train.precision_resolved": trainer.precision.name, **trainer.schedule_params})
        if resume_path is not None:
            trainer.load(resume_path)
        result = trainer.fit()
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        if status != "FINISHED":
            tracker.end(status)
            dist.cleanup()
    if dist.is_main():
        try:
            log_final(tracker, trainer, result, spec)
        finally:
            tracker.end("FINISHED")
    dist.cleanup()
    return result
