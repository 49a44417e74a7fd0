"""How alike the global embeddings of different images are at initialisation: global average pool vs a grid.

A contrastive global head compares one vector per image. MONAI's networks use instance norm, which sets the
spatial mean of every channel to the same learned shift for every image; a global average pool of such a
bottleneck therefore gives nearly the same vector for all images, and the global loss starts collapsed.
This prints the mean pairwise cosine similarity of the bottleneck pooled globally, pooled to a grid, and of
the two global heads (Chaitanya's g1 and ACTION++'s latent projection) with ``grid`` 1 and 4, for a randomly
initialised BasicUNet on real ACDC slices (values near 1: every image looks the same to the loss).

Protocol: the middle slice of the first ``--volumes`` ED volumes (``*_frame01``) of ``../shared/data/ACDC``,
centre 128 x 128 crop of the stored grid, BasicUNet [16, 32, 64, 128, 256, 16] with instance norm, seed 0.

Run: ``.venv/bin/python benchmarks/bench_pool_collapse.py``
"""

from __future__ import annotations

import argparse
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F

from medcl.methods.pretrain import embedding_stats
from medcl.models import build_network
from medcl.models.action_heads import LatentProjection
from medcl.models.heads import GlobalProjectionHead

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "ACDC" / "imagesTr"


def mean_cosine(v: torch.Tensor) -> float:
    """Mean cosine similarity over all pairs of distinct images: the pretraining runs' ``emb_cos_mean``."""
    return float(embedding_stats(v.flatten(1))["emb_cos_mean"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--volumes", type=int, default=12)
    parser.add_argument("--patch", type=int, default=128)
    args = parser.parse_args()
    torch.manual_seed(0)
    half = args.patch // 2
    slices = []
    for path in sorted(DATA.glob("*_frame01.nii.gz"))[: args.volumes]:
        vol = np.asarray(nib.load(path).dataobj, dtype=np.float32)  # (W, H, slices), stored in [0, 1]
        s = vol[:, :, vol.shape[2] // 2]
        cx, cy = s.shape[0] // 2, s.shape[1] // 2
        slices.append(s[cx - half : cx + half, cy - half : cy + half])
    x = torch.from_numpy(np.stack(slices))[:, None]  # (N, 1, P, P)
    net = build_network(
        "basicunet", spatial_dims=2, in_channels=1, out_channels=4, features=(16, 32, 64, 128, 256, 16)
    )
    with torch.no_grad():
        e = net(x, return_features=True).embedding  # (N, 256, P/16, P/16)
        c = e.shape[1]
        rows = {
            "bottleneck, global average pool": mean_cosine(e.mean(dim=(2, 3))),
            "bottleneck, 4x4 grid pool": mean_cosine(F.adaptive_avg_pool2d(e, 4)),
            "bottleneck, flattened": mean_cosine(e),
        }
        for grid in (1, 4):
            torch.manual_seed(0)
            rows[f"g1 (Chaitanya), grid {grid}"] = mean_cosine(GlobalProjectionHead(c, grid=grid)(e))
            torch.manual_seed(0)
            rows[f"latent projection (ACTION++), grid {grid}"] = mean_cosine(
                LatentProjection(c, 512, grid=grid)(e)
            )
    print(f"{len(slices)} ACDC slices, {args.patch}x{args.patch}, bottleneck {tuple(e.shape[1:])}")
    print("| embedding | mean pairwise cosine |\n| --- | --- |")
    for name, value in rows.items():
        print(f"| {name} | {value:.4f} |")


if __name__ == "__main__":
    main()
