"""Global loss G^R / G^{D-} / G^D: closed forms, exact masks, a slow reference, invariances, DDP, errors."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from medcl.losses.global_contrast import GLOBAL_STRATEGIES, GlobalContrastiveLoss

REPO = Path(__file__).resolve().parents[2]


def slow_global_loss(z, slice_ids, partition_ids, volume_ids, strategy: str, temperature: float) -> float:
    """The paper's definitions written out with loops: sets Λ⁺(i), Λ⁻(i), then Eq. 1 with exp and log."""
    z = [row / row.norm() for row in z.double()]
    s, p, v = slice_ids.tolist(), partition_ids.tolist(), volume_ids.tolist()
    n = len(z)

    def is_positive(i, j):
        if i == j:
            return False
        other_view = s[i] == s[j]
        across_volumes = p[i] == p[j] and v[i] != v[j]
        return other_view or (strategy == "GD" and across_volumes)

    def is_negative(i, k):
        return s[i] != s[k] if strategy == "GR" else p[i] != p[k]

    total = 0.0
    for i in range(n):
        negative_sum = sum(math.exp(float(z[i] @ z[k]) / temperature) for k in range(n) if is_negative(i, k))
        for j in range(n):
            if is_positive(i, j):
                numerator = math.exp(float(z[i] @ z[j]) / temperature)
                total += -math.log(numerator / (numerator + negative_sum))
    return total / n


def make_batch(volumes: int, partitions: int, views: int, dim: int = 6, seed: int = 0, shuffle: bool = True):
    """Random embeddings and ids for volumes x partitions slices with ``views`` views each."""
    g = torch.Generator().manual_seed(seed)
    slice_ids = torch.arange(volumes * partitions).repeat_interleave(views)  # (N,)
    partition_ids, volume_ids = slice_ids % partitions, slice_ids // partitions
    z = torch.randn(slice_ids.shape[0], dim, generator=g, dtype=torch.float64)
    if shuffle:
        order = torch.randperm(slice_ids.shape[0], generator=g)
        return z[order], slice_ids[order] * 10 + 3, partition_ids[order], volume_ids[order]
    return z, slice_ids, partition_ids, volume_ids


def bool_matrix(rows: str) -> list[list[bool]]:
    return [[c == "1" for c in row] for row in rows.split()]


# 2 volumes x 3 partitions x 2 views, image i = volume·6 + partition·2 + view (slice = volume·3 + partition).
HAND_SLICES = torch.arange(6).repeat_interleave(2)
HAND_PARTITIONS = HAND_SLICES % 3
HAND_VOLUMES = HAND_SLICES // 3
OTHER_VIEW = """
    010000000000 100000000000 000100000000 001000000000 000001000000 000010000000
    000000010000 000000100000 000000000100 000000001000 000000000001 000000000010
"""
OTHER_SLICE = """
    001111111111 001111111111 110011111111 110011111111 111100111111 111100111111
    111111001111 111111001111 111111110011 111111110011 111111111100 111111111100
"""
OTHER_PARTITION = """
    001111001111 001111001111 110011110011 110011110011 111100111100 111100111100
    001111001111 001111001111 110011110011 110011110011 111100111100 111100111100
"""
GD_POSITIVES = """
    010000110000 100000110000 000100001100 001000001100 000001000011 000010000011
    110000010000 110000100000 001100000100 001100001000 000011000001 000011000010
"""
EXPECTED_MASKS = {
    "GR": (OTHER_VIEW, OTHER_SLICE),
    "GD-": (OTHER_VIEW, OTHER_PARTITION),
    "GD": (GD_POSITIVES, OTHER_PARTITION),
}


@pytest.mark.parametrize("strategy", GLOBAL_STRATEGIES)
def test_masks_on_a_hand_built_batch(strategy):
    positives, negatives = GlobalContrastiveLoss(strategy).pair_masks(
        HAND_SLICES, HAND_PARTITIONS, HAND_VOLUMES
    )
    expected_positives, expected_negatives = EXPECTED_MASKS[strategy]
    assert positives.tolist() == bool_matrix(expected_positives)
    assert negatives.tolist() == bool_matrix(expected_negatives)


def test_gd_same_partition_same_volume_other_slice_is_neither_positive_nor_negative():
    # Images 0, 1: volume 0 partition 0, two different slices; image 2: volume 1 partition 0; 3: partition 1.
    slices, partitions, volumes = (
        torch.tensor([0, 1, 2, 3]),
        torch.tensor([0, 0, 0, 1]),
        torch.tensor([0, 0, 1, 1]),
    )
    positives, negatives = GlobalContrastiveLoss("GD").pair_masks(slices, partitions, volumes)
    assert not positives[0, 1] and not negatives[0, 1]
    assert positives[0, 2] and positives[1, 2] and negatives[0, 3]


@pytest.mark.parametrize("n", [3, 6])
def test_gr_aligned_views_closed_form(n):
    # n slices x 2 identical views, slices orthogonal: each of the 2n pairs costs log(1 + (2n − 2) e^{−1/τ}).
    z = torch.cat([torch.eye(n), torch.eye(n)]).double()
    ids = torch.arange(n).repeat(2)
    loss = GlobalContrastiveLoss("GR", temperature=0.1)(z, ids, ids % 2, ids)
    assert loss.item() == pytest.approx(math.log(1 + (2 * n - 2) * math.exp(-10)), rel=1e-12)


def test_gd_closed_form():
    # 2 volumes x 2 partitions x 2 views; every image of partition p is the unit vector e_p. An anchor has
    # 3 positives (its other view, both views of the other volume's slice) at s = 1 and 4 negatives at s = 0:
    # L = 8 anchors · 3 · log(1 + 4 e^{−1/τ}) / 8 = 3 log(1 + 4 e^{−1/τ}).
    z, slice_ids, partition_ids, volume_ids = make_batch(2, 2, 2, shuffle=False)
    z = torch.nn.functional.one_hot(partition_ids, 2).double()
    loss = GlobalContrastiveLoss("GD", temperature=0.2)(z, slice_ids, partition_ids, volume_ids)
    assert loss.item() == pytest.approx(3 * math.log(1 + 4 * math.exp(-5)), rel=1e-12)


@pytest.mark.parametrize("strategy", GLOBAL_STRATEGIES)
@pytest.mark.parametrize(("volumes", "partitions", "views"), [(3, 4, 2), (2, 3, 3), (4, 6, 2)])
def test_matches_slow_reference(strategy, volumes, partitions, views):
    z, slices, parts, vols = make_batch(volumes, partitions, views, seed=volumes + partitions)
    expected = slow_global_loss(z, slices, parts, vols, strategy, 0.1)
    loss = GlobalContrastiveLoss(strategy, temperature=0.1)(z, slices, parts, vols)
    assert loss.item() == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("strategy", GLOBAL_STRATEGIES)
def test_batch_permutation_and_relabelling_invariance(strategy):
    z, slices, parts, vols = make_batch(3, 4, 2, seed=5)
    loss_fn = GlobalContrastiveLoss(strategy)
    reference = loss_fn(z, slices, parts, vols)
    order = torch.randperm(z.shape[0], generator=torch.Generator().manual_seed(9))
    assert loss_fn(z[order], slices[order], parts[order], vols[order]).item() == pytest.approx(
        reference.item(), rel=1e-12
    )
    assert loss_fn(z, slices * 7 + 100, parts + 5, vols - 3).item() == pytest.approx(
        reference.item(), rel=1e-12
    )


@pytest.mark.parametrize("strategy", GLOBAL_STRATEGIES)
def test_view_swap_symmetry(strategy):
    z, slices, parts, vols = make_batch(3, 3, 2, shuffle=False)
    first, second = z[0::2], z[1::2]
    swapped = torch.stack([second, first], dim=1).reshape_as(z)
    loss_fn = GlobalContrastiveLoss(strategy)
    assert loss_fn(swapped, slices, parts, vols).item() == pytest.approx(
        loss_fn(z, slices, parts, vols).item(), rel=1e-12
    )


@pytest.mark.parametrize("strategy", GLOBAL_STRATEGIES)
def test_gradients_finite_and_loss_falls(strategy):
    z, slices, parts, vols = make_batch(3, 4, 2, dim=16, seed=1)
    z = torch.nn.Parameter(z.float())
    loss_fn = GlobalContrastiveLoss(strategy, temperature=0.1)
    optimizer = torch.optim.SGD([z], lr=0.5)
    losses = []
    for _ in range(20):
        loss = loss_fn(z, slices, parts, vols)
        optimizer.zero_grad()
        loss.backward()
        assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


class TestErrors:
    z, slices, parts, vols = make_batch(2, 2, 2, shuffle=False)

    def test_unknown_strategy(self):
        with pytest.raises(ValueError, match="Unknown global strategy 'GX'; choose one of GR, GD-, GD"):
            GlobalContrastiveLoss("GX")

    def test_temperature(self):
        with pytest.raises(ValueError, match="temperature must be positive"):
            GlobalContrastiveLoss("GD", temperature=0)

    def test_id_shape(self):
        with pytest.raises(ValueError, match=r"partition_ids must have one id per image, shape \(8,\)"):
            GlobalContrastiveLoss("GD")(self.z, self.slices, self.parts[:4], self.vols)

    def test_float_ids(self):
        with pytest.raises(ValueError, match="volume_ids must be an integer tensor"):
            GlobalContrastiveLoss("GD")(self.z, self.slices, self.parts, self.vols.float())

    def test_embedding_shape(self):
        with pytest.raises(ValueError, match=r"\(N, D\) matrix"):
            GlobalContrastiveLoss("GD")(self.z[:, None], self.slices, self.parts, self.vols)

    def test_inconsistent_views(self):
        parts = self.parts.clone()
        parts[0] = 1 - parts[0]
        with pytest.raises(ValueError, match="Views of one slice must share"):
            GlobalContrastiveLoss("GD")(self.z, self.slices, parts, self.vols)

    def test_no_positive_pair(self):
        # One view per slice under G^R: nothing to pull together.
        ids = torch.arange(4)
        with pytest.raises(ValueError, match="no positive pair"):
            GlobalContrastiveLoss("GR")(self.z[:4], ids, ids % 2, ids)


DDP_SCRIPT = textwrap.dedent(
    """
    import sys
    import torch
    import torch.distributed as dist
    import torch.multiprocessing as mp
    from medcl.losses.global_contrast import GlobalContrastiveLoss

    def ids_of(rank):
        # 2 volumes x 3 partitions x 2 views per rank; local slice ids 0..5 on both ranks (they collide on
        # purpose: views never span ranks); volume ids are global and volume 1 is on both ranks.
        local = torch.arange(6).repeat_interleave(2)
        return local, local % 3, local // 3 + rank

    def worker(rank, init_file, out_file):
        dist.init_process_group("gloo", init_method="file://" + init_file, rank=rank, world_size=2)
        z_all = torch.randn(24, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        results = {}
        for strategy in ("GR", "GD-", "GD"):
            z = z_all[12 * rank : 12 * rank + 12].clone().requires_grad_()
            loss = GlobalContrastiveLoss(strategy)(z, *ids_of(rank))
            loss.backward()
            results[strategy] = (loss.detach(), z.grad)
        gathered = [None, None]
        dist.all_gather_object(gathered, results)
        if rank == 0:
            torch.save(gathered, out_file)
        dist.destroy_process_group()

    if __name__ == "__main__":
        mp.spawn(worker, args=(sys.argv[1], sys.argv[2]), nprocs=2)
    """
)


@pytest.mark.slow
def test_distributed_gather_matches_the_full_batch(tmp_path):
    """Two gloo processes of 12 images each give the single-process loss and gradient of all 24 images.

    Rank r's loss is Σ over its anchors' pairs / 12, so the mean over ranks is the full-batch loss; the
    gradient-carrying all-gather returns to each rank the gradient of the sum of both ranks' losses,
    i.e. 2x the full-batch gradient (DDP's averaging over ranks then divides by 2).
    """
    script = tmp_path / "ddp_global.py"
    script.write_text(DDP_SCRIPT)
    out = tmp_path / "result.pt"
    subprocess.run(
        [sys.executable, str(script), str(tmp_path / "init"), str(out)], check=True, cwd=REPO, timeout=120
    )
    per_rank = torch.load(out)
    z_all = torch.randn(24, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    local = torch.arange(6).repeat_interleave(2)
    slices = torch.cat([local, local + 6])  # the same slices, with ids made unique
    partitions = torch.cat([local % 3, local % 3])
    volumes = torch.cat([local // 3, local // 3 + 1])
    for strategy in GLOBAL_STRATEGIES:
        z = z_all.clone().requires_grad_()
        full = GlobalContrastiveLoss(strategy)(z, slices, partitions, volumes)
        full.backward()
        ddp_loss = (per_rank[0][strategy][0] + per_rank[1][strategy][0]) / 2
        ddp_grad = torch.cat([per_rank[0][strategy][1], per_rank[1][strategy][1]])
        assert ddp_loss.item() == pytest.approx(full.item(), rel=1e-12)
        torch.testing.assert_close(ddp_grad, 2 * z.grad, rtol=1e-10, atol=1e-12)
