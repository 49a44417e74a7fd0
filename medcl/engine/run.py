"""Assemble and run one training job from a config: data, splits, method, tracking, trainer.

:func:`train` is what ``medcl train`` calls and what workflows call programmatically.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
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
from medcl.engine.trainer import Trainer, TrainResult
from medcl.errors import ConfigError, DataError, MedclError
from medcl.methods import DataSpec, build_method
from medcl.runtime import distributed as dist
from medcl.runtime.checkpoint import load_checkpoint, save_checkpoint
from medcl.runtime.device import resolve_device
from medcl.tracking.lineage import case_files, code_tags
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


def load_training_data(cfg: Config) -> DatasetInfo:
    """The cases of a run: a dataset folder (``data.path``, plus ``data.unlabeled_dir``) or folders of
    unlabeled images (``data.images``, no ``dataset.json``).

    Raises:
        ConfigError: No data, both kinds given, or image folders without ``data.modality``.
        DataError: A folder is missing, empty or holds a file that cannot be opened.
    """
    if cfg.data.images:
        if cfg.data.path:
            raise ConfigError(
                "give either --data (a labeled dataset; add unlabeled folders with --unlabeled DIR) or --images "
                "(folders of unlabeled images only), not both"
            )
        if cfg.data.unlabeled_dir:
            raise ConfigError(
                "--unlabeled adds images to a labeled dataset (--data); with --images, give every folder as "
                "--images DIR"
            )
        if cfg.data.modality == "auto":
            raise ConfigError(
                "a folder of images does not say how it was acquired: pass --modality ct (HU window "
                f"{list(cfg.data.ct_window)} scaled to [0, 1]) or --modality mri (per-volume z-score) "
                "(config key data.modality)"
            )
        from medcl.data.image_folder import load_image_folders

        return load_image_folders(cfg.data.images, modality=cfg.data.modality)
    if not cfg.data.path:
        raise ConfigError(
            "no dataset given: pass --data DIR (or set data.path in the config), or --images DIR for "
            "label-free pretraining on a folder of images"
        )
    folder = Path(cfg.data.path).expanduser()
    if folder.is_dir() and not (folder / "dataset.json").is_file():
        raise DataError(
            f"--data {folder} has no dataset.json, so it is not a labeled dataset (MSD or nnU-Net v2 layout); "
            f"for a plain folder of unlabeled scans use --images {folder} --modality ct|mri (label-free "
            "pretraining), or --unlabeled beside a labeled --data"
        )
    return load_dataset(folder, unlabeled_dir=cfg.data.unlabeled_dir)


def with_extra_unlabeled(splits: Splits, info: DatasetInfo, folders: list[Path]) -> Splits:
    """``splits`` with every image of the ``--unlabeled`` folders in ``unlabeled``.

    A splits file written before the folders were added does not list their images; asking for them on the
    command line means they are used, unless the file already puts them in a subset.
    """
    roots = [Path(os.path.abspath(f)) for f in folders]  # as the folder scan built the paths: links kept
    listed = {*splits.labeled, *splits.unlabeled, *splits.val, *splits.test}
    added = [
        c.id
        for c in info.unlabeled
        if c.id not in listed and any(Path(os.path.abspath(c.images[0])).is_relative_to(r) for r in roots)
    ]
    if not added:
        return splits
    log.info("%d unlabeled image(s) added from %s", len(added), ", ".join(map(str, folders)))
    return dataclasses.replace(splits, unlabeled=[*splits.unlabeled, *added])


def check_image_only_method(method: Any, cfg: Config) -> None:
    """Image folders (``data.images``) have no labels: only methods that never read one can train on them."""
    labeled = [s for s, with_label in method.streams.items() if with_label]
    if labeled or method.validates:
        raise ConfigError(
            f"--images gives unlabeled images only, and method {cfg.method_name!r} trains or validates on "
            "labeled cases: give a labeled dataset with --data (extra unlabeled folders with --unlabeled DIR), "
            "or use a label-free pretraining config (pretrain_global, pretrain_local)"
        )


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


def init_weights(
    method: torch.nn.Module, source: str, cfg: Config, modality: str | None = None
) -> str | None:
    """Copy every weight of a checkpoint whose name and shape match into ``method``.

    Args:
        method: The method of the new run.
        source: A checkpoint file, run folder, run id or MLflow URI (any method's run).
        cfg: The new run's config (store lookup, preprocessing check).
        modality: The new run's resolved modality; when given, the checkpoint must have been trained with
            the same one (:func:`check_init_preprocessing`).

    Returns the MLflow run id stored in the checkpoint (the run it came from), if any.
    """
    loaded = load_checkpoint(resolve_checkpoint(source, cfg.tracking.uri, cfg.output))
    if modality is not None:
        check_init_preprocessing(loaded, source, cfg, modality)
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
    if not cfg.data.path and not cfg.data.images:
        raise ConfigError(
            "no dataset given: pass --data DIR (or set data.path in the config), or --images DIR for "
            "label-free pretraining on a folder of images"
        )
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
    extra = [extra] if isinstance(extra, str) else extra
    for read_only in [info.root, *info.image_folders, *(info.root / Path(d).expanduser() for d in extra)]:
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
    init_run = None
    if cfg.init and resume_state is None:
        init_run = init_weights(method, cfg.init, cfg, modality=spec.modality)
    if cfg.data.splits:
        splits = Splits.load(cfg.data.splits)
        splits.check_against(info)
    elif not method.validates:  # label-free pretraining: every case of the dataset
        splits = Splits(labeled=[c.id for c in info.cases], unlabeled=[c.id for c in info.unlabeled])
    else:
        splits = default_splits(info, cfg.train.seed)
    if cfg.data.labeled is not None:
        splits = splits.with_labeled(cfg.data.labeled, group_by=cfg.data.group_by)
    if extra:
        splits = with_extra_unlabeled(splits, info, [info.root / Path(d).expanduser() for d in extra])

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
        cases = [info.case(i) for i in ids]
        # Withheld labels of the unlabeled stream, for train/pseudo_dice only (no loss reads them).
        withheld = stream == "unlabeled" and cfg.train.pseudo_dice and all(c.label is not None for c in cases)
        with_label = with_label or withheld
        transform = volume_transforms(cfg.data, modality, with_label=with_label)
        volumes = preprocess_volumes(cases, transform, with_label=with_label, **common)
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
                **code_tags(),  # medcl version and git commit
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
                    "data.modality_resolved": spec.modality,  # what fine-tuning and inference must match
                    "init_from": (init_run or cfg.init) if cfg.init else "",
                }
            )
            tracker.log_params(params)
            tracker.log_dict(cfg.model_dump(mode="json"), "config/resolved_config.json")
            tracker.log_dict(splits.to_dict(), "config/splits.json")
            tracker.log_datasets(info.name, info.root, _dataset_inputs(info, splits, method))
    if dist.is_main() and resume_state is None:
        (run_dir / "config.json").write_text(json.dumps(cfg.model_dump(mode="json"), indent=1))
        splits.save(run_dir / "splits.json")

    status = "FAILED"
    try:
        batches = TrainBatches(samplers, seed=cfg.train.seed, rank=dist.rank())
        trainer = Trainer(cfg, method, spec, batches, val_vols, run_dir, tracker=tracker, progress=progress)
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
            _log_final(tracker, trainer, result, spec)
        finally:
            tracker.end("FINISHED")
    dist.cleanup()
    return result


def _dataset_inputs(info: DatasetInfo, splits: Splits, method: Any) -> list[tuple[str, list[Path], int]]:
    """``(context, files, cases)`` of what the run reads: the training streams (labels where a stream reads
    them) and the validation cases, for MLflow dataset inputs with a digest of those files."""
    train_cases: dict[str, bool] = {}
    for stream, with_label in method.streams.items():
        for case_id in stream_case_ids(stream, splits):
            train_cases[case_id] = train_cases.get(case_id, False) or with_label
    files = [f for i, lab in train_cases.items() for f in case_files([info.case(i)], with_labels=lab)]
    if (info.root / "dataset.json").is_file():  # the label names and channels the run trained with
        files.append(info.root / "dataset.json")
    inputs = [("training", files, len(train_cases))]
    if method.validates and splits.val:
        inputs.append(("validation", case_files(info.case(i) for i in splits.val), len(splits.val)))
    return inputs


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
        keys = ("step", "method", "config", "data_spec", "model", "medcl_version", "mlflow_run_id")
        slim = {k: state[k] for k in keys if k in state}  # the run id: models:/ URIs keep their lineage
        slim_path = save_checkpoint(slim, result.best_checkpoint.parent / "model.pt")
        network = _torchscript_network(slim_path)
        result.model_uri = tracker.log_model(slim_path, network)


def _torchscript_network(checkpoint: Path) -> Path | None:
    """``network.ts`` beside ``checkpoint``: the bare network for the logged model's second artifact.

    Scripted without the export round-trip check (``medcl export`` runs it) to keep the end of training
    short; a network that cannot be scripted is left out with a warning, the model is logged all the same.
    """
    from medcl.inference.export import to_torchscript
    from medcl.inference.predictor import Predictor

    try:
        predictor = Predictor.load(str(checkpoint), device="cpu", precision="fp32")
        return to_torchscript(predictor, checkpoint.with_name("network.ts"), check=False, trace=False)
    except Exception as exc:
        log.warning("the logged model has no TorchScript network (%s); its checkpoint is complete", exc)
        return None
