"""Relational KL distillation (ACTION stages 1-2): closed form, slow reference, invariances, gradients."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from medcl.losses.relational import relational_kl


def slow_relational_kl(student, teacher, queue, tau_s, tau_t) -> float:
    """One distribution at a time, probabilities with exp / sum by hand, KL(u_t || u_s) summed over the queue."""
    if student.ndim == 2:
        student, teacher, queue = student[:, None], teacher[:, None], queue[:, None]
    total, count = 0.0, 0
    for b in range(student.shape[0]):
        for w in range(student.shape[1]):
            s = F.normalize(student[b, w], dim=0)
            t = F.normalize(teacher[b, w], dim=0)
            mem = F.normalize(queue[:, w], dim=1)
            e_s = torch.exp((mem @ s) / tau_s).double()
            e_t = torch.exp((mem @ t) / tau_t).double()
            u_s, u_t = e_s / e_s.sum(), e_t / e_t.sum()
            total += float((u_t * (u_t.log() - u_s.log())).sum())
            count += 1
    return total / count


def test_identical_views_and_temperatures_give_zero() -> None:
    z, q = torch.randn(5, 16), torch.randn(12, 16)
    assert float(relational_kl(z, z.clone(), q, 0.2, 0.2)) == pytest.approx(0.0, abs=1e-6)


def test_hand_computed_two_entry_queue() -> None:
    queue = torch.eye(2)  # Q = 2 orthogonal entries
    student, teacher = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 3.0]])  # norms do not matter
    u_s = torch.softmax(torch.tensor([1.0, 0.0]), 0)
    u_t = torch.softmax(torch.tensor([0.0, 1.0]), 0)
    expected = float((u_t * (u_t / u_s).log()).sum())
    assert float(relational_kl(student, teacher, queue, 1.0, 1.0)) == pytest.approx(expected, rel=1e-6)
    # Teacher as target: swapping the roles gives KL(u_s || u_t), here equal by symmetry of the example.
    assert expected == pytest.approx(math.tanh(0.5), rel=1e-6)


@pytest.mark.parametrize("shape", [(4, 32), (3, 5, 12)])
def test_matches_slow_reference_global_and_per_window(shape) -> None:
    torch.manual_seed(0)
    s, t = torch.randn(*shape), torch.randn(*shape)
    q = torch.randn(7, *shape[1:])
    fast = float(relational_kl(s, t, q, 0.1, 0.04))
    assert fast == pytest.approx(slow_relational_kl(s, t, q, 0.1, 0.04), rel=1e-4)


def test_invariant_to_queue_order_and_embedding_scale() -> None:
    torch.manual_seed(1)
    s, t, q = torch.randn(6, 8), torch.randn(6, 8), torch.randn(10, 8)
    base = relational_kl(s, t, q, 0.1, 0.01)
    assert torch.allclose(relational_kl(s, t, q[torch.randperm(10)], 0.1, 0.01), base, atol=1e-5)
    assert torch.allclose(relational_kl(3 * s, 0.5 * t, 2 * q, 0.1, 0.01), base, atol=1e-5)


def test_gradients_reach_only_the_student() -> None:
    s = torch.randn(4, 8, requires_grad=True)
    t = torch.randn(4, 8, requires_grad=True)
    q = torch.randn(9, 8, requires_grad=True)
    relational_kl(s, t, q, 0.1, 0.01).backward()
    assert s.grad is not None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
    assert t.grad is None and q.grad is None


def test_bad_shapes_fail_with_a_message() -> None:
    with pytest.raises(ValueError, match="queue must be"):
        relational_kl(torch.randn(2, 8), torch.randn(2, 8), torch.randn(5, 4), 0.1, 0.1)
    with pytest.raises(ValueError, match="temperatures"):
        relational_kl(torch.randn(2, 8), torch.randn(2, 8), torch.randn(5, 8), 0.0, 0.1)
