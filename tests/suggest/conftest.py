"""Shared helpers of the ``medcl suggest`` tests: hand-built predictors and pools of real Hippocampus cases.

Models are hand-built (a sign-of-intensity network, or a tiny untrained BasicUNet saved as a checkpoint): a
ranking only needs a network that produces probabilities, and these run in well under a second per case.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from medcl.inference.predictor import Predictor
from medcl.methods import DataSpec
from medcl.services.configs import build_config
from medcl.suggest import PoolCase

HIPPO_SPEC = DataSpec(
    in_channels=1,
    num_classes=3,
    class_names=("background", "Anterior", "Posterior"),
    spatial_dims=2,
    patch_size=(64, 64),
)
TINY = "model.features=[4, 4, 8, 8, 16, 4]"
IDS = ["hippocampus_001", "hippocampus_004", "hippocampus_006", "hippocampus_008"]


class SignOfImage(torch.nn.Module):
    """Class 1 wherever the preprocessed intensity is above its mean (0); confident far from 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.zeros_like(x), x * 4, torch.zeros_like(x) - 9], dim=1)


@pytest.fixture
def sign_of_image() -> type[SignOfImage]:
    """The class of the sign-of-intensity network."""
    return SignOfImage


@pytest.fixture
def hand_built_predictor() -> Callable[..., Predictor]:
    """A factory: a CPU Predictor around ``net`` (default a :class:`SignOfImage`) for 2D Hippocampus."""

    def make(net: torch.nn.Module | None = None) -> Predictor:
        cfg = build_config({"method": {"name": "supervised"}}, [TINY])
        return Predictor(cfg, HIPPO_SPEC, net or SignOfImage(), torch.device("cpu"), "hand-built", "fp32")

    return make


@pytest.fixture
def ids() -> list[str]:
    """Four real Hippocampus case ids."""
    return list(IDS)


@pytest.fixture
def pool_of(hippocampus: Path) -> Callable[[list[str]], list[PoolCase]]:
    """A factory: the pool of the given Hippocampus training cases."""

    def make(case_ids: list[str]) -> list[PoolCase]:
        return [PoolCase(i, [hippocampus / "imagesTr" / f"{i}.nii.gz"]) for i in case_ids]

    return make
