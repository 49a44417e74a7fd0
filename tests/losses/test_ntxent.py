"""The contrastive kernel: closed forms, a hand-computed case, a slow reference, masks, gradients, errors."""

from __future__ import annotations

import math

import pytest
import torch

from medcl.losses.ntxent import (
    contrastive_loss,
    gather,
    gather_with_grad,
    masked_logsumexp,
    masks_from_ids,
    rank_self_mask,
    same_id,
    self_pairs,
)


def slow_contrastive_loss(z, positives, negatives, temperature, candidates=None) -> float:
    """The formula written out literally: loops over anchors and pairs, exp and log by hand."""
    candidates = z if candidates is None else candidates
    z = [row / row.norm() for row in z.double()]
    c = [row / row.norm() for row in candidates.double()]
    total = 0.0
    for i in range(len(z)):
        negative_terms = [
            math.exp(float(z[i] @ c[k]) / temperature) for k in range(len(c)) if negatives[i, k]
        ]
        for j in range(len(c)):
            if positives[i, j]:
                numerator = math.exp(float(z[i] @ c[j]) / temperature)
                total += -math.log(numerator / (numerator + sum(negative_terms)))
    return total / len(z)


def random_masks(n: int, m: int, generator: torch.Generator, self_offset: int | None = 0):
    """Disjoint random positive/negative masks without self-pairs, at least one positive."""
    draw = torch.randint(0, 3, (n, m), generator=generator)  # 0 neither, 1 positive, 2 negative
    if self_offset is not None:
        draw[self_pairs(n, m, offset=self_offset)] = 0
    draw[0, 1] = 1
    return draw == 1, draw == 2


@pytest.mark.parametrize("n", [2, 5])
@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_aligned_views_closed_form(n, temperature):
    # Two identical copies of n orthogonal embeddings: each anchor's positive has s = 1 and its 2n − 2
    # negatives s = 0, so every pair costs log(1 + (2n − 2) e^{−1/τ}); 2n pairs / 2n images.
    z = torch.cat([torch.eye(n), torch.eye(n)]).double()  # (2n, n)
    positives, negatives = masks_from_ids(torch.arange(n).repeat(2))
    loss = contrastive_loss(z, positives, negatives, temperature)
    assert loss.item() == pytest.approx(math.log(1 + (2 * n - 2) * math.exp(-1 / temperature)), rel=1e-12)


def test_hand_computed_case():
    # Slices A = {a1, a2}, B = {b1, b2}; τ = 0.5 so the logits are 2·cos:
    #   a1·a2 = 0.6, a1·b1 = 0, a1·b2 = −1, a2·b1 = 0.8, a2·b2 = −0.6, b1·b2 = 0
    # ℓ(a1,a2) = −1.2 + log(e^1.2 + e^0 + e^−2)     = 0.2941285610
    # ℓ(a2,a1) = −1.2 + log(e^1.2 + e^1.6 + e^−1.2)  = 0.9487744372
    # ℓ(b1,b2) =  0   + log(e^0 + e^0 + e^1.6)       = 1.9391778845
    # ℓ(b2,b1) =  0   + log(e^0 + e^−2 + e^−1.2)     = 0.3622301319
    # L = (sum) / 4 = 0.8860777537
    z = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [-1.0, 0.0]], dtype=torch.float64)
    positives, negatives = masks_from_ids(torch.tensor([0, 0, 1, 1]))
    assert contrastive_loss(z, positives, negatives, 0.5).item() == pytest.approx(
        0.8860777536572333, abs=1e-12
    )


def test_scale_of_embeddings_is_ignored_when_normalizing():
    z = torch.tensor([[2.0, 0.0], [0.3, 0.4], [0.0, 5.0], [-0.1, 0.0]], dtype=torch.float64)
    positives, negatives = masks_from_ids(torch.tensor([0, 0, 1, 1]))
    assert contrastive_loss(z, positives, negatives, 0.5).item() == pytest.approx(
        0.8860777536572333, abs=1e-12
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_slow_reference(seed):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(9, 5, generator=g, dtype=torch.float64)
    positives, negatives = random_masks(9, 9, g)
    expected = slow_contrastive_loss(z, positives, negatives, 0.2)
    assert contrastive_loss(z, positives, negatives, 0.2).item() == pytest.approx(expected, rel=1e-10)


def test_matches_slow_reference_with_candidates():
    # Anchors are rows 3..5 of the candidates, as for rank 1 of 3 after a gather.
    g = torch.Generator().manual_seed(3)
    candidates = torch.randn(9, 4, generator=g, dtype=torch.float64)
    z = candidates[3:6]
    positives, negatives = random_masks(3, 9, g, self_offset=3)
    expected = slow_contrastive_loss(z, positives, negatives, 0.1, candidates)
    loss = contrastive_loss(z, positives, negatives, 0.1, candidates=candidates)
    assert loss.item() == pytest.approx(expected, rel=1e-10)


def test_unnormalized_mode_uses_dot_products():
    z = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [-1.0, 0.0]], dtype=torch.float64)
    positives, negatives = masks_from_ids(torch.tensor([0, 0, 1, 1]))
    normalized = contrastive_loss(z, positives, negatives, 0.5)
    # Unit vectors: the same value without normalising; doubled vectors quadruple the logits instead.
    assert contrastive_loss(z, positives, negatives, 0.5, normalize=False).item() == pytest.approx(
        normalized.item()
    )
    assert contrastive_loss(2 * z, positives, negatives, 2.0, normalize=False).item() == pytest.approx(
        normalized.item()
    )


def test_anchor_without_negatives_costs_nothing_and_has_finite_gradient():
    # Anchor 0's only candidate is its positive: its denominator is the positive alone, so ℓ(0,1) = 0.
    z = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    positives = torch.tensor([[False, True, False], [True, False, False], [False, False, False]])
    negatives = torch.tensor([[False, False, False], [False, False, True], [False, False, False]])
    loss = contrastive_loss(z, positives, negatives, 0.1)
    assert loss.item() == pytest.approx(
        slow_contrastive_loss(z.detach(), positives, negatives, 0.1), rel=1e-10
    )
    loss.backward()
    assert torch.isfinite(z.grad).all()


def test_masked_logsumexp_matches_the_subset_and_is_minus_inf_when_empty():
    logits = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[True, False, True], [False, False, False]])
    out = masked_logsumexp(logits, mask)
    assert out[0].item() == pytest.approx(math.log(math.exp(1) + math.exp(3)))
    assert out[1].item() == float("-inf")


def test_gradients_are_finite_and_the_loss_falls():
    g = torch.Generator().manual_seed(0)
    z = torch.nn.Parameter(torch.randn(16, 8, generator=g))
    positives, negatives = masks_from_ids(torch.arange(8).repeat(2))
    optimizer = torch.optim.SGD([z], lr=0.5)
    losses = []
    for _ in range(20):
        loss = contrastive_loss(z, positives, negatives, 0.1)
        optimizer.zero_grad()
        loss.backward()
        assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_masks_from_ids_one_vector():
    positives, negatives = masks_from_ids(torch.tensor([7, 7, 3]))
    assert positives.tolist() == [[False, True, False], [True, False, False], [False, False, False]]
    assert negatives.tolist() == [[False, False, True], [False, False, True], [True, True, False]]


def test_masks_from_ids_two_vectors():
    # Positives by slice, negatives by partition: slice 0 and slice 1 share partition 5, so they are
    # neither positive nor negative to each other.
    slices, partitions = torch.tensor([0, 0, 1, 2]), torch.tensor([5, 5, 5, 6])
    positives, negatives = masks_from_ids(slices, partitions)
    assert positives.tolist() == [
        [False, True, False, False],
        [True, False, False, False],
        [False, False, False, False],
        [False, False, False, False],
    ]
    assert negatives.tolist() == [
        [False, False, False, True],
        [False, False, False, True],
        [False, False, False, True],
        [True, True, True, False],
    ]


def test_masks_from_ids_against_candidates_of_every_rank():
    # Rank 1 of 2 holds anchors with ids [4, 5]; the gathered candidates are [4, 5 | 4, 5].
    ids = torch.tensor([4, 5])
    positives, negatives = masks_from_ids(
        ids, candidate_positive_ids=torch.tensor([4, 5, 4, 5]), self_mask=self_pairs(2, 4, offset=2)
    )
    assert positives.tolist() == [[True, False, False, False], [False, True, False, False]]
    assert negatives.tolist() == [[False, True, False, True], [True, False, True, False]]


def test_masks_from_ids_rejects_mismatched_vectors():
    with pytest.raises(ValueError, match="one id per anchor"):
        masks_from_ids(torch.tensor([0, 0]), torch.tensor([0, 0, 1]))


def test_same_id_and_self_pairs():
    assert same_id(torch.tensor([1, 2]), torch.tensor([2, 1, 1])).tolist() == [
        [False, True, True],
        [True, False, False],
    ]
    assert self_pairs(2, 5, offset=3).tolist() == [
        [False, False, False, True, False],
        [False, False, False, False, True],
    ]


def test_single_process_helpers_are_identities():
    x = torch.randn(3, 2, requires_grad=True)
    assert gather_with_grad(x) is x
    assert gather(x) is x
    assert torch.equal(rank_self_mask(3), torch.eye(3, dtype=torch.bool))


class TestErrors:
    z = torch.randn(4, 3)
    positives, negatives = masks_from_ids(torch.tensor([0, 0, 1, 1]))

    @pytest.mark.parametrize("temperature", [0.0, -0.1])
    def test_temperature(self, temperature):
        with pytest.raises(ValueError, match="temperature must be positive"):
            contrastive_loss(self.z, self.positives, self.negatives, temperature)

    def test_mask_shape(self):
        with pytest.raises(ValueError, match=r"positives mask must have shape \(N, M\) = \(4, 4\)"):
            contrastive_loss(self.z, self.positives[:3], self.negatives, 0.1)

    def test_mask_dtype(self):
        with pytest.raises(ValueError, match="negatives mask must be boolean"):
            contrastive_loss(self.z, self.positives, self.negatives.float(), 0.1)

    def test_embeddings_shape(self):
        with pytest.raises(ValueError, match=r"\(N, D\) matrix"):
            contrastive_loss(self.z[None], self.positives, self.negatives, 0.1)
        with pytest.raises(ValueError, match="candidates must be"):
            contrastive_loss(self.z, self.positives, self.negatives, 0.1, candidates=torch.randn(4, 5))

    def test_no_positives(self):
        with pytest.raises(ValueError, match="no positive pair"):
            contrastive_loss(self.z, torch.zeros(4, 4, dtype=torch.bool), self.negatives, 0.1)

    def test_overlapping_masks(self):
        with pytest.raises(ValueError, match="both positive and negative"):
            contrastive_loss(self.z, self.positives, self.negatives | self.positives, 0.1)

    def test_self_pairs(self):
        with pytest.raises(ValueError, match="Self-pairs"):
            contrastive_loss(self.z, self.positives | torch.eye(4, dtype=torch.bool), self.negatives, 0.1)
