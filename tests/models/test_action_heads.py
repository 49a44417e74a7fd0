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
