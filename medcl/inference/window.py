"""Sliding-window prediction over whole volumes (MONAI inferers), shared by validation and inference.

2D models run slice by slice along ``slice_axis`` (MONAI ``SliceInferer``), each slice tiled with windows of
the training patch size; 3D models are tiled with 3D windows. Defaults follow nnU-Net: 50% overlap and
Gaussian blending.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.inferers import Inferer, SliceInferer, SlidingWindowInferer


def make_inferer(
    spatial_dims: int,
    patch_size: Sequence[int],
    *,
    slice_axis: int = 2,
    overlap: float = 0.5,
    mode: str = "gaussian",
    sw_batch_size: int = 32,
    progress: bool = False,
) -> Inferer:
    """A MONAI inferer mapping a ``(B, C, X, Y, Z)`` volume to ``(B, K, X, Y, Z)`` logits."""
    kwargs = dict(
        roi_size=list(patch_size), sw_batch_size=sw_batch_size, overlap=overlap, mode=mode, progress=progress
    )
    if spatial_dims == 2:
        return SliceInferer(spatial_dim=slice_axis, **kwargs)
    return SlidingWindowInferer(**kwargs)


@torch.inference_mode()
def predict_volume(
    net: torch.nn.Module, image: torch.Tensor, inferer: Inferer, device: torch.device
) -> torch.Tensor:
    """Softmax probabilities ``(K, X, Y, Z)`` of one channel-first volume ``(C, X, Y, Z)``."""
    x = torch.as_tensor(image).unsqueeze(0).to(device)
    logits = inferer(x, net)
    return torch.softmax(logits.float(), dim=1)[0]
