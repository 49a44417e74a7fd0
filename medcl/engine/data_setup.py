"""What a training run reads: its data, data facts, splits, per-stream samplers and validation volumes."""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

from medcl.config import Config
from medcl.data.dataset import DatasetInfo, load_dataset
from medcl.data.sampling import preprocess_volumes
from medcl.data.splits import Splits, make_splits
from medcl.data.transforms import resolve_modality, volume_transforms
from medcl.errors import ConfigError, DataError, MedclError
from medcl.methods import DataSpec
from medcl.runtime import distributed as dist
from medcl.tracking.lineage import case_files

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


def training_cases(method: Any, splits: Splits) -> dict[str, bool]:
    """Every case a training stream reads -> whether some stream reads its label."""
    cases: dict[str, bool] = {}
    for stream, with_label in method.streams.items():
        for case_id in stream_case_ids(stream, splits):
            cases[case_id] = cases.get(case_id, False) or with_label
    return cases


def dataset_inputs(info: DatasetInfo, splits: Splits, method: Any) -> list[tuple[str, list[Path], int]]:
    """``(context, files, cases)`` of what the run reads: the training streams (labels where a stream reads
    them) and the validation cases, for MLflow dataset inputs with a digest of those files."""
    train_cases = training_cases(method, splits)
    files = [f for i, lab in train_cases.items() for f in case_files([info.case(i)], with_labels=lab)]
    if (info.root / "dataset.json").is_file():  # the label names and channels the run trained with
        files.append(info.root / "dataset.json")
    inputs = [("training", files, len(train_cases))]
    if method.validates and splits.val:
        inputs.append(("validation", case_files(info.case(i) for i in splits.val), len(splits.val)))
    return inputs


def run_splits(cfg: Config, info: DatasetInfo, method: Any, extra: list[Path]) -> Splits:
    """The run's splits: ``data.splits``, every case (label-free pretraining) or 80/20; then ``data.labeled``
    and the ``--unlabeled`` folders applied."""
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
        splits = with_extra_unlabeled(splits, info, extra)
    return splits


def used_case_ids(method: Any, splits: Splits) -> list[str]:
    """Every case the run reads: its streams' cases, then the validation cases when it validates."""
    return list(dict.fromkeys([*training_cases(method, splits), *(splits.val if method.validates else [])]))


def build_samplers(
    cfg: Config, info: DatasetInfo, method: Any, splits: Splits, *, progress: bool
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Preprocess each stream's volumes once (cached) and build its sampler; the validation volumes too.

    Returns ``(samplers by stream, validation volumes)``; the validation volumes are loaded on rank 0 only.
    """
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
    return samplers, val_vols
