"""ACTION heads: pooled-cell window embeddings equal per-window pooling + projection; window counts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medcl.models.action_heads import (
    LatentProjection,
    WindowPredictor,
    WindowProjection,
    count_windows,
    window_embeddings,
)


@pytest.mark.parametrize(
    ("spatial", "window", "stride", "pool"), [((64, 48), 32, 16, 4), ((20, 24, 16), 8, 4, 2)]
)
def test_window_embeddings_match_a_per_window_loop(spatial, window, stride, pool) -> None:
    torch.manual_seed(0)
    n = len(spatial)
    logits = torch.randn(2, 3, *spatial)
    proj, pred = WindowProjection(3, n).eval(), WindowPredictor(3, n).eval()
    fast = window_embeddings(logits, window, stride, pool, proj, pred)  # (B, W, K p^n)
    adaptive = F.adaptive_avg_pool2d if n == 2 else F.adaptive_avg_pool3d
    starts = [range(0, s - window + 1, stride) for s in spatial]
    rows = []
    for corner in torch.cartesian_prod(*[torch.tensor(list(r)) for r in starts]).view(-1, n).tolist():
        crop = logits[(slice(None), slice(None), *[slice(c, c + window) for c in corner])]
        rows.append(
            pred(proj(adaptive(crop, pool))).flatten(1)
        )  # the reference: pool each window, then heads
    slow = torch.stack(rows, dim=1)
    assert fast.shape == slow.shape == (2, count_windows(spatial, window, stride, pool), 3 * pool**n)
    assert torch.allclose(fast, slow, atol=1e-5)


def test_window_counts_of_the_reference_settings() -> None:
    assert count_windows((112, 112, 80), 20, 10, 4) == 700  # the 3D reference
    assert count_windows((256, 256), 64, 32, 8) == 49  # every position (the 2D code skips the last: 36)


@pytest.mark.parametrize(("spatial", "grid"), [((8, 8), 4), ((6, 4, 4), 2), ((5, 7), 1)])
def test_latent_projection_pools_to_the_grid_then_projects(spatial, grid) -> None:
    n = len(spatial)
    head = LatentProjection(6, 5, grid=grid, spatial_dims=n)
    x = torch.randn(3, 6, *spatial)
    adaptive = F.adaptive_avg_pool2d if n == 2 else F.adaptive_avg_pool3d
    lin1, lin2 = head.mlp
    expected = lin2(lin1(adaptive(x, grid).flatten(1)))
    torch.testing.assert_close(head(x), expected)
    assert lin1.in_features == 6 * grid**n


def test_latent_projection_grid_separates_instance_normalised_layouts() -> None:
    # Same activations in mirrored places: equal channel means after instance norm, so a global pool
    # (the authors' grid 1) maps both images to one vector; a 2x2 grid does not.
    left = torch.zeros(1, 3, 4, 4)
    left[..., :2] = 1.0
    x = F.instance_norm(torch.cat([left, left.flip(-1)]))
    gap, grid = LatentProjection(3, 4, grid=1), LatentProjection(3, 4, grid=2)
    torch.testing.assert_close(gap(x)[0], gap(x)[1])
    assert (grid(x)[0] - grid(x)[1]).abs().max() > 1e-3


def test_representation_head_stacks_a_net_output_in_the_compute_dtype() -> None:
    from medcl.models.action_heads import RepresentationHead, decoder_stack
    from medcl.models.networks import build_network
    from medcl.precision import set_compute_dtype

    torch.manual_seed(0)
    net = build_network(
        spatial_dims=2, in_channels=1, out_channels=3, name="basicunet", features=[4, 4, 8, 8, 16, 4]
    )
    out = net(torch.randn(2, 1, 32, 32), return_features=True)
    channels = decoder_stack(out, [32, 32]).shape[1]
    head = RepresentationHead(channels, 8, 2)
    ref = head(decoder_stack(out, [16, 16]))  # fp32, stacked by the caller
    assert torch.allclose(head(out, [16, 16]), ref, atol=1e-6)
    set_compute_dtype(head, torch.bfloat16)
    seen = []
    head.block[0].register_forward_hook(lambda m, args, o: seen.append((args[0].dtype, o.dtype)))
    low = head(out, [16, 16])
    assert seen == [(torch.bfloat16, torch.bfloat16)]  # the stack itself was built in bf16
    assert low.dtype == torch.float32 and torch.allclose(low, ref, atol=0.05 * ref.abs().max().item())
    with pytest.raises(ValueError, match="size"):
        head(out)


def _center_tap_only(conv: torch.nn.Conv2d, weight: torch.Tensor) -> None:
    """Set a 3x3 convolution to a 1x1 one (``weight``: ``(D, C)``) in its center tap."""
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[:, :, 1, 1] = weight


def test_pyramid_head_equals_the_stack_head_for_a_pointwise_kernel() -> None:
    """conv(cat(up(e), f)) = up(conv_e(e)) + conv_f(f) when the kernel is pointwise: resizing is linear."""
    from medcl.models.action_heads import PyramidRepresentationHead, RepresentationHead
    from medcl.models.networks import NetOutput

    torch.manual_seed(0)
    out = NetOutput(logits=torch.zeros(2, 3, 16, 16), features={"scale_1": torch.randn(2, 4, 16, 16)},
                    embedding=torch.randn(2, 6, 8, 8))  # fmt: skip
    stack = RepresentationHead(10, 5, 2)
    pyramid = PyramidRepresentationHead({"embedding": 6, "scale_1": 4}, 5, 2)
    w = torch.randn(5, 10)
    _center_tap_only(stack.block[0], w)
    _center_tap_only(pyramid.convs["embedding"], w[:, :6])  # the stack is [embedding, scale_1]
    _center_tap_only(pyramid.convs["scale_1"], w[:, 6:])
    pyramid.proj.load_state_dict(stack.block[1].state_dict())
    torch.testing.assert_close(pyramid(out, [16, 16]), stack(out, [16, 16]), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("spatial", "size"), [((32, 32), (16, 16)), ((16, 16, 32), (16, 16, 32))])
def test_pyramid_head_on_a_network_output(spatial, size) -> None:
    """(B, D, *size) out, every convolution gets a gradient, bf16 inside gives float32 out close to the
    float32 one; a network whose maps differ from the head's is refused."""
    from medcl.models.action_heads import PyramidRepresentationHead
    from medcl.models.networks import build_network
    from medcl.precision import set_compute_dtype

    torch.manual_seed(0)
    n = len(spatial)
    net = build_network(
        spatial_dims=n, in_channels=1, out_channels=3, name="basicunet", features=[4, 4, 8, 8, 16, 4]
    )
    out = net(torch.randn(2, 1, *spatial), return_features=True)
    channels = {"embedding": out.embedding.shape[1], **{k: f.shape[1] for k, f in out.features.items()}}
    head = PyramidRepresentationHead(channels, 8, n)
    rep = head(out, size)
    assert rep.shape == (2, 8, *size) and rep.dtype == torch.float32
    rep.square().sum().backward()
    assert all(c.weight.grad is not None and c.weight.grad.abs().sum() > 0 for c in head.convs.values())
    set_compute_dtype(head, torch.bfloat16)
    low = head(out, size)
    assert low.dtype == torch.float32
    assert (low - rep).abs().max() <= 0.05 * rep.abs().max()
    with pytest.raises(ValueError, match="built for maps"):
        PyramidRepresentationHead({"embedding": 16}, 8, n)(out, size)


def test_pyramid_head_pools_maps_finer_than_the_output_and_sums_coarser_ones() -> None:
    """By hand: size 8x8, an 8x8 bottleneck and a 16x16 map -> proj(conv_e(e) + conv_f(avgpool2(f)))."""
    from medcl.models.action_heads import PyramidRepresentationHead
    from medcl.models.networks import NetOutput

    torch.manual_seed(0)
    e, f = torch.randn(2, 6, 8, 8), torch.randn(2, 4, 16, 16)
    head = PyramidRepresentationHead({"embedding": 6, "scale_1": 4}, 5, 2)
    out = NetOutput(logits=torch.zeros(2, 3, 16, 16), features={"scale_1": f}, embedding=e)
    ref = head.proj(head.convs["embedding"](e) + head.convs["scale_1"](F.avg_pool2d(f, 2)))
    torch.testing.assert_close(head(out, [8, 8]), ref, atol=1e-5, rtol=1e-5)
