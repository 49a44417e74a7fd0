"""Local loss L^R / L^D: region layouts, closed forms, a slow reference, invariances, gradients, errors.

The loss holds no parameters and no random state: the trainable window embedding is the caller's
(:class:`~medcl.models.heads.RegionProjectionHead`, passed as ``embed``) and random regions come from the
generator it is given.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from medcl.losses.local_contrast import LocalContrastiveLoss, grid13_positions, nearest_regions
from medcl.models.heads import RegionProjectionHead

TAU = 0.1


def reference_positions(layout, spatial, k):
    """Region corners written out: the stride-K tiling by loops, or the authors' 13 regions literally."""
    if layout == "all":
        return list(itertools.product(*[range(0, (size // k) * k, k) for size in spatial]))
    a, b = spatial[0] - k, spatial[1] - k
    return [
        (0, 0), (0, b // 2), (0, b),
        (a // 2, 0), (a // 2, b // 2), (a // 2, b),
        (a, 0), (a, b // 2), (a, b),
        (a // 4, b // 4), (a // 4, 3 * b // 4), (3 * a // 4, b // 4), (3 * a // 4, 3 * b // 4),
    ]  # fmt: skip


def reference_neighbours(positions, count=5):
    """For each region, the ``count`` others with the nearest corners, ties by index (sorted tuples)."""
    out = []
    for u, pu in enumerate(positions):
        others = [
            (sum((x - y) ** 2 for x, y in zip(pu, pv, strict=True)), v)
            for v, pv in enumerate(positions)
            if v != u
        ]
        out.append({v for _, v in sorted(others)[:count]})
    return out


def slow_local_loss(f1, f2, positions, weight, strategy, neighbours, partition_ids=None, volume_ids=None):
    """The definitions with loops: embed each window, then for each anchor map m and region u sum Eq. 2.

    Map m = view·B + image. Negatives: regions u' ≠ u (or the 5 nearest) of both views of m's image.
    Positives: region u of the other view; under LD also of every map of a same-partition image of another
    volume. The sum is divided by R·2B.
    """
    b = f1.shape[0]
    maps = [f1[i] for i in range(b)] + [f2[i] for i in range(b)]
    k = round((weight.shape[1] / f1.shape[1]) ** (1 / len(positions[0]))) if weight is not None else None

    def embed(fm, pos):
        if weight is None:  # window mean; the tests using it build windows of known size
            window = fm[(slice(None), *(slice(p, p + K_MEAN) for p in pos))]
            return window.reshape(fm.shape[0], -1).mean(1)
        window = fm[(slice(None), *(slice(p, p + k) for p in pos))]
        return weight @ window.reshape(-1)

    emb = [[embed(fm, pos) for pos in positions] for fm in maps]
    emb = [[e / e.norm() for e in row] for row in emb]
    r = len(positions)
    negative_regions = (
        reference_neighbours(positions) if neighbours else [set(range(r)) - {u} for u in range(r)]
    )
    total = 0.0
    for m in range(2 * b):
        image = m % b
        for u in range(r):
            anchor = emb[m][u]
            negative_sum = sum(
                math.exp(float(anchor @ emb[own][w]) / TAU)
                for own in (image, image + b)
                for w in negative_regions[u]
            )
            for m2 in range(2 * b):
                image2 = m2 % b
                same_partition_other_volume = (
                    strategy == "LD"
                    and partition_ids[image2] == partition_ids[image]
                    and volume_ids[image2] != volume_ids[image]
                )
                if m2 != m and (image2 == image or same_partition_other_volume):
                    numerator = math.exp(float(anchor @ emb[m2][u]) / TAU)
                    total += -math.log(numerator / (numerator + negative_sum))
    return total / (r * 2 * b)


K_MEAN = 3  # window size used by slow_local_loss when embeddings are window means


def random_maps(b=4, c=3, size=(14, 14), seed=0):
    g = torch.Generator().manual_seed(seed)
    f1 = torch.randn(b, c, *size, generator=g, dtype=torch.float64)
    f2 = f1 + 0.5 * torch.randn(b, c, *size, generator=g, dtype=torch.float64)
    return f1, f2


# 2 volumes x 2 partitions: images (v0,p0), (v0,p1), (v1,p0), (v1,p1).
PARTITIONS = torch.tensor([0, 1, 0, 1])
VOLUMES = torch.tensor([0, 0, 1, 1])


@pytest.mark.parametrize("strategy", ["LR", "LD"])
@pytest.mark.parametrize("negatives", ["all", "neighbours5"])
@pytest.mark.parametrize("regions", ["all", "grid13", 6])
def test_matches_slow_reference(regions, negatives, strategy):
    f1, f2 = random_maps()
    loss_fn = LocalContrastiveLoss(TAU, 3, regions, negatives, strategy)
    embed = RegionProjectionHead(3, 3, out=8).double()
    if isinstance(regions, int):  # the same draw as the forward call below
        positions = [
            tuple(p) for p in loss_fn.region_positions((14, 14), torch.Generator().manual_seed(4)).tolist()
        ]
    else:
        positions = reference_positions(regions, (14, 14), 3)
    loss = loss_fn(f1, f2, PARTITIONS, VOLUMES, embed=embed, generator=torch.Generator().manual_seed(4))
    expected = slow_local_loss(
        f1,
        f2,
        positions,
        embed.linear.weight.detach(),
        strategy,
        negatives == "neighbours5",
        PARTITIONS,
        VOLUMES,
    )
    assert loss.item() == pytest.approx(expected, rel=1e-10)


def test_matches_slow_reference_with_window_means():
    f1, f2 = random_maps(seed=1)
    loss_fn = LocalContrastiveLoss(TAU, K_MEAN, "grid13")
    expected = slow_local_loss(f1, f2, reference_positions("grid13", (14, 14), K_MEAN), None, "LR", False)
    assert loss_fn(f1, f2).item() == pytest.approx(expected, rel=1e-10)


def test_matches_slow_reference_in_3d():
    f1, f2 = random_maps(b=2, c=2, size=(4, 5, 4), seed=2)
    loss_fn = LocalContrastiveLoss(TAU, 2, "all", "neighbours5", spatial_dims=3)
    embed = RegionProjectionHead(2, 2, out=4, spatial_dims=3).double()
    positions = reference_positions("all", (4, 5, 4), 2)
    assert len(positions) == 2 * 2 * 2
    expected = slow_local_loss(f1, f2, positions, embed.linear.weight.detach(), "LR", True)
    assert loss_fn(f1, f2, embed=embed).item() == pytest.approx(expected, rel=1e-10)


def one_hot_regions(b: int, side: int) -> torch.Tensor:
    """(b, side², side, side) maps whose pixel (y, x) is the unit vector e_{y·side + x}: 1x1 regions orthogonal."""
    eye = torch.eye(side * side, dtype=torch.float64).view(side * side, side, side)
    return eye.expand(b, -1, -1, -1).clone()


@pytest.mark.parametrize(("negatives", "count"), [("all", 2 * (9 - 1)), ("neighbours5", 2 * 5)])
def test_aligned_views_closed_form(negatives, count):
    # f1 == f2, R = 9 orthogonal 1x1 regions: each anchor's positive has s = 1 and its `count` negatives
    # (both views) s = 0, so L = log(1 + count · e^{−1/τ}) (mean over the 2B·R anchors).
    f = one_hot_regions(3, 3)
    loss = LocalContrastiveLoss(TAU, 1, "all", negatives)(f, f.clone())
    assert loss.item() == pytest.approx(math.log(1 + count * math.exp(-1 / TAU)), rel=1e-12)


@pytest.mark.parametrize(("negatives", "count"), [("all", 2 * 12), ("neighbours5", 2 * 5)])
def test_grid13_closed_form_with_3x3_windows(negatives, count):
    # On a 16x16 map with K = 3 the 13 windows do not overlap (corners at 0, 6, 13 and 3, 9); each is
    # filled with its own unit vector, so the window means are orthogonal: L = log(1 + count · e^{−1/τ}).
    f = torch.zeros(2, 13, 16, 16, dtype=torch.float64)
    for u, (y, x) in enumerate(reference_positions("grid13", (16, 16), 3)):
        f[:, u, y : y + 3, x : x + 3] = 1.0
    loss = LocalContrastiveLoss(TAU, 3, "grid13", negatives)(f, f.clone())
    assert loss.item() == pytest.approx(math.log(1 + count * math.exp(-1 / TAU)), rel=1e-12)


def test_ld_closed_form():
    # Four identical images, 2 volumes x 2 partitions: besides its other view, each anchor region has the
    # same region in both views of the other volume's same-partition image as positives (3 in all, s = 1),
    # each with the 2·(R − 1) own-image negatives at s = 0: L = 3 log(1 + 16 e^{−1/τ}).
    f = one_hot_regions(4, 3)
    loss = LocalContrastiveLoss(TAU, 1, "all", strategy="LD")(f, f.clone(), PARTITIONS, VOLUMES)
    assert loss.item() == pytest.approx(3 * math.log(1 + 16 * math.exp(-1 / TAU)), rel=1e-12)


def test_ld_with_no_cross_volume_partner_equals_lr():
    f1, f2 = random_maps(seed=3)
    lr = LocalContrastiveLoss(TAU, 3, "grid13")
    ld = LocalContrastiveLoss(TAU, 3, "grid13", strategy="LD")
    embed = RegionProjectionHead(3, 3, out=8).double()
    partitions = torch.arange(4)  # every image alone in its partition
    assert ld(f1, f2, partitions, VOLUMES, embed=embed).item() == pytest.approx(
        lr(f1, f2, embed=embed).item(), rel=1e-12
    )


@pytest.mark.parametrize(
    ("spatial", "k", "count"), [((14, 11), 3, 4 * 3), ((48, 48), 3, 256), ((9, 9, 7), 2, 4 * 4 * 3)]
)
def test_all_regions_count(spatial, k, count):
    loss_fn = LocalContrastiveLoss(region_size=k, spatial_dims=len(spatial))
    positions = loss_fn.region_positions(spatial)
    assert positions.shape == (count, len(spatial))
    assert [tuple(p) for p in positions.tolist()] == reference_positions("all", spatial, k)


def test_grid13_positions_on_a_48_map():
    # a = b = 48 − 3 = 45: rows/columns 0, 22, 45 and quarter points 11, 33.
    expected = [
        (0, 0), (0, 22), (0, 45), (22, 0), (22, 22), (22, 45), (45, 0), (45, 22), (45, 45),
        (11, 11), (11, 33), (33, 11), (33, 33),
    ]  # fmt: skip
    assert [tuple(p) for p in grid13_positions((48, 48), 3).tolist()] == expected


def test_grid13_neighbours_on_a_48_map():
    neighbours = nearest_regions(grid13_positions((48, 48), 3))
    # Centre (22, 22): the 4 quarter points (squared distance 242), then (0, 22) and (22, 0) tie at 484:
    # the lower index, 1, wins.
    assert set(neighbours[4].nonzero().flatten().tolist()) == {9, 10, 11, 12, 1}
    # Corner (0, 0): (11, 11) 242; (0, 22), (22, 0) 484; (22, 22) 968; then (11, 33) and (33, 11) tie at 1210.
    assert set(neighbours[0].nonzero().flatten().tolist()) == {9, 1, 3, 4, 10}
    assert neighbours.sum(1).tolist() == [5] * 13 and not neighbours.diagonal().any()
    reference = reference_neighbours([tuple(p) for p in grid13_positions((48, 48), 3).tolist()])
    assert [set(row.nonzero().flatten().tolist()) for row in neighbours] == reference


def test_random_regions_are_distinct_tiling_windows_and_reproducible():
    loss_fn = LocalContrastiveLoss(regions=10)
    g = torch.Generator().manual_seed(7)
    first = loss_fn.region_positions((24, 24), g)
    assert torch.equal(first, loss_fn.region_positions((24, 24), torch.Generator().manual_seed(7)))
    assert not torch.equal(first, loss_fn.region_positions((24, 24), g))  # the next draw of g is new
    assert len({tuple(p) for p in first.tolist()}) == 10
    assert ((first % 3) == 0).all() and (first <= 21).all()
    # Without a generator: torch's global random state, which the engine seeds and checkpoints.
    torch.manual_seed(1)
    global_draw = loss_fn.region_positions((24, 24))
    torch.manual_seed(1)
    assert torch.equal(global_draw, loss_fn.region_positions((24, 24)))
    # The same generator in forward: the same regions, the same loss.
    f1, f2 = random_maps(size=(24, 24))
    a = loss_fn(f1, f2, generator=torch.Generator().manual_seed(3))
    b = loss_fn(f1, f2, generator=torch.Generator().manual_seed(3))
    assert a.item() == b.item()


@pytest.mark.parametrize("strategy", ["LR", "LD"])
def test_batch_permutation_and_view_swap(strategy):
    f1, f2 = random_maps(seed=4)
    loss_fn = LocalContrastiveLoss(TAU, 3, "all", "neighbours5", strategy)
    embed = RegionProjectionHead(3, 3, out=8).double()
    reference = loss_fn(f1, f2, PARTITIONS, VOLUMES, embed=embed).item()
    order = torch.tensor([2, 0, 3, 1])
    permuted = loss_fn(f1[order], f2[order], PARTITIONS[order], VOLUMES[order], embed=embed)
    assert permuted.item() == pytest.approx(reference, rel=1e-12)
    assert loss_fn(f2, f1, PARTITIONS, VOLUMES, embed=embed).item() == pytest.approx(reference, rel=1e-12)


@pytest.mark.parametrize("regions", ["all", "grid13"])
def test_gradients_finite_and_loss_falls(regions):
    torch.manual_seed(0)
    f1 = torch.nn.Parameter(torch.randn(2, 4, 16, 16))
    f2 = torch.nn.Parameter(torch.randn(2, 4, 16, 16))
    loss_fn = LocalContrastiveLoss(TAU, 3, regions)
    embed = RegionProjectionHead(4, 3, out=16)
    optimizer = torch.optim.Adam([f1, f2, *embed.parameters()], lr=0.05)
    losses = []
    for _ in range(20):
        loss = loss_fn(f1, f2, embed=embed)
        optimizer.zero_grad()
        loss.backward()
        for p in (f1, f2, embed.linear.weight):
            assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_the_loss_holds_no_state_and_the_embedding_draws_like_the_linear_layer_it_replaces():
    loss_fn = LocalContrastiveLoss(region_size=3, regions="grid13")
    assert list(loss_fn.parameters()) == [] and list(loss_fn.buffers()) == []
    # pretrain_local's numbers for a seed are unchanged: the head initialises exactly as the loss's old
    # nn.Linear(C * K^2, D, bias=False) did, drawing the same numbers from the global random state.
    torch.manual_seed(0)
    head = RegionProjectionHead(5, 3, out=128)
    torch.manual_seed(0)
    linear = torch.nn.Linear(5 * 9, 128, bias=False)
    assert torch.equal(head.linear.weight, linear.weight)
    f1, f2 = torch.randn(2, 5, 16, 16), torch.randn(2, 5, 16, 16)
    assert loss_fn(f1, f2, embed=head).item() == loss_fn(f1, f2, embed=linear).item()


class TestErrors:
    f = torch.randn(4, 3, 14, 14)

    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"temperature": 0.0}, "temperature must be positive"),
            ({"region_size": 0}, "region_size"),
            ({"regions": "grid9"}, "regions must be one of all, grid13 or a number"),
            ({"regions": 0}, "at least 1"),
            ({"negatives": "neighbours3"}, "negatives must be one of all, neighbours5"),
            ({"strategy": "LX"}, "Unknown local strategy 'LX'; choose one of LR, LD"),
            ({"regions": "grid13", "spatial_dims": 3}, "2D maps only"),
            ({"spatial_dims": 4}, "spatial_dims must be 2 or 3"),
        ],
    )
    def test_constructor(self, kwargs, message):
        with pytest.raises(ValueError, match=message):
            LocalContrastiveLoss(**kwargs)

    def test_shape_mismatch(self):
        with pytest.raises(ValueError, match="same shape"):
            LocalContrastiveLoss()(self.f, self.f[:2])

    def test_wrong_dimensionality(self):
        with pytest.raises(ValueError, match="3 spatial dims"):
            LocalContrastiveLoss(spatial_dims=3)(self.f, self.f)

    def test_channels(self):
        with pytest.raises(ValueError, match="RegionProjectionHead expects windows of 72 values"):
            LocalContrastiveLoss()(self.f, self.f, embed=RegionProjectionHead(8, 3))

    def test_ld_needs_ids(self):
        with pytest.raises(ValueError, match=r"LD needs integer partition_ids of shape \(4,\)"):
            LocalContrastiveLoss(strategy="LD")(self.f, self.f)
        with pytest.raises(ValueError, match="volume_ids"):
            LocalContrastiveLoss(strategy="LD")(self.f, self.f, PARTITIONS, VOLUMES[:2])

    def test_too_many_random_regions(self):
        with pytest.raises(ValueError, match="Cannot draw 17 distinct regions"):
            LocalContrastiveLoss(regions=17)(self.f, self.f)

    def test_grid13_map_too_small(self):
        with pytest.raises(ValueError, match="at least K \\+ 4 = 7 pixels"):
            LocalContrastiveLoss(regions="grid13")(self.f[..., :6, :6], self.f[..., :6, :6])

    def test_map_smaller_than_a_window(self):
        with pytest.raises(ValueError, match="smaller than one 3-wide window"):
            LocalContrastiveLoss()(self.f[..., :2, :2], self.f[..., :2, :2])
