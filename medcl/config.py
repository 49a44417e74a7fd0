"""Typed, validated configuration.

A run is described by one YAML file (``configs/<dataset>/<method>.yaml``), dot-path overrides from the
command line (``--set optim.lr=3e-4``) and the common flags (``--steps``, ``--seed``, ...). A file may start
from another with ``extends: <config>`` and override its keys (:func:`read_config_chain`). Everything is
validated before any work starts: an unknown key fails with its dotted name and the keys allowed at that
level, an ill-typed value with the expected type and the value given.

This module is the schema only and imports no other layer of medcl. The ``method`` section is owned by the
method: ``method.name`` picks a class from :data:`medcl.methods.METHODS`, whose ``Params`` (a subclass of
:class:`MethodParams`) types the section. Reading files, applying ``--set`` overrides and that one validation
of the method section happen above the methods (:func:`medcl.methods.validate_config`,
:mod:`medcl.services.configs`), so a validated :class:`Config` holds the method's typed ``Params``.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidationError,
    field_validator,
    model_validator,
)

from medcl.defaults import DEFAULT_RUNS
from medcl.schedules import StepCount

#: Rule for names that become folder names (workflow, stage and run names): a letter, then letters, digits,
#: '_' or '-'. No '/', '..' or absolute path gets through, so the folder stays where medcl puts it.
NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_-]*$"


class Section(BaseModel):
    """Base for config sections: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class MethodParams(Section):
    """Base of a method's own config section (``method.*``): each method subclasses it with its keys."""

    name: str = Field(
        "supervised",
        description="The method (`medcl.methods.METHODS`); its own keys are in the tables below.",
    )


class AugmentConfig(Section):
    """Random augmentation of training samples (labeled and unlabeled streams alike)."""

    flip: bool = Field(True, description="Random flips along each in-plane axis (p=0.5 each).")
    rotate90: bool = Field(
        False, description="Random 90-degree rotations; off for anatomy with a fixed orientation."
    )
    rotate_deg: float = Field(
        15.0, ge=0, le=180, description="Max in-plane rotation in degrees (p=0.5); 0 disables."
    )
    scale: float = Field(0.1, ge=0, lt=1, description="Max relative zoom in/out (p=0.5); 0 disables.")
    intensity: float = Field(
        0.1, ge=0, description="Max random intensity scale and shift (p=0.5); 0 disables."
    )
    noise_std: float = Field(0.0, ge=0, description="Std of additive Gaussian noise (p=0.3); 0 disables.")


class DataConfig(Section):
    """Where the data is and how it is preprocessed and sampled."""

    path: str | None = Field(
        None, description="Dataset folder (MSD/nnU-Net layout); usually given with --data."
    )
    splits: str | None = Field(None, description="splits.json; usually given with --splits.")
    unlabeled_dir: str | list[str] | None = Field(
        None,
        description="Extra folder(s) of unlabeled images beside data.path (besides imagesTs/), searched "
        "recursively, DICOM series folders included; --unlabeled DIR. Used by the methods with an unlabeled "
        "stream (mcsc, actionpp, pretraining).",
    )
    images: list[str] | None = Field(
        None,
        description="Folders of unlabeled images with no dataset.json and no labels, searched recursively "
        "(DICOM series folders included), instead of data.path: label-free pretraining only (--images DIR); "
        "needs data.modality ct or mri.",
    )
    labeled: int | None = Field(
        None,
        ge=1,
        description="Keep the first N labeled groups of the splits, the rest unlabeled (--labeled).",
    )
    group_by: str | None = Field(
        None, description="Regex grouping case ids for data.labeled, e.g. 'patient\\d+' (both ACDC frames)."
    )
    spatial_dims: Literal[2, 3] = Field(2, description="2: train on slices of 3D volumes; 3: on 3D patches.")
    patch_size: list[int] = Field(
        [64, 64], description="Training patch (2 or 3 values) = sliding-window ROI."
    )
    slice_axis: Literal[0, 1, 2] = Field(2, description="Spatial axis slices are taken along (2D models).")
    orientation: str | None = Field(
        "RAS", description="Reorient volumes to these axis codes; null keeps the file's."
    )
    spacing: list[float] | None = Field(
        None, description="Resample to this voxel spacing (mm); null keeps it."
    )
    modality: Literal["auto", "mri", "ct"] = Field(
        "auto",
        description="Intensity normalisation (--modality): ct clips to data.ct_window and scales to [0, 1]; "
        "mri clips to data.percentiles and z-scores each volume; auto reads dataset.json (CT if a channel is "
        "named CT). Fine-tuning (--init) refuses a pretrained run of the other modality.",
    )
    percentiles: tuple[float, float] = Field(
        (0.5, 99.5), description="MRI: clip to these percentiles, then z-score."
    )
    ct_window: tuple[float, float] = Field((-175.0, 250.0), description="CT: HU window mapped to [0, 1].")
    cache: Literal["memory", "disk", "none"] = Field(
        "memory",
        description="Keep preprocessed volumes in RAM (fast), on disk (cache_dir), or reload each time.",
    )
    cache_dir: str | None = Field(None, description="Folder for cache: disk (default <output>/cache).")
    batch_size: int = Field(16, ge=1, description="Labeled samples per step.")
    unlabeled_batch_size: int = Field(
        16, ge=0, description="Unlabeled samples per step (semi-supervised methods)."
    )
    num_workers: int = Field(
        1, ge=0, description="Loader worker processes; 0 samples in the training process."
    )
    pos_fraction: float = Field(0.5, ge=0, le=1, description="3D: fraction of patches centred on foreground.")
    augment: AugmentConfig = Field(default_factory=AugmentConfig)

    @model_validator(mode="after")
    def _patch_matches_dims(self) -> DataConfig:
        if len(self.patch_size) != self.spatial_dims:
            raise ValueError(
                f"data.patch_size has {len(self.patch_size)} values but data.spatial_dims is {self.spatial_dims}"
            )
        if any(p < 1 for p in self.patch_size):
            raise ValueError(f"data.patch_size must be positive, got {self.patch_size}")
        if self.spacing is not None and len(self.spacing) != 3:
            raise ValueError(f"data.spacing needs 3 values (mm) for 3D volumes, got {self.spacing}")
        if self.images is not None and not self.images:
            raise ValueError("data.images is an empty list; give at least one folder (--images DIR) or null")
        return self


class ModelConfig(Section):
    """Network architecture; passed to :func:`medcl.models.networks.build_network`."""

    name: Literal["basicunet", "unet", "swinunetr"] = Field("basicunet", description="CNN or Transformer.")
    features: list[int] = Field(
        [32, 32, 64, 128, 256, 32], description="BasicUNet features (6); UNet uses 5."
    )
    strides: list[int] | None = Field(None, description="UNet strides; default 2 per level.")
    num_res_units: int = Field(2, ge=0, description="UNet residual units per block.")
    norm: Literal["instance", "batch"] = Field("instance", description="Normalisation layer.")
    act: Literal["leakyrelu", "relu", "prelu", "gelu"] = Field(
        "leakyrelu", description="Activation (SwinUNETR supports leakyrelu only)."
    )
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout probability in the network.")
    feature_size: int = Field(24, ge=12, description="SwinUNETR embedding size (divisible by 12).")
    depths: list[int] = Field([2, 2, 2, 2], description="SwinUNETR blocks per stage.")
    num_heads: list[int] = Field([3, 6, 12, 24], description="SwinUNETR attention heads per stage.")


class OptimConfig(Section):
    """Optimiser and learning-rate schedule."""

    name: Literal["adamw", "adam", "sgd"] = Field("adamw", description="Optimiser.")
    lr: float = Field(1e-3, gt=0, description="Peak learning rate; lower it if the loss diverges.")
    weight_decay: float = Field(1e-4, ge=0, description="Weight decay.")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum.")
    nesterov: bool = Field(True, description="SGD Nesterov momentum.")
    schedule: Literal["poly", "cosine", "constant"] = Field("poly", description="LR decay over train.steps.")
    poly_power: float = Field(0.9, gt=0, description="Exponent of the poly schedule.")
    warmup_steps: StepCount = Field(
        0,
        description="Linear LR warm-up before the schedule: an integer is steps, a decimal in [0, 1] a fraction "
        "of train.steps (0.05 = 5%, scales with --steps); 0: none.",
    )
    grad_clip: float | None = Field(12.0, gt=0, description="Clip the global gradient norm; null disables.")


class TrainConfig(Section):
    """Length of the run, checkpointing and hardware."""

    steps: int = Field(2000, ge=1, description="Optimiser steps in total (a resumed run continues to this).")
    seed: int = Field(0, ge=0, description="Seed for sampling, augmentation and initialisation.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto picks CUDA when available.")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="Network arithmetic: auto = bf16 autocast on CPUs with native bf16 and on bf16 GPUs, fp16 "
        "(+ gradient scaling) on older GPUs, fp32 otherwise; losses are always float32. Also used by validation.",
    )
    amp: bool | None = Field(
        None, description="Deprecated: use train.precision (amp: false means precision: fp32)."
    )
    log_every: int = Field(10, ge=1, description="Log train/* metrics every N steps.")
    pseudo_dice: bool = Field(
        True,
        description="When every unlabeled training case has a label file (e.g. the labeled cases left over by "
        "a split), load those labels beside the images and log train/pseudo_dice, the Dice of the method's "
        "pseudo-labels against them. A diagnostic only: no loss ever reads them.",
    )
    checkpoint_every: int = Field(
        100, ge=1, description="Write last.pt every N steps (what --resume restarts from)."
    )
    threads: int | None = Field(None, ge=1, description="torch CPU threads; null keeps torch's default.")
    deterministic: bool = Field(
        True,
        description="Deterministic cuDNN kernels (reproducible GPU runs); false lets cuDNN pick the fastest.",
    )

    @model_validator(mode="before")
    @classmethod
    def _amp_to_precision(cls, data: Any) -> Any:
        # Configs and checkpoints written before train.precision existed say amp: true/false.
        if isinstance(data, dict) and data.get("amp") is False and data.get("precision", "auto") == "auto":
            data = {**data, "precision": "fp32"}
        return data


class ValConfig(Section):
    """Validation on whole 3D volumes of the val split."""

    every: int = Field(200, ge=1, description="Validate every N steps (and at the end).")
    max_cases: int | None = Field(None, ge=1, description="Validate on the first N val cases only (speed).")
    overlap: float = Field(0.5, ge=0, lt=1, description="Sliding-window overlap.")
    mode: Literal["gaussian", "constant"] = Field("gaussian", description="Sliding-window blending.")
    sw_batch_size: int = Field(32, ge=1, description="Windows per forward pass.")
    hd95: bool = Field(True, description="Compute HD95 (mm) per class; off saves time on big volumes.")
    overlays: int = Field(2, ge=0, description="Validation overlay images logged per validation.")


class TrackingConfig(Section):
    """MLflow tracking."""

    uri: str | None = Field(None, description="Tracking URI; default: sqlite store under the output folder.")
    experiment: str = Field("medcl", description="MLflow experiment name.")
    run_name: str | None = Field(None, description="Run name; default <method>-<dataset>-<time>.")
    enabled: bool = Field(True, description="false: no MLflow run (run folder and checkpoints only).")
    log_model: bool = Field(True, description="Log the best model as an MLflow model at the end.")
    system_metrics: bool = Field(False, description="Log CPU/GPU/memory usage every 10 s (system/*).")

    @field_validator("run_name")
    @classmethod
    def _run_name_is_a_folder_name(cls, value: str | None) -> str | None:
        # The run folder is <output>/runs/<run_name>: '../x' or '/x' would put it outside --output.
        if value is not None and re.fullmatch(NAME_PATTERN, value) is None:
            raise ValueError(
                "must start with a letter and hold only letters, digits, '_' and '-'; it names the run folder "
                "<output>/runs/<run_name>"
            )
        return value


class Config(Section):
    """A whole run."""

    method: SerializeAsAny[MethodParams] = Field(
        default_factory=MethodParams, description="The method's own section, typed by its Params."
    )
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    val: ValConfig = Field(default_factory=ValConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    output: str = Field(DEFAULT_RUNS, description="Folder for run folders, checkpoints and the MLflow store.")
    init: str | None = Field(None, description="Initialise weights from a checkpoint or MLflow run.")

    @property
    def method_name(self) -> str:
        return self.method.name


def format_validation_error(err: ValidationError, prefix: str, source: str) -> str:
    """Turn pydantic's error list into one readable message per key."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in (*([prefix] if prefix else []), *e["loc"]) if p != "__root__")
        if e["type"] == "extra_forbidden":
            parent = loc.rsplit(".", 1)[0] if "." in loc else ""
            allowed = _allowed_keys(parent)
            where = f" in '{parent}'" if parent else ""
            lines.append(
                f"unknown config key '{loc}'"
                + (f" (allowed{where}: {', '.join(allowed)})" if allowed else "")
            )
        else:
            msg = e["msg"].removeprefix("Value error, ")
            given = e.get("input")
            given_txt = "" if isinstance(given, dict) or given is None else f" (got {given!r})"
            lines.append(f"config key '{loc}': {msg}{given_txt}" if loc else msg)
    return f"invalid configuration{source}:\n  " + "\n  ".join(lines)


def _allowed_keys(dotted: str) -> list[str]:
    model: Any = Config
    for part in [p for p in dotted.split(".") if p]:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        model = field.annotation
    fields = getattr(model, "model_fields", None)
    return sorted(fields) if fields else []


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested dicts to dot keys (MLflow params): ``{"optim": {"lr": 1}}`` -> ``{"optim.lr": 1}``."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        full = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{full}."))
        else:
            out[full] = value
    return out


def describe(model: type[BaseModel] = Config, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, description) rows for every config key (docs/configuration.md's table: medcl.docs_gen)."""
    rows: list[tuple[str, str, str]] = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            rows.extend(describe(ann, f"{prefix}{name}."))
            continue
        default = field.get_default(call_default_factory=True)
        rows.append((f"{prefix}{name}", repr(default), field.description or ""))
    return rows
