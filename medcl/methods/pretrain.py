"""Contrastive pretraining on unlabeled slices, after Chaitanya et al. 2020 [0].

Stage 1 (:class:`PretrainGlobal`, ``method.name: pretrain_global``) trains the encoder with a projection
head g1 and the global loss (strategies G^R, G^D-, G^D) on partition-aware batches of slices. Stage 2
(:class:`PretrainLocal`, ``pretrain_local``) freezes the encoder and trains the first ``decoder_blocks``
decoder blocks with a 1x1-conv head g2 and the local loss on two intensity-only views. Stage 3 is
``medcl finetune``: the supervised method initialised from stage 2 (heads dropped) on the few labeled cases.
Labels are never read: both stages use the label-free ``images`` stream (every training case).

[0] K. Chaitanya, E. Erdil, N. Karani, E. Konukoglu, "Contrastive learning of global and local features for
    medical image segmentation with limited annotations", NeurIPS 2020, https://arxiv.org/abs/2006.10511
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from medcl.data.pretrain_sampling import PartitionSampler
from medcl.errors import ConfigError
from medcl.losses.global_contrast import GlobalContrastiveLoss
from medcl.losses.local_contrast import LocalContrastiveLoss
from medcl.methods.base import DataSpec, Method, MethodParams, RunFacts
from medcl.models.heads import GlobalProjectionHead, LocalProjectionHead, RegionProjectionHead

# Encoder submodules of the wrapped MONAI networks, and decoder blocks coarsest first.
ENCODER_MODULES = {
    "basicunet": ("conv_0", "down_1", "down_2", "down_3", "down_4"),
    "swinunetr": ("swinViT", "encoder1", "encoder2", "encoder3", "encoder4", "encoder10"),
}
DECODER_MODULES = {
    "basicunet": ("upcat_4", "upcat_3", "upcat_2", "upcat_1"),
    "swinunetr": ("decoder5", "decoder4", "decoder3", "decoder2", "decoder1"),
}


def train_only(net, modules: tuple[str, ...]) -> None:
    """Freeze every parameter of ``net`` outside ``modules`` (also keeps DDP from waiting for unused ones)."""
    net.requires_grad_(False)
    for name in modules:
        getattr(net.net, name).requires_grad_(True)


class PretrainParams(MethodParams):
    """Keys shared by both pretraining stages."""

    temperature: float = Field(0.1, gt=0, description="Contrastive temperature tau (paper: 0.1).")
    partitions: int = Field(4, ge=1, description="S: partitions of each volume's slices (paper: 4).")
    volumes_per_batch: int = Field(3, ge=1, description="m: volumes per step; a step has m x S slices.")


class GlobalParams(PretrainParams):
    """``method.*`` keys of ``pretrain_global``."""

    strategy: Literal["GR", "GD-", "GD"] = Field("GD", description="GR (SimCLR), GD- or GD (paper's best).")
    hidden: int = Field(1024, ge=1, description="Hidden width of the g1 MLP.")
    projection_dim: int = Field(128, ge=1, description="Embedding size of g1.")
    pool_grid: int = Field(
        4,
        ge=1,
        description="g1 average-pools the bottleneck to a grid x grid map and flattens it; 1 = global "
        "average pool, which collapses with instance-normalised encoders.",
    )


class LocalParams(PretrainParams):
    """``method.*`` keys of ``pretrain_local``."""

    strategy: Literal["LR", "LD"] = Field(
        "LR", description="LR: two views of one slice; LD: + same partition."
    )
    decoder_blocks: int = Field(3, ge=1, description="l: decoder blocks trained (coarsest first; paper: 3).")
    region_size: int = Field(3, ge=1, description="K: local regions are K x K windows (paper: 3).")
    regions: Literal["all", "grid13"] | int = Field(
        "all",
        description="all: every window of a K-stride tiling; grid13: the authors' 13 regions; N: N random.",
    )
    negatives: Literal["all", "neighbours5"] = Field(
        "all", description="Negatives: all other regions, or the authors' 5 nearest neighbours."
    )
    embed_dim: int | None = Field(128, description="Linear embedding of each window; null = average-pool it.")


def embedding_stats(z: torch.Tensor) -> dict[str, torch.Tensor]:
    """Collapse indicators: mean pairwise cosine and std of the L2-normalised embeddings (detached).

    A collapsed encoder maps everything to one direction: the mean cosine goes to 1 and the std to 0.
    """
    with torch.no_grad():
        u = F.normalize(z.float(), dim=1)  # (N, D)
        cos = u @ u.T  # (N, N)
        n = u.shape[0]
        off = cos[~torch.eye(n, dtype=torch.bool, device=u.device)]
        # 0-dim tensors, not floats: no host sync in the training step (the engine averages them per window).
        return {"emb_cos_mean": off.mean(), "emb_std": u.std(dim=0).mean()}


class _Pretrain(Method):
    """Shared plumbing: the label-free stream, partition sampling, no validation."""

    kind = "pretrain"
    streams: ClassVar[dict[str, bool]] = {"images": False}
    validates: ClassVar[bool] = False
    metrics: ClassVar[frozenset[str]] = frozenset({"emb_cos_mean", "emb_std"})
    mode: ClassVar[str]
    views: ClassVar[int]
    include_original: ClassVar[bool]

    def __init__(self, params: MethodParams, run: RunFacts, spec: DataSpec) -> None:
        super().__init__(params, run, spec)
        if spec.spatial_dims != 2:
            raise ConfigError(
                f"{self.name} trains on 2D slices: set data.spatial_dims: 2 (got {spec.spatial_dims})"
            )
        self.net = self.build_net()
        if self.net.name not in ENCODER_MODULES:
            raise ConfigError(
                f"{self.name} needs to know the encoder of model.name {self.net.name!r}; "
                f"supported: {', '.join(ENCODER_MODULES)}"
            )

    def build_sampler(
        self, stream: str, volumes: list[dict[str, Any]], *, stream_index: int
    ) -> PartitionSampler:
        return PartitionSampler(
            volumes,
            patch_size=self.run.data.patch_size,
            volumes_per_batch=self.params.volumes_per_batch,
            partitions=self.params.partitions,
            views=self.views,
            include_original=self.include_original,
            mode=self.mode,
            slice_axis=self.run.data.slice_axis,
            stream=stream_index,
        )

    def inference_network(self):
        return self.net


class PretrainGlobal(_Pretrain):
    """Stage 1: encoder + g1 with the global contrastive loss on {original, 2 augmented views} per slice."""

    name = "pretrain_global"
    Params = GlobalParams
    mode = "global"
    views = 3
    include_original = True

    def __init__(self, params: MethodParams, run: RunFacts, spec: DataSpec) -> None:
        super().__init__(params, run, spec)
        train_only(self.net, ENCODER_MODULES[self.net.name])  # the decoder is not part of stage 1
        channels = self.net.feature_channels()["embedding"]
        self.global_head = GlobalProjectionHead(
            channels, self.params.hidden, self.params.projection_dim, grid=self.params.pool_grid
        )
        self.loss_fn = GlobalContrastiveLoss(self.params.strategy, self.params.temperature)

    def training_step(self, batch: dict[str, Any], step: int) -> dict[str, torch.Tensor | float]:
        b = batch["images"]
        out = self.net(b["image"], return_features=True)  # embedding: (N, C, h, w)
        z = self.global_head(out.embedding)  # (N, D)
        loss = self.loss_fn(z, b["sample_ids"], b["partition_ids"], b["volume_ids"])
        return {"loss": loss, "global": loss.detach(), "tau": self.params.temperature, **embedding_stats(z)}


class PretrainLocal(_Pretrain):
    """Stage 2: frozen encoder; the first l decoder blocks + g2 with the local loss on two intensity views."""

    name = "pretrain_local"
    Params = LocalParams
    mode = "local"
    views = 2
    include_original = False
    #: Checkpoints written while the loss owned the window embedding name it ``loss_fn.proj``.
    renamed_keys = {"loss_fn.proj.weight": "region_head.linear.weight"}

    def __init__(self, params: MethodParams, run: RunFacts, spec: DataSpec) -> None:
        super().__init__(params, run, spec)
        blocks = DECODER_MODULES[self.net.name][: self.params.decoder_blocks]
        train_only(self.net, blocks)  # frozen encoder; only the first l decoder blocks (and g2) learn
        scales = list(self.net.feature_channels().items())
        decoder = [(k, c) for k, c in scales if k.startswith("scale_")][::-1]  # coarsest first
        if self.params.decoder_blocks > len(decoder):
            raise ConfigError(
                f"method.decoder_blocks is {self.params.decoder_blocks} but {self.net.name} has "
                f"{len(decoder)} decoder blocks"
            )
        self.feature_key, channels = decoder[self.params.decoder_blocks - 1]
        self.local_head = LocalProjectionHead(channels)
        # The local loss's trainable window embedding; without one (embed_dim: null) a window is its mean.
        self.region_head = (
            None
            if self.params.embed_dim is None
            else RegionProjectionHead(channels, self.params.region_size, self.params.embed_dim)
        )
        self.loss_fn = LocalContrastiveLoss(
            temperature=self.params.temperature,
            region_size=self.params.region_size,
            regions=self.params.regions,
            negatives=self.params.negatives,
            strategy=self.params.strategy,
        )

    def training_step(self, batch: dict[str, Any], step: int) -> dict[str, torch.Tensor | float]:
        b = batch["images"]
        out = self.net(b["image"], return_features=True)
        f = self.local_head(out.features[self.feature_key])  # (2n, C, h, w)
        first, second = b["view_ids"] == 0, b["view_ids"] == 1  # view-major: slice k of both views align
        # Random regions (method.regions: N) come from torch's global random state, seeded by the engine.
        loss = self.loss_fn(
            f[first], f[second], b["partition_ids"][first], b["volume_ids"][first], embed=self.region_head
        )
        return {"loss": loss, "local": loss.detach(), "tau": self.params.temperature}
