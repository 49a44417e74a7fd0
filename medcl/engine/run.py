"""Assemble and run one training job from a config: data, splits, method, tracking, trainer.

:func:`train` is what ``medcl train`` calls and what workflows call programmatically.
"""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path
from typing import Any

import torch
from monai.utils import set_determinism

from medcl.config import Config, build_config, flatten
from medcl.data.dataset import DatasetInfo, load_dataset, refuse_writing_inside
from medcl.data.sampling import TrainBatches, preprocess_volumes
from medcl.data.splits import Splits, make_splits
from medcl.data.transforms import resolve_modality, volume_transforms
from medcl.data.validate import require_clean
from medcl.engine import distributed as dist
from medcl.engine.checkpoint import load_checkpoint, save_checkpoint
from medcl.engine.trainer import Trainer, TrainResult, resolve_device
from medcl.errors import ConfigError, MedclError
from medcl.methods import DataSpec, build_method
from medcl.tracking.mlflow_tracking import MlflowTracker, NullTracker, resolve_checkpoint, resolve_store

log = logging.getLogger(__name__)


def data_spec(cfg: Config, info: DatasetInfo) -> DataSpec:
    """Channels, classes and patch size of a run."""
    first = info.cases[0] if info.cases else info.unlabeled[0]
    return DataSpec(
        in_channels=len(first.images),
        num_classes=info.num_classes,
        class_names=tuple(info.class_names),
        spatial_dims=cfg.data.spatial_dims,
        patch_size=tuple(cfg.data.patch_size),
        modality=resolve_modality(cfg.data, info.modality),
    )


def default_splits(info: DatasetInfo, seed: int) -> Splits:
    """80% labeled / 20% validation of the labeled cases when the user gave no splits file."""
    n = len(info.cases)
    if n < 2:
        raise MedclError(
            f"{info.root} has {n} labeled case(s); training needs at least 2 (one for validation)"
        )
    val = max(1, round(0.2 * n))
    return make_splits(info, labeled=n - val, val=val, seed=seed)


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


def init_weights(method: torch.nn.Module, source: str, cfg: Config) -> str | None:
    """Copy every weight of a checkpoint whose name and shape match into ``method``.

    Returns the MLflow run id stored in the checkpoint (the run it came from), if any.
    """
    loaded = load_checkpoint(resolve_checkpoint(source, cfg.tracking.uri, cfg.output))
    state, state_run_id = loaded["model"], loaded.get("mlflow_run_id")
    own = method.state_dict()
    matched = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not matched:
        raise MedclError(
            f"--init {source}: no weight of that checkpoint matches this model (different architecture?)"
        )
    method.load_state_dict(matched, strict=False)
    log.info("initialised %d of %d tensors from %s", len(matched), len(own), source)
    return state_run_id


def stream_case_ids(stream: str, splits: Splits) -> list[str]:
    """Case ids feeding a stream: ``labeled`` and ``unlabeled`` from their subsets; ``images`` (label-free
    pretraining) from every training case, labeled or not; validation and test cases never train."""
    if stream == "labeled":
        return list(splits.labeled)
    if stream == "unlabeled":
        return list(splits.unlabeled)
    if stream == "images":
        return [*splits.labeled, *splits.unlabeled]
    raise ValueError(f"unknown data stream {stream!r}; known: labeled, unlabeled, images")


def claim_run_dir(runs: Path, name: str, *, explicit: bool) -> Path:
    """Create ``<runs>/<name>/checkpoints`` atomically and return the run folder: one folder, one run.

    The ``checkpoints`` folder is made with an exclusive ``mkdir``, so of two runs started at once with the
    same name exactly one gets it. An explicit ``tracking.run_name`` that is taken is an error; a default
    (timestamped) name that collides gets a ``-2``, ``-3``, ... suffix.

    Raises:
        MedclError: ``explicit`` and the folder already belongs to a run.
    """
    for attempt in range(1, 1000):
        run_dir = runs / (name if attempt == 1 else f"{name}-{attempt}")
        try:
            (run_dir / "checkpoints").mkdir(parents=True)
            return run_dir
        except FileExistsError:
            if explicit:
                raise MedclError(
                    f"run folder {run_dir} already has checkpoints (another run uses it); continue it with "
                    f"--resume {run_dir} or choose another tracking.run_name"
                ) from None
    raise MedclError(f"no free run folder name under {runs} for {name}")


def _new_run_name(cfg: Config, info: DatasetInfo) -> str:
    if cfg.tracking.run_name:
        return cfg.tracking.run_name
    # The dataset's own name may hold anything ('/', '..'): only letters, digits, '_' and '-' reach the path.
    dataset = re.sub(r"[^A-Za-z0-9_-]+", "_", info.name).strip("_") or "data"
    return f"{cfg.method_name}-{dataset}-{time.strftime('%Y%m%d-%H%M%S')}"


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
        resume_path = find_resume_checkpoint(resume, cfg.output)
        resume_state = load_checkpoint(resume_path)
        cfg = build_config(resume_state["config"], source=f"config stored in {resume_path}")
        if int(resume_state["step"]) >= cfg.train.steps:
            run_dir = resume_path.parent.parent
            raise MedclError(
                f"run {run_dir} is finished ({resume_state['step']} of {cfg.train.steps} steps): --resume only "
                f"continues a stopped run, and nothing was changed; to train further, start a new run with "
                f"--init {run_dir}"
            )
        print(f"resuming {resume_path} at step {resume_state['step']} of {cfg.train.steps}")
    if not cfg.data.path:
        raise ConfigError("no dataset given: pass --data DIR (or set data.path in the config)")
    device = resolve_device(cfg.train.device)
    dist.init_from_env(device)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    set_determinism(seed=cfg.train.seed + dist.rank())
    if device.type == "cuda" and not cfg.train.deterministic:
        torch.backends.cudnn.deterministic = False
        torch.backends.cudnn.benchmark = True  # fixed patch sizes: the autotuned kernels are reused

    info = load_dataset(cfg.data.path, unlabeled_dir=cfg.data.unlabeled_dir)
    for read_only in [info.root, *([cfg.data.unlabeled_dir] if cfg.data.unlabeled_dir else [])]:
        refuse_writing_inside(read_only, cfg.output, "output")  # runs, store and cache go under output
    spec = data_spec(cfg, info)
    method = build_method(cfg, spec)
    method.inference_network().check_spatial_shape(cfg.data.patch_size)  # e.g. SwinUNETR: multiples of 32
    init_run = None
    if cfg.init and resume_state is None:
        init_run = init_weights(method, cfg.init, cfg)
    if cfg.data.splits:
        splits = Splits.load(cfg.data.splits)
        splits.check_against(info)
    elif not method.validates:  # label-free pretraining: every case of the dataset
        splits = Splits(labeled=[c.id for c in info.cases], unlabeled=[c.id for c in info.unlabeled])
    else:
        splits = default_splits(info, cfg.train.seed)
    if cfg.data.labeled is not None:
        splits = splits.with_labeled(cfg.data.labeled, group_by=cfg.data.group_by)

    # Every case this run reads passes the checks of `medcl data check` first (on every rank, so all stop).
    used = dict.fromkeys(
        [
            *(i for s in method.streams for i in stream_case_ids(s, splits)),
            *(splits.val if method.validates else []),
        ]
    )
    require_clean(info, [info.case(i) for i in used], progress=progress and dist.is_main())

    # Data: preprocess once, then sample slices/patches per step.
    modality = resolve_modality(cfg.data, info.modality)
    cache_dir = cfg.data.cache_dir or str(Path(cfg.output).resolve() / "cache")
    common = dict(cache=cfg.data.cache, cache_dir=cache_dir, progress=progress and dist.is_main())
    samplers = {}
    for index, (stream, with_label) in enumerate(method.streams.items()):
        ids = stream_case_ids(stream, splits)
        if not ids:
            if stream == "labeled":
                raise MedclError(f"the splits file {cfg.data.splits} has no labeled cases to train on")
            log.warning("no cases for the %s stream in the splits; training without it", stream)
            continue
        transform = volume_transforms(cfg.data, modality, with_label=with_label)
        volumes = preprocess_volumes([info.case(i) for i in ids], transform, with_label=with_label, **common)
        sampler = method.build_sampler(stream, volumes, stream_index=index)
        if sampler is not None:
            samplers[stream] = sampler
    val_vols: list[dict[str, Any]] = []
    if dist.is_main() and splits.val and method.validates:
        val_cases = [info.case(i) for i in splits.val]
        val_vols = preprocess_volumes(
            val_cases, volume_transforms(cfg.data, modality, with_label=True), with_label=True, **common
        )

    # Run folder and tracking (rank 0 only); the run name is broadcast so all ranks agree.
    runs = Path(cfg.output).resolve() / "runs"
    if resume_path is not None:
        run_dir = resume_path.parent.parent
    else:
        claimed = None
        if dist.is_main():
            claimed = claim_run_dir(runs, _new_run_name(cfg, info), explicit=bool(cfg.tracking.run_name)).name
        run_dir = runs / dist.broadcast_object(claimed)  # every rank uses the folder rank 0 claimed
    tracker: Any = NullTracker()
    if dist.is_main() and cfg.tracking.enabled:
        uri, artifact_root = resolve_store(cfg.tracking.uri, cfg.output)
        print(f"MLflow tracking store: {uri}")
        tracker = MlflowTracker(uri, artifact_root, cfg.tracking.experiment)
        tracker.start(
            run_name=run_dir.name,
            run_id=(resume_state or {}).get("mlflow_run_id"),
            tags={
                "medcl.method": cfg.method_name,
                "medcl.dataset": info.name,
                **({"medcl.init_from": init_run or cfg.init} if cfg.init else {}),
                **(tags or {}),
            },
            system_metrics=cfg.tracking.system_metrics,
        )
        if resume_state is None:
            params = flatten(cfg.model_dump(mode="json"))
            params.update(
                {
                    "data.dataset": info.name,
                    "data.n_labeled": len(splits.labeled),
                    "data.n_unlabeled": len(splits.unlabeled),
                    "data.n_val": len(splits.val),
                    "data.world_size": dist.world_size(),
                    "init_from": (init_run or cfg.init) if cfg.init else "",
                }
            )
            tracker.log_params(params)
            tracker.log_dict(cfg.model_dump(mode="json"), "config/resolved_config.json")
            tracker.log_dict(splits.to_dict(), "config/splits.json")
    if dist.is_main() and resume_state is None:
        (run_dir / "config.json").write_text(json.dumps(cfg.model_dump(mode="json"), indent=1))
        splits.save(run_dir / "splits.json")

    status = "FAILED"
    try:
        batches = TrainBatches(samplers, seed=cfg.train.seed, rank=dist.rank())
        trainer = Trainer(cfg, method, spec, batches, val_vols, run_dir, tracker=tracker, progress=progress)
        tracker.log_params({"train.precision_resolved": trainer.precision.name})  # what "auto" chose here
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
            _log_final(tracker, trainer, result, spec)
        finally:
            tracker.end("FINISHED")
    dist.cleanup()
    return result


def _log_final(tracker: Any, trainer: Trainer, result: TrainResult, spec: DataSpec) -> None:
    """Best checkpoint and the best network as an MLflow model."""
    if result.best_checkpoint is None:
        if result.last_checkpoint and result.last_checkpoint.exists():
            tracker.log_artifact(result.last_checkpoint, "checkpoints")
        return
    tracker.log_artifact(result.best_checkpoint, "checkpoints")
    tracker.log_dict(
        {
            "best_step": result.best_step,
            "val_dice_mean": result.best_dice,
            "per_class": result.best_per_class,
        },
        "val/best_summary.json",
    )
    if trainer.cfg.tracking.log_model:
        state = load_checkpoint(result.best_checkpoint)
        trainer.method.load_state_dict(state["model"])
        # The inference checkpoint (weights + config + classes, no optimiser) travels inside the MLflow model,
        # so `models:/<name>@<alias>` carries its preprocessing.
        slim = {k: state[k] for k in ("step", "method", "config", "data_spec", "model", "medcl_version")}
        slim_path = save_checkpoint(slim, result.best_checkpoint.parent / "model.pt")
        net = trainer.method.inference_network().net.cpu().eval()
        example = torch.zeros(2, spec.in_channels, *spec.patch_size)
        result.model_uri = tracker.log_model(net, example, extra_files=[str(slim_path)])
