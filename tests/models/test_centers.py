"""Uniform class centers (ACTION++ SAACL): simplex Gram matrix, optimiser agreement, determinism, caching."""

from __future__ import annotations

import pytest
import torch

from medcl.models.centers import optimise_centers, regular_simplex, uniform_centers, uniformity_loss


def simplex_gram(k: int) -> torch.Tensor:
    return torch.full((k, k), -1.0 / (k - 1)).fill_diagonal_(1.0)


@pytest.mark.parametrize(("k", "d"), [(2, 1), (2, 128), (3, 2), (4, 3), (4, 128), (4, 496), (8, 7), (14, 32)])
def test_simplex_pairwise_cosines(k: int, d: int) -> None:
    c = regular_simplex(k, d)
    assert c.shape == (k, d)
    assert torch.allclose(c.norm(dim=1), torch.ones(k), atol=1e-6)
    assert torch.allclose(c @ c.T, simplex_gram(k), atol=1e-6)


def test_simplex_is_deterministic_and_refuses_too_few_dimensions() -> None:
    assert torch.equal(regular_simplex(4, 16), regular_simplex(4, 16))
    with pytest.raises(ValueError, match="at least 3 dimensions"):
        regular_simplex(4, 2)


def test_optimiser_matches_the_closed_form_where_both_apply() -> None:
    # Forced optimiser path with d >= K - 1: the same Gram matrix as the simplex (rotation aside).
    for k, d in ((4, 3), (4, 8), (3, 16)):
        c = optimise_centers(k, d, steps=500, lr=1e-2, seed=0)
        assert torch.allclose(c @ c.T, simplex_gram(k), atol=1e-5)
        simplex = regular_simplex(k, d)
        assert float(uniformity_loss(c)) == pytest.approx(float(uniformity_loss(simplex)), abs=1e-6)
        assert float(uniformity_loss(c, include_self=False)) == pytest.approx(
            float(uniformity_loss(simplex, include_self=False)), abs=1e-5
        )


def test_optimiser_below_simplex_dimension_spreads_points() -> None:
    # 4 points on a circle (d = 2 < K - 1): the optimum is a square, neighbours at 90 degrees, opposite at 180.
    c = optimise_centers(4, 2, steps=500, lr=1e-2, seed=0)
    cos = (c @ c.T).flatten().sort().values
    expected = torch.tensor([-1.0] * 4 + [0.0] * 8 + [1.0] * 4)
    assert torch.allclose(cos, expected, atol=1e-3)


def test_uniform_centers_dispatch_determinism_and_caching(tmp_path) -> None:
    assert torch.equal(uniform_centers(4, 16), regular_simplex(4, 16))  # auto: closed form
    a = uniform_centers(4, 2, steps=200, lr=1e-2, seed=3)
    b = uniform_centers(4, 2, steps=200, lr=1e-2, seed=3)
    assert torch.equal(a, b)
    a.zero_()  # callers get a copy: the cache is not affected
    assert not torch.equal(uniform_centers(4, 2, steps=200, lr=1e-2, seed=3), a)
    forced = uniform_centers(4, 8, "optimize", steps=200, lr=1e-2, seed=1, cache_dir=tmp_path)
    files = list(tmp_path.glob("centers_K4_d8_*.pt"))
    assert len(files) == 1
    assert torch.equal(torch.load(files[0], weights_only=True), forced)
    assert torch.equal(
        uniform_centers(4, 8, "optimize", steps=200, lr=1e-2, seed=1, cache_dir=tmp_path), forced
    )
    with pytest.raises(ValueError, match="method"):
        uniform_centers(4, 8, "spiral")  # type: ignore[arg-type]
