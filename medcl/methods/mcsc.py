"""MCSC: a CNN and a Transformer teach each other, plus multi-scale cross-supervised pixel contrast [0].

One step on a batch of labeled (L) and unlabeled (U) slices or patches, for networks k ∈ {CNN, Transformer}
([0] Sec. 3; the authors' training script [1]; docs/methods.md, MCSC)::

    L_sup,k = 0.5 · (CE(f_k(x_L), y) + Dice(f_k(x_L), y))                      labeled images
    L_cps,k = Dice(f_k(x_U), argmax f_other(x_U))      (target detached)       unlabeled images
    λ(t)    = cps_weight · exp(−5 (1 − min(1, t / cps_rampup_steps))²)         sigmoid ramp-up
    L_con   = Σ_{scale ∈ {fine, coarse}} L_con^{scale}                          shared by both networks
    loss    = Σ_k (L_sup,k + λ(t) · L_cps,k) + contrast_weight · L_con

Dice is the SSL4MIS variant: softmax, background included, squared denominators, summed over the batch
and averaged over the classes. For L_con, each network's decoder map at a scale goes through a projector
(a 1x1 conv per network, ReLU, a shared 1x1 conv); the pixel embeddings of **both** networks are pooled,
labelled with the ground truth on labeled images and with the **other** network's prediction on unlabeled
ones, grouped (spatial blocks or a random per-class sample) and contrasted with the class-balanced SupCon of
:mod:`medcl.losses.mcsc_contrast`. Before ``contrast_warmup_steps`` only labeled images enter the contrast.
``contrast_weight: 0`` is the cross-teaching baseline (CTCT [2]): no projector is built or run.

``mix: cutmix`` (not in [0]) adds CPS's strong view [3]: both networks first label the unlabeled slices
without gradient, the slices are then mixed in pairs by random boxes (the label maps by the same boxes),
colour-jittered and blurred, and ``x_U`` above is that strong view, with the mixed labels as the targets of
L_cps and of the contrast. It costs one extra forward of both networks on ``x_U``, without gradient.

Deviations from [1] (see the loss module for the contrast's own): blocks tile the whole map; anchors without
positives are skipped; the λ ramp is continuous (not stepped every 150 iterations); the networks are MONAI's
(BasicUNet/UNet and SwinUNETR, whose own output conv gives the logits, not an extra classifier); the coarse
scale is the decoder map at ``1/coarse_factor`` of both networks; ``contrast_weight`` is the total weight
(the reference's 0.001 per network is 0.002 in total). Training starts from scratch unless
``transformer.weights`` names a file of pretrained weights (the paper's ImageNet Swin weights do not fit
MONAI's SwinUNETR; expect the Transformer to lag the CNN without pretraining, see §5 of the digest).

[0] Q. Liu, X. Gu, P. Henderson, F. Deligianni, "Multi-scale cross contrastive learning for
    semi-supervised medical image segmentation", BMVC 2023. https://arxiv.org/abs/2306.14293
[1] ``kathyliu579/MCSC`` @ 0fe180e, ``train_MCSC_2D_256_28.py`` (read, not copied).
[2] X. Luo, M. Hu, T. Song, G. Wang, S. Zhang, "Semi-supervised medical image segmentation via cross teaching
    between CNN and Transformer", MIDL 2022. https://arxiv.org/abs/2112.04894
[3] X. Chen, Y. Yuan, G. Zeng, J. Wang, "Semi-Supervised Semantic Segmentation with Cross Pseudo Supervision",
    CVPR 2021. https://arxiv.org/abs/2106.01226
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from pydantic import Field, field_validator
from torch import Tensor, nn

from medcl.config import ModelConfig
from medcl.data.mixing import MixMode, step_generator, strong_view
from medcl.errors import ConfigError
from medcl.losses.mcsc_contrast import (
    block_groups,
    gather_labels,
    gather_pixels,
    grouped_supcon_loss,
    random_groups,
)
from medcl.methods.base import DataSpec, Method, MethodParams, RunFacts, pseudo_label_dice
from medcl.models.heads import PixelProjectionHead
from medcl.models.networks import SegNet, build_network
from medcl.models.weights import load_matching_weights
from medcl.schedules import StepCount

log = logging.getLogger(__name__)

#: Values of ``method.export`` and the index each stores in the ``exported`` buffer (``best`` starts at cnn).
EXPORTS = ("cnn", "transformer")


class NetworkParams(ModelConfig):
    """One network of MCSC: the ``model`` keys plus its optimiser settings and optional weights."""

    lr: float | None = Field(
        None, gt=0, description="Learning rate of this network; null: the method default."
    )
    warmup_steps: StepCount | None = Field(
        None,
        description="Linear LR warm-up of this network: steps (integer) or a fraction of train.steps "
        "(decimal in [0, 1]); null: optim.warmup_steps.",
    )
    weights: str | None = Field(
        None,
        description="Pretrained weights (a torch file of tensors) copied by name where shapes match; null: "
        "from scratch.",
    )


class CNNParams(NetworkParams):
    """``method.cnn``: MONAI BasicUNet or UNet (lr default: optim.lr)."""

    name: Literal["basicunet", "unet"] = Field("basicunet", description="basicunet or unet.")  # type: ignore[assignment]
    features: list[int] = Field(
        [16, 32, 64, 128, 256, 16], description="BasicUNet features (6); UNet uses 5."
    )


class TransformerParams(NetworkParams):
    """``method.transformer``: MONAI SwinUNETR (lr default: optim.lr / 5, as in [1])."""

    name: Literal["swinunetr"] = Field("swinunetr", description="swinunetr.")  # type: ignore[assignment]
    feature_size: int = Field(48, ge=12, description="SwinUNETR embedding size (multiple of 12).")


class MCSCParams(MethodParams):
    """``method.*`` keys of MCSC.

    Defaults are the reference's values except the contrast's size: the reference's block sampler (all
    pixels in 16x16-ish blocks, 128-d) costs several times a cross-teaching step on a CPU
    (``benchmarks/bench_mcsc.py``), so the default is the random sampler with 256 pixels per class and
    network and 64-d embeddings; ``configs/acdc/mcsc.yaml`` sets the paper's block sampler for GPU runs.
    The step counts default to the reference's proportions of its 40k steps (fractions of ``train.steps``, see
    :data:`medcl.schedules.StepCount`); they are absolute steps after construction (``MCSC.params``).
    """

    cnn: CNNParams = Field(default_factory=CNNParams)
    transformer: TransformerParams = Field(default_factory=TransformerParams)
    export: Literal["best", "cnn", "transformer"] = Field(
        "best",
        description="Network used for inference: best (higher val Dice at each validation), cnn, transformer.",
    )
    cps_weight: float = Field(0.1, ge=0, description="Final weight w of the cross pseudo-supervision (Dice).")
    cps_rampup_steps: StepCount = Field(
        0.75,
        description="Length of the sigmoid ramp-up of the CPS weight: steps (integer) or a fraction of "
        "train.steps (decimal in [0, 1]; reference: 30000 of 40000 = 0.75); 0: none.",
    )
    contrast_weight: float = Field(
        0.002,
        ge=0,
        description="Total weight of L_con (reference: 0.001 per network); 0: cross-teaching only.",
    )
    temperature: float = Field(0.1, gt=0, description="Contrast temperature tau (reference: 0.1).")
    scales: list[Literal["fine", "coarse"]] = Field(
        ["fine", "coarse"], min_length=1, description="Contrasted scales."
    )
    coarse_factor: int = Field(8, ge=2, description="The coarse scale is the decoder map at 1/coarse_factor.")
    sampler: Literal["block", "random"] = Field(
        "random",
        description="block: spatial blocks tiling each map; random: up to max_per_class pixels per class.",
    )
    block_size: int = Field(16, ge=1, description="Block side (pixels) at the fine scale.")
    coarse_block_size: int = Field(14, ge=1, description="Block side (pixels) at the coarse scale.")
    max_per_class: int = Field(
        256, ge=1, description="random sampler: pixels per class and network per scale."
    )
    contrast_warmup_steps: StepCount = Field(
        0.075,
        description="Steps with only labeled images in the contrast: steps (integer) or a fraction of "
        "train.steps (decimal in [0, 1]; reference: 3000 of 40000 = 0.075).",
    )
    mix: MixMode = Field(
        "none",
        description="Strong view of the unlabeled slices (CPS with CutMix [3]): cutmix or classmix mixes them in "
        "pairs, then colour jitter and blur, and each network learns the other's pseudo-labels of the unmixed "
        "slices, mixed alike; none: the reference's single view.",
    )
    jitter_prob: float = Field(
        0.8, ge=0, le=1, description="Strong view: colour jitter probability (FixMatch's 0.8); with mix only."
    )
    blur_prob: float = Field(
        0.5, ge=0, le=1, description="Strong view: Gaussian blur probability (0.5); with mix only."
    )
    projector_hidden: int = Field(256, ge=1, description="Hidden width of the projectors.")
    projector_dim: int = Field(64, ge=1, description="Embedding size of the projectors.")
    projector_lr: float | None = Field(None, gt=0, description="Projector learning rate; null: optim.lr.")
    max_pairs: int = Field(2**24, ge=1, description="Similarity entries computed at once (memory bound).")

    @field_validator("scales")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"method.scales must not repeat a scale; got {value}")
        return value


def cps_weight(step: int, weight: float, rampup: int) -> float:
    """λ_cps(t) = w · exp(−5 (1 − min(1, t / ramp))²) ([1], after Laine & Aila's sigmoid ramp-up)."""
    if rampup <= 0:
        return float(weight)
    t = min(1.0, step / rampup)
    return float(weight * math.exp(-5.0 * (1.0 - t) ** 2))


class MCSC(Method):
    """MCSC [0]: CNN + Transformer cross teaching with multi-scale cross-supervised contrast.

    Streams ``labeled`` (with labels) and ``unlabeled``; both networks are validated (``val/cnn/*``,
    ``val/transformer/*``) and the exported one follows ``method.export``; the choice is the ``exported``
    buffer, so checkpoints and the Predictor reproduce it.
    """

    name = "mcsc"
    metrics: ClassVar[frozenset[str]] = frozenset({"pseudo_dice", "pseudo_dice_transformer"})
    Params = MCSCParams
    streams: ClassVar[dict[str, bool]] = {"labeled": True, "unlabeled": False}

    def __init__(self, params: MethodParams, run: RunFacts, spec: DataSpec) -> None:
        super().__init__(params, run, spec)
        p = self.params
        self.cnn = self._build(p.cnn, "cnn")
        self.transformer = self._build(p.transformer, "transformer")
        # The exported network as a buffer: 0 cnn, 1 transformer (best starts with the CNN, as [1] tests it).
        start = EXPORTS.index(p.export) if p.export != "best" else 0
        self.register_buffer("exported", torch.tensor(start, dtype=torch.long))
        # SSL4MIS Dice: softmax, background included, squared terms, batch-summed, mean over classes.
        self.dice = DiceLoss(
            include_background=True,
            to_onehot_y=True,
            softmax=True,
            squared_pred=True,
            batch=True,
            smooth_nr=1e-5,
            smooth_dr=1e-5,
        )
        self.scale_keys: dict[str, str] = {}
        self.heads = nn.ModuleDict()
        if p.contrast_weight > 0:
            self.scale_keys = self._scale_keys()
            channels = (self.cnn.feature_channels(), self.transformer.feature_channels())
            for scale, key in self.scale_keys.items():
                widths = (channels[0][key], channels[1][key])
                self.heads[scale] = PixelProjectionHead(widths, p.projector_hidden, p.projector_dim)
        # Pretrained weights missing at inference time (a Predictor rebuilding the method) are not an error;
        # param_groups() (training only) raises.
        self._missing_weights: list[str] = []
        for key, params, net in (("cnn", p.cnn, self.cnn), ("transformer", p.transformer, self.transformer)):
            if params.weights is None:
                continue
            if not Path(params.weights).is_file():
                self._missing_weights.append(f"method.{key}.weights: {params.weights}")
                continue
            copied, total = load_matching_weights(net.net, params.weights)
            log.info("%s: copied %d of %d tensors from %s", key, copied, total, params.weights)

    def _build(self, params: NetworkParams, key: str) -> SegNet:
        """One network from its section; its spatial rules are checked on the configured patch size."""
        model = params.model_dump(exclude={"lr", "warmup_steps", "weights"})
        net = build_network(
            spatial_dims=self.spec.spatial_dims,
            in_channels=self.spec.in_channels,
            out_channels=self.spec.num_classes,
            **model,
        )
        try:
            net.check_spatial_shape(self.spec.patch_size)
        except ConfigError as exc:
            raise ConfigError(f"method.{key} ({params.name}) and data.patch_size: {exc}") from None
        return net

    def _scale_keys(self) -> dict[str, str]:
        """Feature key of each contrasted scale, present in both networks."""
        cnn, tr = self.cnn.feature_channels(), self.transformer.feature_channels()
        common = sorted(
            (int(k.removeprefix("scale_")) for k in cnn if k.startswith("scale_") and k in tr),
        )
        keys = {}
        for scale in self.params.scales:
            factor = common[0] if scale == "fine" else self.params.coarse_factor
            if factor not in common:
                raise ConfigError(
                    f"method.coarse_factor {factor}: both networks need a decoder map at 1/{factor}; "
                    f"they share 1/{', 1/'.join(map(str, common))}"
                )
            keys[scale] = f"scale_{factor}"
        return keys

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict[str, Any], step: int) -> dict[str, Tensor | float]:
        p = self.params
        lab = batch["labeled"]
        unl = batch.get("unlabeled")
        y = lab["label"][:, 0]  # (B_L, *S)
        n_l = y.shape[0]
        x_u = None if unl is None else unl["image"]  # (B_U, C, *S)
        weak = None  # both networks' labels of the unmixed unlabeled slices, with a strong view
        if x_u is not None and p.mix != "none":
            # CPS with CutMix [3]: both networks label the unmixed slices (no gradient, training mode), the
            # slices and both label maps are mixed by the same masks, and the networks train on the mix.
            with torch.no_grad():
                weak = (self.cnn(x_u).argmax(1), self.transformer(x_u).argmax(1))
            x_u, pseudo_c, pseudo_t = strong_view(
                x_u,
                *weak,
                mode=p.mix,
                num_classes=self.spec.num_classes,
                jitter_prob=p.jitter_prob,
                blur_prob=p.blur_prob,
                generator=step_generator(self.run.seed, step, x_u.device),
            )
        x = lab["image"] if x_u is None else torch.cat([lab["image"], x_u])  # (B, C, *S)
        with_features = bool(self.heads)
        out_c = self.cnn(x, return_features=with_features)
        out_t = self.transformer(x, return_features=with_features)
        logits_c = out_c.logits if with_features else out_c  # (B, K, *S)
        logits_t = out_t.logits if with_features else out_t  # (B, K, *S)
        sup_c = self._supervised(logits_c[:n_l], y)
        sup_t = self._supervised(logits_t[:n_l], y)
        # Hard pseudo-labels of the unlabeled images, detached (argmax has no gradient anyway); with a strong
        # view, those of the unmixed slices, mixed like the images (above).
        if weak is None:
            pseudo_c = logits_c[n_l:].detach().argmax(1)  # (B_U, *S)
            pseudo_t = logits_t[n_l:].detach().argmax(1)  # (B_U, *S)
        if pseudo_c.shape[0]:
            cps_c = self.dice(logits_c[n_l:], pseudo_t[:, None])
            cps_t = self.dice(logits_t[n_l:], pseudo_c[:, None])
        else:
            cps_c = cps_t = logits_c.sum() * 0.0
        lam = cps_weight(step, p.cps_weight, p.cps_rampup_steps)
        loss = sup_c + sup_t + lam * (cps_c + cps_t)
        terms: dict[str, Tensor | float] = {
            "sup_cnn": sup_c.detach(),
            "sup_transformer": sup_t.detach(),
            "cps_cnn": cps_c.detach(),
            "cps_transformer": cps_t.detach(),
            "cps_weight": lam,
        }
        if (
            unl is not None and "label" in unl and pseudo_c.shape[0]
        ):  # withheld labels: train.pseudo_dice only
            # Scored on the unmixed slices the withheld labels belong to.
            own_c, own_t = weak or (pseudo_c, pseudo_t)
            k = self.spec.num_classes
            terms["pseudo_dice"] = pseudo_label_dice(
                own_c, unl["label"], k
            )  # the CNN's, teaching the Transformer
            terms["pseudo_dice_transformer"] = pseudo_label_dice(own_t, unl["label"], k)
        if with_features:
            # Labeled-only warm-up: unlabeled pixels (pseudo-labels) enter once the networks are sensible.
            n = n_l if step < p.contrast_warmup_steps else x.shape[0]
            # Labels of each view: ground truth, then the OTHER network's prediction.
            y_views = torch.stack([torch.cat([y, pseudo_t])[:n], torch.cat([y, pseudo_c])[:n]])  # (2, n, *S)
            contrast = loss.new_zeros(())
            for scale, key in self.scale_keys.items():
                feats = (out_c.features[key][:n], out_t.features[key][:n])  # (n, C_v, *s) each
                term = self._contrast(scale, feats, y_views)
                terms[f"contrast_{scale}"] = term.detach()
                contrast = contrast + term
            terms["contrast"] = contrast.detach()
            loss = loss + p.contrast_weight * contrast
        return {"loss": loss, **terms}

    def _supervised(self, logits: Tensor, y: Tensor) -> Tensor:
        """0.5 · (CE + Dice) on labeled images ([1])."""
        return 0.5 * (F.cross_entropy(logits, y) + self.dice(logits, y[:, None]))

    def _contrast(self, scale: str, feats: tuple[Tensor, Tensor], y_views: Tensor) -> Tensor:
        """L_con at one scale: sample groups on the labels, project only the grouped pixels, contrast."""
        p = self.params
        size = tuple(feats[0].shape[2:])
        # Nearest downsampling of the full-resolution labels to this scale: (2, n, *s).
        if tuple(y_views.shape[2:]) != size:
            y_views = F.interpolate(y_views.float(), size=size, mode="nearest").long()
        if p.sampler == "block":
            block = p.block_size if scale == "fine" else p.coarse_block_size
            index, valid = block_groups(y_views, block)  # (G, 2, Q) each
        else:
            index, valid = random_groups(y_views, p.max_per_class, self.spec.num_classes)
        head = self.heads[scale]
        # Project each view's grouped pixels with its own first layer: (G, Q, D) per view -> (G, 2Q, D).
        z = torch.cat([head(gather_pixels(f, index[:, v]), v) for v, f in enumerate(feats)], dim=1)
        labels = gather_labels(y_views.flatten(1), index).flatten(1)  # (G, 2Q)
        return grouped_supcon_loss(
            z, labels, valid.flatten(1), p.temperature, self.spec.num_classes, max_pairs=p.max_pairs
        )

    # ------------------------------------------------------------------ engine hooks
    def inference_network(self) -> SegNet:
        return self.transformer if int(self.exported) == 1 else self.cnn

    def validation_networks(self) -> dict[str, SegNet]:
        return {"cnn": self.cnn, "transformer": self.transformer}

    def select_network(self, dice: dict[str, float]) -> None:
        """With ``export: best``, export the network with the higher val Dice (ties: the CNN)."""
        if self.params.export != "best":
            return
        choice = 1 if dice.get("transformer", -math.inf) > dice.get("cnn", -math.inf) else 0
        self.exported.fill_(choice)

    def param_groups(self) -> list[dict[str, Any]]:
        """CNN at ``cnn.lr`` (default optim.lr), Transformer at ``transformer.lr`` (default optim.lr / 5),
        projectors at ``projector_lr`` (default optim.lr); per-network ``warmup_steps`` when set.
        """
        if self._missing_weights:
            raise ConfigError("pretrained weights not found: " + "; ".join(self._missing_weights))
        p, base = self.params, self.run.optim.lr
        groups: list[dict[str, Any]] = []
        for params, net, default in ((p.cnn, self.cnn, base), (p.transformer, self.transformer, base / 5)):
            group: dict[str, Any] = {"params": list(net.parameters()), "lr": params.lr or default}
            if params.warmup_steps is not None:
                group["warmup_steps"] = params.warmup_steps
            groups.append(group)
        if self.heads:
            groups.append({"params": list(self.heads.parameters()), "lr": p.projector_lr or base})
        return groups
