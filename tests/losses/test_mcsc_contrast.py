"""MCSC's class-balanced cross-supervised contrast: hand-computed values, a slow reference, invariances."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from medcl.losses.mcsc_contrast import (
    block_groups,
    class_balanced_supcon,
    gather_labels,
    gather_pixels,
    grouped_supcon_loss,
    random_groups,
    tile_blocks,
)

TAU = 0.1


def slow_reference(z: torch.Tensor, y: torch.Tensor, tau: float = TAU, eps: float = 1e-6) -> float:
    """Per-pixel Python loops over the definition: D_i, P(i), anchors without positives skipped."""
    z = F.normalize(z.double(), dim=1)
    labels = y.tolist()
    count = {c: labels.count(c) for c in set(labels)}
    total, anchors = 0.0, 0
    for i, yi in enumerate(labels):
        positives = [p for p, yp in enumerate(labels) if p != i and yp == yi]
        if not positives:
            continue
        d = sum(
            math.exp(float(z[i] @ z[a]) / tau) / (count[ya] - (ya == yi))
            for a, ya in enumerate(labels)
            if a != i
        )
        total += sum(-(float(z[i] @ z[p]) / tau - math.log(d + eps)) for p in positives) / len(positives)
        anchors += 1
    return total / anchors


def loss_of(z: torch.Tensor, y: torch.Tensor, k: int | None = None, **kw) -> torch.Tensor:
    """The kernel on one group of all-valid pixels."""
    k = k or int(y.max()) + 1
    return grouped_supcon_loss(z[None], y[None], torch.ones_like(y, dtype=torch.bool)[None], TAU, k, **kw)


def test_hand_computed_four_pixels_two_classes() -> None:
    # Pixels 0, 1 of class 0 along e1 and e2; pixels 2, 3 of class 1 along e1 and -e1. Every class has two
    # pixels, so D_i = (the other pixel of its class) / 1 + (both pixels of the other class) / 2.
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [-1.0, 0.0]])
    y = torch.tensor([0, 0, 1, 1])
    e, eps = math.exp, 1e-6
    d = [
        e(0.0) + (e(10.0) + e(-10.0)) / 2,  # pixel 0: s = 0 to pixel 1; +1, -1 to pixels 2, 3
        e(0.0) + (e(0.0) + e(0.0)) / 2,  # pixel 1: orthogonal to everything
        e(-10.0) + (e(10.0) + e(0.0)) / 2,  # pixel 2: s = -1 to pixel 3; +1, 0 to pixels 0, 1
        e(-10.0) + (e(-10.0) + e(0.0)) / 2,  # pixel 3: s = -1 to pixels 2 and 0; 0 to pixel 1
    ]
    positive = [0.0, 0.0, -10.0, -10.0]  # z_i . z_p / tau of each pixel's single positive
    ell = [math.log(d[i] + eps) - positive[i] for i in range(4)]
    assert float(loss_of(z, y)) == pytest.approx(sum(ell) / 4, rel=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_the_slow_reference_on_random_inputs(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(40, 8, generator=g)
    y = torch.randint(0, 4, (40,), generator=g)
    assert float(loss_of(z, y, 4)) == pytest.approx(slow_reference(z, y), rel=1e-5)


def test_groups_are_averaged_and_padding_is_ignored() -> None:
    g = torch.Generator().manual_seed(3)
    z = torch.randn(2, 12, 6, generator=g)
    y = torch.randint(0, 3, (2, 12), generator=g)
    valid = torch.ones(2, 12, dtype=torch.bool)
    valid[1, 8:] = False  # padding: neither anchor nor candidate
    expected = (slow_reference(z[0], y[0]) + slow_reference(z[1, :8], y[1, :8])) / 2
    assert float(grouped_supcon_loss(z, y, valid, TAU, 3)) == pytest.approx(expected, rel=1e-5)
    # Chunked (one group per chunk, checkpointed) gives the same value and gradient.
    za = z.clone().requires_grad_()
    zb = z.clone().requires_grad_()
    grouped_supcon_loss(za, y, valid, TAU, 3).backward()
    chunked = grouped_supcon_loss(zb, y, valid, TAU, 3, max_pairs=1)
    chunked.backward()
    assert float(chunked.detach()) == pytest.approx(expected, rel=1e-5)
    torch.testing.assert_close(za.grad, zb.grad)


def test_invariant_to_pixel_permutation() -> None:
    g = torch.Generator().manual_seed(4)
    z = torch.randn(30, 5, generator=g)
    y = torch.randint(0, 3, (30,), generator=g)
    perm = torch.randperm(30, generator=g)
    torch.testing.assert_close(loss_of(z, y, 3), loss_of(z[perm], y[perm], 3))


def test_singleton_class_is_no_anchor_but_stays_in_denominators() -> None:
    g = torch.Generator().manual_seed(5)
    z = torch.randn(9, 4, generator=g)
    y = torch.tensor([0, 0, 0, 1, 1, 1, 1, 0, 2])  # class 2 has one pixel
    _, anchor = class_balanced_supcon(z[None], y[None], torch.ones(1, 9, dtype=torch.bool), TAU, 3)
    assert anchor[0].tolist() == [True] * 8 + [False]
    assert float(loss_of(z, y, 3)) == pytest.approx(slow_reference(z, y), rel=1e-5)
    # Moving the singleton changes the others' denominators, hence the loss.
    z2 = z.clone()
    z2[8] = -z2[8]
    assert float(loss_of(z2, y, 3)) != pytest.approx(float(loss_of(z, y, 3)), rel=1e-4)


def test_prevalence_weighting_a_rare_class_counts_as_much_as_a_frequent_one() -> None:
    # Repeating class 1's pixels 5 times leaves its mean exp-similarity, hence every class-0 anchor's
    # denominator and loss, unchanged: a class weighs the same in D_i whatever its pixel count.
    g = torch.Generator().manual_seed(6)
    z0, z1 = torch.randn(6, 4, generator=g), torch.randn(3, 4, generator=g)
    y0, y1 = torch.zeros(6, dtype=torch.long), torch.ones(3, dtype=torch.long)

    def class0_losses(copies: int, balanced: bool = True) -> torch.Tensor:
        z, y = torch.cat([z0, z1.repeat(copies, 1)]), torch.cat([y0, y1.repeat(copies)])
        if balanced:
            ell, anchor = class_balanced_supcon(
                z[None], y[None], torch.ones_like(y[None], dtype=torch.bool), TAU, 2
            )
            assert anchor.all()
            return ell[0, :6]
        # Plain SupCon (Khosla et al.) for contrast: an unweighted sum in the denominator.
        zn = F.normalize(z, dim=1)
        logits = (zn @ zn.T / TAU).fill_diagonal_(float("-inf"))[:6]
        positive = (zn[:6] @ zn[:6].T / TAU).fill_diagonal_(0).sum(1) / 5
        return torch.logsumexp(logits, 1) - positive

    torch.testing.assert_close(class0_losses(1), class0_losses(5))
    assert not torch.allclose(class0_losses(1, balanced=False), class0_losses(5, balanced=False))


def test_gradients_finite_and_nonzero_and_loss_falls() -> None:
    g = torch.Generator().manual_seed(7)
    z = torch.randn(1, 64, 8, generator=g).requires_grad_()
    y = torch.randint(0, 3, (1, 64), generator=g)
    valid = torch.ones(1, 64, dtype=torch.bool)
    opt = torch.optim.SGD([z], lr=0.5)
    first = None
    for _ in range(20):
        loss = grouped_supcon_loss(z, y, valid, TAU, 3)
        opt.zero_grad()
        loss.backward()
        assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
        first = first if first is not None else float(loss.detach())
        opt.step()
    assert float(loss.detach()) < first
    # Tiny temperatures stay finite (the exp-sums are shifted by each row's max).
    z2 = z.detach().clone().requires_grad_()
    grouped_supcon_loss(z2, y, valid, 0.005, 3).backward()
    assert torch.isfinite(z2.grad).all()


def test_tiling_covers_every_pixel_once() -> None:
    for shape, b in (((10, 9), 4), ((7, 7), 7), ((5, 6, 7), 2), ((3, 3), 8)):
        index, valid = tile_blocks(shape, b)
        covered = index[valid].sort().values
        assert torch.equal(covered, torch.arange(math.prod(shape)))
    assert tile_blocks((5, 4), 2)[1].sum(1).tolist() == [4, 4, 6, 6]
    with pytest.raises(ValueError, match="block_size"):
        tile_blocks((8, 8), 0)


def test_block_groups_shuffle_per_image_and_skip_background_blocks() -> None:
    labels = torch.zeros(2, 3, 8, 8, dtype=torch.long)
    labels[:, :, :4, :4] = 1  # only the top-left 4x4 block of each image has foreground
    torch.manual_seed(0)
    index, valid = block_groups(labels, 4)  # 4 blocks per image
    lab = gather_labels(labels.flatten(1), index)  # (G, V, Q)
    assert index.shape[1:] == (2, 3 * 16) and valid.all()
    # A group is kept iff some image put its foreground block there; each image's block goes to one group.
    assert 1 <= index.shape[0] <= 3
    assert int((lab == 1).sum()) == 2 * 3 * 16  # every foreground pixel of both views is contrasted
    # The two views of an image share the block (same positions), different images may differ.
    assert torch.equal(index[:, 0], index[:, 1])
    none = block_groups(torch.zeros(2, 3, 8, 8, dtype=torch.long), 4)[0]
    assert none.shape[0] == 0


def test_random_groups_cap_each_class_per_view() -> None:
    torch.manual_seed(0)
    labels = torch.randint(0, 3, (2, 2, 16, 16))
    index, valid = random_groups(labels, 10, 3)
    lab = gather_labels(labels.flatten(1), index)
    assert index.shape == (1, 2, 30)
    for v in range(2):
        assert torch.bincount(lab[0, v][valid[0, v]], minlength=3).tolist() == [10, 10, 10]
        assert index[0, v][valid[0, v]].unique().numel() == 30  # without replacement
    sparse = torch.zeros(2, 1, 4, 4, dtype=torch.long)
    sparse[:, 0, 0, 0] = 2  # one pixel of class 2 per view: fewer than the cap
    index, valid = random_groups(sparse, 5, 3)
    assert valid.sum().item() == 2 * (5 + 1)


def test_gather_pixels_follows_the_flat_layout() -> None:
    f = torch.arange(2 * 3 * 4 * 5, dtype=torch.float).reshape(2, 3, 4, 5)
    index = torch.tensor([[0, 19, 20, 39]])
    out = gather_pixels(f, index)  # (1, 4, 3)
    torch.testing.assert_close(out[0, 1], f[0, :, 3, 4])
    torch.testing.assert_close(out[0, 2], f[1, :, 0, 0])
