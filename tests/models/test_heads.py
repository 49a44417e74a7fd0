"""Tests for medcl.models.heads: shapes in 2D/3D, gradients, parameter counts, use on a BasicUNet."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from medcl.models import NetOutput, build_network
from medcl.models.heads import GlobalProjectionHead, LocalProjectionHead


@pytest.fixture(scope="module", autouse=True)
def single_thread() -> Iterator[None]:
    """Tiny modules: one thread is faster than two competing ones on a shared 2-core runner."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize(("spatial", "grid"), [((3, 5), 4), ((8, 8), 4), ((2, 3, 4), 2), ((9, 9), 1)])
def test_global_head_pools_any_spatial_size_to_a_vector(spatial: tuple[int, ...], grid: int) -> None:
    head = GlobalProjectionHead(8, hidden=16, out=4, grid=grid, spatial_dims=len(spatial))
    z = head(torch.randn(5, 8, *spatial))
    assert z.shape == (5, 4)


def test_global_head_is_independent_of_bottleneck_size_for_constant_maps() -> None:
    # Adaptive pooling: a constant map gives the same z whatever its size (what flattening would not allow).
    head = GlobalProjectionHead(3, hidden=8, out=2, grid=2)
    values = torch.randn(2, 3, 1, 1)
    torch.testing.assert_close(head(values.expand(2, 3, 4, 4)), head(values.expand(2, 3, 6, 2)))


def test_global_head_matches_manual_pool_and_mlp() -> None:
    head = GlobalProjectionHead(4, hidden=6, out=3, grid=2)
    x = torch.randn(2, 4, 4, 4)
    w1, w2 = head.mlp[0].weight, head.mlp[2].weight
    # 2x2 grid of a 4x4 map: the means of its four 2x2 quadrants, flattened channel-major.
    pooled = x.reshape(2, 4, 2, 2, 2, 2).mean(dim=(3, 5)).flatten(1)  # (B, C * 2 * 2)
    torch.testing.assert_close(head(x), torch.relu(pooled @ w1.T) @ w2.T)


def test_global_head_grid_tells_instance_normalised_maps_apart() -> None:
    # Two images whose instance-normalised maps differ only in where the activation is: a global average
    # pool (grid 1) sees every channel's mean, which instance norm makes equal, so both map to the same z
    # (the collapse this head's grid avoids); a 2x2 grid keeps the layout and separates them.
    left = torch.zeros(1, 3, 4, 4)
    left[..., :2] = 1.0
    x = torch.nn.functional.instance_norm(torch.cat([left, left.flip(-1)]))  # (2, 3, 4, 4)
    gap, grid = (
        GlobalProjectionHead(3, hidden=8, out=4, grid=1),
        GlobalProjectionHead(3, hidden=8, out=4, grid=2),
    )
    torch.testing.assert_close(gap(x)[0], gap(x)[1])
    assert (grid(x)[0] - grid(x)[1]).abs().max() > 1e-3


@pytest.mark.parametrize("dims", [2, 3])
def test_local_head_keeps_shape(dims: int) -> None:
    head = LocalProjectionHead(6, spatial_dims=dims)
    x = torch.randn(3, 6, *(5,) * dims)
    assert head(x).shape == x.shape


def test_local_head_acts_per_position() -> None:
    # 1x1 kernels: in eval mode (fixed BN statistics) permuting positions permutes the output the same way.
    head = LocalProjectionHead(4).eval()
    x = torch.randn(2, 4, 3, 5)
    perm = torch.randperm(15)
    flat = x.flatten(2)[:, :, perm].reshape(x.shape)
    torch.testing.assert_close(head(flat), head(x).flatten(2)[:, :, perm].reshape(x.shape))


@pytest.mark.parametrize(
    ("c_in", "hidden", "out", "grid", "dims"), [(256, 1024, 128, 4, 2), (32, 64, 16, 2, 3)]
)
def test_global_head_parameter_count(c_in: int, hidden: int, out: int, grid: int, dims: int) -> None:
    head = GlobalProjectionHead(c_in, hidden=hidden, out=out, grid=grid, spatial_dims=dims)
    assert sum(p.numel() for p in head.parameters()) == c_in * grid**dims * hidden + hidden * out


@pytest.mark.parametrize(("channels", "dims"), [(64, 2), (16, 3)])
def test_local_head_parameter_count(channels: int, dims: int) -> None:
    # Two bias-free C x C 1x1 convs plus the batch norm's scale and shift.
    head = LocalProjectionHead(channels, spatial_dims=dims)
    assert sum(p.numel() for p in head.parameters()) == 2 * channels * channels + 2 * channels


def test_heads_pass_gradients_to_every_parameter_and_the_input() -> None:
    x = torch.randn(4, 8, 6, 6, requires_grad=True)
    glob, loc = GlobalProjectionHead(8, hidden=16, out=4), LocalProjectionHead(8)
    (glob(x).square().sum() + loc(x).square().sum()).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, p in [*glob.named_parameters(), *loc.named_parameters()]:
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("dims", [2, 3])
def test_heads_on_basicunet_features(dims: int) -> None:
    net = build_network(
        "basicunet", spatial_dims=dims, in_channels=1, out_channels=3, features=(8, 8, 16, 32, 64, 8)
    )
    channels = net.feature_channels()
    x = torch.randn(2, 1, *(32,) * (dims - 1), 48)
    out = net(x, return_features=True)
    assert isinstance(out, NetOutput)
    glob = GlobalProjectionHead(channels["embedding"], hidden=32, out=16, spatial_dims=dims)
    loc = LocalProjectionHead(channels["scale_4"], spatial_dims=dims)
    z, f = glob(out.embedding), loc(out.features["scale_4"])
    assert z.shape == (2, 16)
    assert f.shape == out.features["scale_4"].shape
    # The contrastive losses' gradients must reach the encoder through both heads.
    (z.sum() + f.sum()).backward()
    assert net.net.conv_0.conv_0.conv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("make", "shape"),
    [
        (lambda: GlobalProjectionHead(8), (2, 8)),
        (lambda: GlobalProjectionHead(8), (2, 4, 3, 3)),
        (lambda: GlobalProjectionHead(8), (2, 8, 3, 3, 3)),
        (lambda: LocalProjectionHead(8), (2, 8, 3, 3, 3)),
        (lambda: LocalProjectionHead(8, spatial_dims=3), (2, 4, 3, 3, 3)),
    ],
    ids=["global-no-spatial", "global-channels", "global-dims", "local-dims", "local-channels"],
)
def test_bad_input_shape_raises_with_the_shape(make, shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"got shape"):
        make()(torch.zeros(shape))


@pytest.mark.parametrize(
    "make",
    [
        lambda: GlobalProjectionHead(0),
        lambda: GlobalProjectionHead(8, hidden=-1),
        lambda: GlobalProjectionHead(8, out=True),
        lambda: GlobalProjectionHead(8, grid=0),
        lambda: GlobalProjectionHead(8, spatial_dims=1),
        lambda: LocalProjectionHead(0),
        lambda: LocalProjectionHead(8, spatial_dims=1),
    ],
)
def test_bad_sizes_raise(make) -> None:
    with pytest.raises(ValueError, match="must be"):
        make()
