"""The method interface: a small object that turns a batch into named losses.

The engine knows nothing about any method: it builds one from the registry, asks it for parameter groups,
calls it once per step and back-propagates ``out["loss"]``. Every other entry of the returned dict is logged
as ``train/loss_<name>`` (tensors) or ``train/<name>`` (floats, e.g. a temperature).
"""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from medcl.config import Config, DataConfig, MethodParams, ModelConfig, OptimConfig
from medcl.data.sampling import StepSampler
from medcl.data.transforms import batch_transforms, sample_transforms
from medcl.models.networks import SegNet, build_network
from medcl.schedules import ResolvedSteps, ScheduleParams, resolve_step_fields


def pseudo_label_dice(pseudo: torch.Tensor, label: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Mean foreground Dice of pseudo-labels against withheld labels, over one batch (``train/pseudo_dice``).

    Classes absent from both are left out of the mean; computed on the device, without a host sync.

    Args:
        pseudo: Pseudo-labels. Shape: ``(B, *S)``, int64.
        label: Withheld labels. Shape: ``(B, 1, *S)`` or ``(B, *S)``.
        num_classes: ``K`` (class 0 is background).

    Returns:
        A scalar tensor in [0, 1] (0 when no foreground class is present in either).
    """
    label = label.reshape(pseudo.shape)
    classes = torch.arange(1, num_classes, device=pseudo.device).view(-1, *([1] * pseudo.ndim))  # (K-1, 1..)
    p, y = pseudo.unsqueeze(0) == classes, label.unsqueeze(0) == classes  # (K-1, B, *S) each
    dims = tuple(range(1, p.ndim))
    inter = (p & y).sum(dims).float()
    denom = (p.sum(dims) + y.sum(dims)).float()
    present = denom > 0
    dice = torch.where(present, 2 * inter / denom.clamp_min(1), torch.zeros_like(denom))
    return dice.sum() / present.sum().clamp_min(1)


def check_schedule_targets(schedule: ScheduleParams, allowed: tuple[str, ...]) -> None:
    """Reject ``schedule.applies_to`` names the method does not have (a typo would silently keep tau constant).

    Raises:
        ValueError: An unknown name; the message lists the method's scheduled losses.
    """
    unknown = [name for name in schedule.applies_to if name not in allowed]
    if unknown:
        raise ValueError(f"schedule.applies_to names {unknown}; this method's losses are {list(allowed)}")


@dataclass(frozen=True)
class DataSpec:
    """What a method needs to know about the data to build its networks."""

    in_channels: int
    num_classes: int
    class_names: tuple[str, ...]
    spatial_dims: int
    patch_size: tuple[int, ...]
    modality: str = "mri"


@dataclass(frozen=True)
class RunFacts:
    """What a method knows of its run besides its own ``Params``: it never sees the whole config.

    Built from the config by :func:`medcl.methods.build_method` (:meth:`of`).
    """

    #: ``train.steps``: step counts given as fractions of the run resolve against it.
    steps: int
    #: ``train.seed``: per-step random draws (``step_generator(seed, step)``) repeat on resume.
    seed: int
    #: ``model``: the network :meth:`Method.build_net` builds.
    model: ModelConfig
    #: ``data``: batch sizes, patch size, augmentation and slice axis of the samplers.
    data: DataConfig
    #: ``optim``: the base learning rate of per-network parameter groups, the warm-up the schedule reports.
    optim: OptimConfig
    #: ``<output>/cache``: artefacts computed once per setting (ACTION++ class centres).
    cache_dir: Path

    @classmethod
    def of(cls, cfg: Config) -> RunFacts:
        return cls(
            steps=cfg.train.steps,
            seed=cfg.train.seed,
            model=cfg.model,
            data=cfg.data,
            optim=cfg.optim,
            cache_dir=Path(cfg.output) / "cache",
        )


class Method(nn.Module, metaclass=ABCMeta):
    """Base class of every training method.

    Subclasses set ``name``, ``Params`` (a :class:`MethodParams`), build their networks in ``__init__`` and
    implement :meth:`training_step`. ``forward`` is ``training_step`` so that DistributedDataParallel, which
    only synchronises gradients of what runs inside ``forward``, wraps any method unchanged.
    """

    name: ClassVar[str]
    Params: ClassVar[type[MethodParams]] = MethodParams
    #: Data streams the method trains on, each mapped to whether its cases' labels are loaded:
    #: ``labeled`` (splits.labeled), ``unlabeled`` (splits.unlabeled), ``images`` (every training case,
    #: labels never read: contrastive pretraining). Each becomes ``batch[<stream>]`` in ``training_step``.
    streams: ClassVar[dict[str, bool]] = {"labeled": True}
    #: What a run of the method produces: ``"segment"`` (``medcl train``: a segmentation network) or
    #: ``"pretrain"`` (``medcl pretrain``: weights that a later segmenting run starts from with ``--init``).
    kind: ClassVar[Literal["segment", "pretrain"]] = "segment"
    #: Whether the engine validates segmentation on the val cases (label-free pretraining does not segment;
    #: ACTION++'s pretraining trains a segmentation head on labeled slices in stage 2 and validates).
    validates: ClassVar[bool] = True
    #: Keys of ``training_step``'s result that are statistics, not losses: logged as ``train/<key>`` even when
    #: they are tensors (other tensor entries are logged as ``train/loss_<key>``). Returning a tensor, not a
    #: float, keeps the step free of host syncs.
    metrics: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, params: MethodParams, run: RunFacts, spec: DataSpec) -> None:
        super().__init__()
        if not isinstance(params, self.Params):
            raise TypeError(
                f"{type(self).__name__} needs method params of type {self.Params.__name__}, "
                f"got {type(params).__name__} (build methods with medcl.methods.build_method)"
            )
        self.run = run
        self.spec = spec
        # Step counts given as fractions of train.steps become steps here, once: ``self.params`` holds
        # absolute step counts only, and ``schedule_steps`` records each one (the trainer logs them).
        self.params, self.schedule_steps = self._resolve(params, run.steps, run.optim)

    @classmethod
    def resolve_schedule(cls, cfg: Config) -> tuple[Any, dict[str, ResolvedSteps]]:
        """The method's ``Params`` of ``cfg`` with every step count in steps, and the run's step counts.

        Fractions of ``train.steps`` are resolved against ``cfg.train.steps``
        (:func:`medcl.schedules.resolve_step_fields`); the second value maps each dotted key of a step count,
        ``optim.warmup_steps`` included, to what the config gave and the steps it means.
        """
        return cls._resolve(cfg.method, cfg.train.steps, cfg.optim)

    @staticmethod
    def _resolve(params: Any, steps: int, optim: OptimConfig) -> tuple[Any, dict[str, ResolvedSteps]]:
        params, method_steps = resolve_step_fields(params, steps, "method")
        _, optim_steps = resolve_step_fields(optim, steps, "optim")
        return params, {**optim_steps, **method_steps}

    #: Old state-dict key -> its current name, for checkpoints written before a module was renamed; applied by
    #: :meth:`upgrade_state_dict`, which ``load_state_dict`` (resume, inference) and ``--init`` both use.
    renamed_keys: ClassVar[dict[str, str]] = {}

    def upgrade_state_dict(self, state: Mapping[str, Any]) -> dict[str, Any]:
        """``state`` with the keys of :attr:`renamed_keys` given their current names."""
        return {self.renamed_keys.get(k, k): v for k, v in state.items()}

    def load_state_dict(
        self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False
    ) -> Any:
        return super().load_state_dict(self.upgrade_state_dict(state_dict), strict=strict, assign=assign)

    def build_net(self, model_cfg: Any | None = None) -> SegNet:
        """A segmentation network from ``model_cfg`` (default: the run's ``model`` section)."""
        model_cfg = model_cfg or self.run.model
        return build_network(
            spatial_dims=self.spec.spatial_dims,
            in_channels=self.spec.in_channels,
            out_channels=self.spec.num_classes,
            **model_cfg.model_dump(),
        )

    def forward(self, batch: dict[str, Any], step: int) -> dict[str, torch.Tensor | float]:
        return self.training_step(batch, step)

    @abstractmethod
    def training_step(self, batch: dict[str, Any], step: int) -> dict[str, torch.Tensor | float]:
        """Losses of one step; ``"loss"`` is back-propagated, the rest is logged."""

    @abstractmethod
    def inference_network(self) -> SegNet:
        """The network used for validation, checkpoints-for-inference and the logged model."""

    def validation_networks(self) -> dict[str, SegNet]:
        """Networks validated one by one, by name (logged as ``val/<name>/dice_mean`` ...).

        Empty (the default): only :meth:`inference_network` is validated, as ``val/*``. Methods that train
        several networks (a CNN and a Transformer) return them all; after each validation the engine calls
        :meth:`select_network` with every network's mean Dice, then reports the selected network's metrics
        as ``val/*`` (the metric ``best.pt`` follows).
        """
        return {}

    def select_network(self, dice: dict[str, float]) -> None:
        """Choose the exported network from the latest validation (``{name: mean Dice}``)."""

    def build_sampler(self, stream: str, volumes: list[dict[str, Any]], *, stream_index: int) -> Any:
        """The sampler of one stream over its preprocessed volumes.

        The default draws ``data.batch_size`` (labeled) or ``data.unlabeled_batch_size`` (other streams)
        augmented slices/patches per step; methods with special batches (partitions, paired views) override it.
        """
        data = self.run.data
        labeled = self.streams[stream]
        pos = data.pos_fraction if data.spatial_dims == 3 and labeled else None
        # Volumes of the unlabeled stream may carry withheld labels (train.pseudo_dice): augmented alike.
        with_label = labeled or bool(volumes and "label" in volumes[0])
        size = data.batch_size if stream == "labeled" else data.unlabeled_batch_size
        if size == 0:
            return None
        return StepSampler(
            volumes,
            sample_transforms(data.augment, data.patch_size, with_label=with_label, pos_fraction=pos),
            size,
            spatial_dims=data.spatial_dims,
            slice_axis=data.slice_axis,
            stream=stream_index,
            batch_transform=batch_transforms(data.augment),
            patch_size=data.patch_size,  # volumes padded once, not every sample
        )

    def param_groups(self) -> list[dict[str, Any]]:
        """Optimiser parameter groups; override for per-network learning rates."""
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

    def on_step_end(self, step: int) -> None:
        """Hook after the optimiser step (EMA teachers, queues)."""
