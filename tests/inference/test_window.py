"""Sliding-window prediction over whole volumes: 2D slice by slice along ``slice_axis``, 3D in 3D windows."""

from __future__ import annotations

import pytest
import torch
from monai.inferers import SliceInferer, SlidingWindowInferer

from medcl.inference.window import make_inferer, predict_volume


class PerVoxel(torch.nn.Module):
    """Logits ``(0, 4x, -4x)`` of every voxel, so the blended windows must reproduce them exactly.

    Records the spatial shape of the windows it sees and counts them.
    """

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[tuple[int, ...]] = set()
        self.windows = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.add(tuple(x.shape[2:]))
        self.windows += x.shape[0]
        return torch.cat([torch.zeros_like(x), 4 * x, -4 * x], dim=1)


def expected(image: torch.Tensor) -> torch.Tensor:
    return torch.softmax(torch.cat([torch.zeros_like(image), 4 * image, -4 * image]), dim=0)


def test_make_inferer_by_spatial_dims() -> None:
    two = make_inferer(2, (8, 8), slice_axis=1, sw_batch_size=4)
    assert isinstance(two, SliceInferer) and two.spatial_dim == 1
    assert list(two.roi_size) == [8, 8] and two.sw_batch_size == 4
    assert (two.overlap, two.mode) == (0.5, "gaussian")  # nnU-Net's defaults
    three = make_inferer(3, (8, 8, 4))
    assert type(three) is SlidingWindowInferer and list(three.roi_size) == [8, 8, 4]


# (10, 12, 3) volume, 8x8 windows at 50% overlap: along axis 2, 3 slices of 10x12 hold 2x2 windows each;
# along axis 0, 10 slices of 12x3 (padded to 12x8) hold 2x1.
@pytest.mark.parametrize(("slice_axis", "windows"), [(2, 3 * 4), (0, 10 * 2)])
def test_2d_model_runs_slice_by_slice_and_keeps_the_volume_grid(slice_axis: int, windows: int) -> None:
    torch.manual_seed(0)
    image = torch.randn(1, 10, 12, 3)  # (C, X, Y, Z)
    net = PerVoxel()
    probs = predict_volume(net, image, make_inferer(2, (8, 8), slice_axis=slice_axis), torch.device("cpu"))
    assert probs.shape == (3, 10, 12, 3) and probs.dtype == torch.float32
    torch.testing.assert_close(probs, expected(image), atol=1e-5, rtol=1e-5)
    # The network saw 2D windows of the patch size, cut from the slices across the chosen axis.
    assert net.seen == {(8, 8)} and net.windows == windows


def test_3d_model_and_a_volume_smaller_than_the_window() -> None:
    torch.manual_seed(1)
    image = torch.randn(1, 6, 9, 7)
    net = PerVoxel()
    probs = predict_volume(net, image, make_inferer(3, (8, 8, 8)), torch.device("cpu"))
    assert probs.shape == (3, 6, 9, 7)
    torch.testing.assert_close(probs, expected(image), atol=1e-5, rtol=1e-5)
    assert net.seen == {(8, 8, 8)}  # padded up to the window, cropped back
    torch.testing.assert_close(probs.sum(0), torch.ones(6, 9, 7))
