"""AnCo (ACTION anatomical contrast): closed form, slow reference on the same draws, sampling rules."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from medcl.losses.anatomical import (
    NEGATIVE_POOL,
    anatomical_contrast_loss,
    anco_loss_from_samples,
    flatten_valid,
    sample_anco,
    sample_pixels,
)


def slow_anco(rep, labels, samples, tau) -> float:
    """Per class, per query: -log(exp(s+) / (exp(s+) + sum exp(s-))) by hand with cosine similarities."""
    terms = []
    for v, c in enumerate(samples.classes.tolist()):
        if not samples.has_queries[v]:
            continue
        proto = rep[labels == c].mean(dim=0)
        for qi, pix in enumerate(samples.query_index[v].tolist()):
            q = rep[pix]
            pos = math.exp(float(F.cosine_similarity(q, proto, dim=0)) / tau)
            neg = sum(
                math.exp(float(F.cosine_similarity(q, rep[n], dim=0)) / tau)
                for n in samples.negative_index[v, qi].tolist()
            )
            terms.append(-math.log(pos / (pos + neg)))
    return sum(terms) / len(terms)


def two_orthogonal_classes(n: int = 40):
    labels = torch.arange(n) % 2
    rep = torch.stack([torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 2.0, 0.0])])[labels]  # (n, 3)
    return rep, labels


def test_closed_form_for_orthogonal_identical_class_features() -> None:
    rep, labels = two_orthogonal_classes()
    m, tau = 16, 0.5
    loss = anatomical_contrast_loss(
        rep, labels, torch.full((40,), 0.5), 2, tau=tau, num_queries=8, num_negatives=m
    )
    # query . proto = 1, query . negative = 0: -log(e^{1/tau} / (e^{1/tau} + M)).
    assert float(loss) == pytest.approx(math.log(1 + m * math.exp(-1 / tau)), rel=1e-5)


def test_closed_form_is_invariant_to_pixel_permutation_and_draws() -> None:
    rep, labels = two_orthogonal_classes()
    prob = torch.full((40,), 0.5)
    perm = torch.randperm(40, generator=torch.Generator().manual_seed(0))
    a = anatomical_contrast_loss(rep, labels, prob, 2, tau=0.3, num_queries=8, num_negatives=8)
    b = anatomical_contrast_loss(
        rep[perm],
        labels[perm],
        prob[perm],
        2,
        tau=0.3,
        num_queries=8,
        num_negatives=8,
        generator=torch.Generator().manual_seed(5),
    )
    assert torch.allclose(a, b, atol=1e-6)


def test_matches_slow_reference_on_the_same_draws() -> None:
    g = torch.Generator().manual_seed(0)
    rep = torch.randn(300, 8, generator=g)
    labels = torch.randint(0, 4, (300,), generator=g)
    prob = torch.rand(300, generator=g)
    samples = sample_anco(rep, labels, prob, 4, tau=0.5, num_queries=6, num_negatives=10, generator=g)
    fast = float(anco_loss_from_samples(rep, labels, samples, 4, 0.5))
    assert fast == pytest.approx(slow_anco(rep, labels, samples, 0.5), rel=1e-4)
    # Permuting pixels and mapping the draws along gives the same loss.
    perm = torch.randperm(300, generator=g)
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(300)
    moved = type(samples)(
        samples.classes,
        inverse[samples.query_index],
        samples.has_queries,
        inverse[samples.negative_pool],
        samples.negative_slot,
    )
    assert float(anco_loss_from_samples(rep[perm], labels[perm], moved, 4, 0.5)) == pytest.approx(
        fast, rel=1e-5
    )


def test_sampling_rules_hard_queries_other_class_negatives_absent_classes() -> None:
    g = torch.Generator().manual_seed(1)
    labels = torch.tensor([0] * 50 + [2] * 50 + [3] * 50)  # class 1 absent
    prob = torch.rand(150, generator=g)
    rep = torch.randn(150, 4, generator=g)
    s = sample_anco(
        rep, labels, prob, 4, tau=0.5, num_queries=32, num_negatives=16, strong_threshold=0.6, generator=g
    )
    assert s.classes.tolist() == [0, 2, 3]
    for v, c in enumerate(s.classes.tolist()):
        assert (labels[s.query_index[v]] == c).all()
        assert (prob[s.query_index[v]] < 0.6).all()  # hard queries only
        neg = labels[s.negative_index[v]]
        assert (neg != c).all() and (neg != 1).all()  # other present classes only


def test_each_query_takes_distinct_slots_of_its_class_pool() -> None:
    g = torch.Generator().manual_seed(4)
    labels = torch.randint(0, 3, (500,), generator=g)
    s = sample_anco(
        torch.randn(500, 4, generator=g), labels, torch.zeros(500), 3, tau=0.5, num_queries=40,
        num_negatives=8, generator=g,
    )  # fmt: skip
    assert s.negative_pool.shape == (3, NEGATIVE_POOL * 8) and s.negative_slot.shape == (3, 40, 8)
    for v in range(3):
        for slots in s.negative_slot[v]:
            assert slots.unique().numel() == 8  # distinct slots: 8 different i.i.d. draws per query
        assert s.negative_slot[v, :, 0].unique().numel() > 1  # queries start at different slots
        assert torch.equal(s.negative_index[v], s.negative_pool[v][s.negative_slot[v]])


def test_negative_classes_follow_prototype_similarity() -> None:
    # Class 0's prototype is close to class 1's and orthogonal to class 2's.
    protos = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    labels = torch.arange(3).repeat_interleave(20)
    rep = protos[labels]
    tau = 0.5
    s = sample_anco(
        rep,
        labels,
        torch.zeros(60),
        3,
        tau=tau,
        num_queries=4,
        num_negatives=4096,
        generator=torch.Generator().manual_seed(2),
    )
    neg = labels[s.negative_pool[0]]  # the class's 2 x 4096 i.i.d. draws: sd of the share about 0.005
    observed = (neg == 1).float().mean()
    expected = math.exp(0.8 / tau) / (math.exp(0.8 / tau) + math.exp(0.0))
    assert float(observed) == pytest.approx(expected, abs=0.02)


def test_skipped_classes_and_degenerate_batches() -> None:
    rep = torch.randn(60, 4, requires_grad=True)
    labels = torch.arange(3).repeat_interleave(20)
    prob = torch.full((60,), 0.5)
    prob[labels == 1] = 0.99  # class 1 has no hard pixel: no queries, but still a negative class
    g = torch.Generator().manual_seed(0)
    s = sample_anco(rep, labels, prob, 3, tau=0.5, num_queries=4, num_negatives=8, generator=g)
    assert s.has_queries.tolist() == [True, False, True]
    value = float(anco_loss_from_samples(rep, labels, s, 3, 0.5).detach())
    assert value == pytest.approx(slow_anco(rep.detach(), labels, s, 0.5), rel=1e-4)
    one_class = anatomical_contrast_loss(rep, torch.zeros(60, dtype=torch.long), prob, 3, tau=0.5)
    assert float(one_class.detach()) == 0.0
    one_class.backward()  # still part of the graph
    easy = anatomical_contrast_loss(rep, labels, torch.ones(60), 3, tau=0.5)
    assert float(easy.detach()) == 0.0


def test_gradients_flow_through_queries_only() -> None:
    g = torch.Generator().manual_seed(3)
    rep = torch.randn(200, 6, generator=g, requires_grad=True)
    labels = torch.randint(0, 3, (200,), generator=g)
    s = sample_anco(rep, labels, torch.zeros(200), 3, tau=0.5, num_queries=5, num_negatives=7, generator=g)
    anco_loss_from_samples(rep, labels, s, 3, 0.5).backward()
    assert torch.isfinite(rep.grad).all()
    touched = rep.grad.abs().sum(dim=1) > 0
    queried = torch.zeros(200, dtype=torch.bool)
    queried[s.query_index.flatten()] = True
    assert torch.equal(touched, queried)


def test_sample_pixels_and_flatten_valid() -> None:
    labels = torch.tensor([2, 0, 2, 1, 2])
    idx, ok = sample_pixels(
        labels, labels != 1, torch.tensor([[2, 2, 0], [1, 0, 2]]), 3, torch.Generator().manual_seed(0)
    )
    assert ok.tolist() == [[True, True, True], [False, True, True]]
    assert (labels[idx[ok]] == torch.tensor([2, 2, 0, 0, 2])).all()
    rep = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).view(2, 3, 2, 2)
    lab = torch.tensor([[[0, 1], [2, 0]], [[1, 1], [0, 2]]])
    valid = torch.tensor([[[True, False], [True, True]], [[False, False], [True, True]]])
    prob = torch.softmax(torch.randn(2, 3, 2, 2), dim=1)
    r, y, p = flatten_valid(rep, lab, valid, prob)
    assert r.shape == (5, 3) and y.tolist() == [0, 2, 0, 0, 2]
    assert torch.equal(r[0], rep[0, :, 0, 0]) and p[0] == prob[0, 0, 0, 0]
