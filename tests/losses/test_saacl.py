"""SAACL (ACTION++): Hungarian allocation, EMA class means, the loss against a slow reference and by hand."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from medcl.losses.saacl import AdaptiveCenters, hungarian_assignment, saacl_loss
from medcl.models.centers import regular_simplex


def slow_saacl(anchors, labels, keys, key_labels, centers, assignment, tau, lambda_a, own_keys=None) -> float:
    """Anchor by anchor: the softmax over [own | keys | centers] by hand, positives summed, divided by #pos + 1."""
    total = 0.0
    for i in range(anchors.shape[0]):
        a = F.normalize(anchors[i], dim=0)
        cands = []  # (similarity, is_positive, is_centre_of_i)
        if own_keys is not None:
            cands.append((float(a @ F.normalize(own_keys[i], dim=0)), True, False))
        for k, y in zip(keys, key_labels.tolist(), strict=True):
            if y >= 0:
                cands.append((float(a @ F.normalize(k, dim=0)), y == int(labels[i]), False))
        for j, c in enumerate(centers):
            cands.append((float(a @ F.normalize(c, dim=0)), False, j == int(assignment[labels[i]])))
        denom = sum(math.exp(s / tau) for s, _, _ in cands)
        logp = [s / tau - math.log(denom) for s, _, _ in cands]
        pos = [lp for lp, (_, p, _) in zip(logp, cands, strict=True) if p]
        centre = next(lp for lp, (_, _, c) in zip(logp, cands, strict=True) if c)
        total += -(sum(pos) + lambda_a * centre) / (len(pos) + 1)
    return total / anchors.shape[0]


def test_hungarian_is_a_permutation_and_recovers_a_planted_matching() -> None:
    centers = regular_simplex(5, 8)
    perm = torch.tensor([3, 0, 4, 1, 2])
    means = centers[perm] + 0.05 * torch.randn(5, 8, generator=torch.Generator().manual_seed(0))
    got = hungarian_assignment(means, centers)
    assert sorted(got.tolist()) == list(range(5))
    assert torch.equal(got, perm)
    unseen = hungarian_assignment(torch.zeros(5, 8), centers)  # zero means: any permutation
    assert sorted(unseen.tolist()) == list(range(5))


def test_hand_computed_single_anchor() -> None:
    a = torch.tensor([[1.0, 0.0]])
    keys, key_labels = torch.tensor([[2.0, 0.0]]), torch.tensor([0])
    centers = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    loss = saacl_loss(
        a, torch.tensor([0]), keys, key_labels, centers, torch.tensor([0, 1]), tau=1.0, lambda_a=0.5
    )
    log_z = math.log(2 * math.e + math.exp(-1))
    expected = -((1 - log_z) + 0.5 * (1 - log_z)) / 2
    assert float(loss) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("with_own", [False, True])
def test_matches_slow_reference(with_own: bool) -> None:
    g = torch.Generator().manual_seed(0)
    anchors, labels = torch.randn(12, 6, generator=g), torch.randint(0, 3, (12,), generator=g)
    keys = torch.randn(20, 6, generator=g)
    key_labels = torch.randint(-1, 3, (20,), generator=g)  # -1: empty queue slots
    own = torch.randn(12, 6, generator=g) if with_own else None
    centers, assignment = regular_simplex(3, 6), torch.tensor([2, 0, 1])
    fast = saacl_loss(
        anchors, labels, keys, key_labels, centers, assignment, tau=0.2, lambda_a=0.2, own_keys=own
    )
    slow = slow_saacl(anchors, labels, keys, key_labels, centers, assignment, 0.2, 0.2, own)
    assert float(fast) == pytest.approx(slow, rel=1e-4)


def test_invariances_and_empty_slots() -> None:
    g = torch.Generator().manual_seed(1)
    anchors, labels = torch.randn(10, 4, generator=g), torch.randint(0, 2, (10,), generator=g)
    own = torch.randn(10, 4, generator=g)
    keys, key_labels = torch.randn(8, 4, generator=g), torch.randint(0, 2, (8,), generator=g)
    centers, assignment = regular_simplex(2, 4), torch.tensor([1, 0])
    kw = dict(tau=0.1, lambda_a=0.2)
    base = saacl_loss(anchors, labels, keys, key_labels, centers, assignment, own_keys=own, **kw)
    p, q = torch.randperm(10, generator=g), torch.randperm(8, generator=g)
    moved = saacl_loss(
        anchors[p], labels[p], keys[q], key_labels[q], centers, assignment, own_keys=own[p], **kw
    )
    assert torch.allclose(base, moved, atol=1e-6)
    padded = saacl_loss(
        anchors,
        labels,
        torch.cat([keys, torch.randn(5, 4)]),
        torch.cat([key_labels, torch.full((5,), -1)]),
        centers,
        assignment,
        own_keys=own,
        **kw,
    )
    assert torch.allclose(base, padded, atol=1e-6)


def test_gradients_reach_anchors_only() -> None:
    anchors = torch.randn(6, 4, requires_grad=True)
    keys = torch.randn(6, 4, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    loss = saacl_loss(
        anchors, labels, keys, labels, regular_simplex(3, 4), torch.arange(3), tau=0.07, lambda_a=0.2
    )
    loss.backward()
    assert torch.isfinite(anchors.grad).all() and anchors.grad.abs().sum() > 0
    assert keys.grad is None


def test_adaptive_centers_ema_absent_classes_and_state_dict() -> None:
    alloc = AdaptiveCenters(regular_simplex(3, 4), momentum=0.9)
    a0 = torch.tensor([[1.0, 0.0, 0.0, 0.0], [3.0, 0.0, 0.0, 0.0]])
    alloc.update(a0, torch.tensor([0, 0]))
    assert torch.allclose(alloc.class_means[0], torch.tensor([1.0, 0.0, 0.0, 0.0]))  # first update: the mean
    assert torch.equal(alloc.class_means[1:], torch.zeros(2, 4))  # absent classes untouched
    alloc.update(torch.tensor([[0.0, 1.0, 0.0, 0.0]]), torch.tensor([0]))
    expected = F.normalize(torch.tensor([0.9, 0.1, 0.0, 0.0]), dim=0)
    assert torch.allclose(alloc.class_means[0], expected, atol=1e-6)
    assert sorted(alloc.assignment.tolist()) == [0, 1, 2]
    copy = AdaptiveCenters(regular_simplex(3, 4))
    copy.load_state_dict(alloc.state_dict())
    assert torch.equal(copy.class_means, alloc.class_means) and torch.equal(copy.assignment, alloc.assignment)
