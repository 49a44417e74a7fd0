"""Atomic checkpoint writes, safe loading, RNG round trips, LR schedules."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from medcl.config import OptimConfig
from medcl.engine.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from medcl.engine.optim import lr_factor
from medcl.errors import MedclError


def test_checkpoint_round_trip_is_weights_only(tmp_path: Path) -> None:
    state = {"step": 3, "model": {"w": torch.arange(4.0)}, "rng": rng_state(), "config": {"a": [1, 2]}}
    path = save_checkpoint(state, tmp_path / "ckpt" / "last.pt")
    loaded = load_checkpoint(path)
    assert loaded["step"] == 3 and torch.equal(loaded["model"]["w"], torch.arange(4.0))
    # Only the final file is left: the temporary file was renamed, not copied.
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]
    # weights_only loading rejects arbitrary objects outright.
    torch.save({"format": "medcl-checkpoint/1", "evil": object()}, tmp_path / "evil.pt")
    with pytest.raises(MedclError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path / "evil.pt")


def test_failed_write_keeps_the_previous_checkpoint(tmp_path: Path) -> None:
    path = save_checkpoint({"step": 1}, tmp_path / "last.pt")

    class Boom:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint({"step": 2, "bad": Boom()}, path)
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_bad_checkpoints_are_reported(tmp_path: Path) -> None:
    with pytest.raises(MedclError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(MedclError, match="not a medcl checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    (tmp_path / "trunc.pt").write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(MedclError, match="trunc.pt"):
        load_checkpoint(tmp_path / "trunc.pt")


def test_rng_state_restores_every_generator(tmp_path: Path) -> None:
    state = rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    save_checkpoint({"rng": state}, tmp_path / "r.pt")
    set_rng_state(load_checkpoint(tmp_path / "r.pt")["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_lr_schedules() -> None:
    poly = OptimConfig(schedule="poly", poly_power=0.9, warmup_steps=0)
    assert lr_factor(0, 100, poly) == 1.0
    assert lr_factor(50, 100, poly) == pytest.approx(0.5**0.9)
    assert lr_factor(100, 100, poly) == 0.0
    cos = OptimConfig(schedule="cosine", warmup_steps=10)
    assert lr_factor(0, 110, cos) == pytest.approx(0.1)
    assert lr_factor(9, 110, cos) == pytest.approx(1.0)
    assert lr_factor(60, 110, cos) == pytest.approx(0.5)
    assert lr_factor(5, 10, OptimConfig(schedule="constant")) == 1.0
    assert isinstance(lr_factor(3, 10, poly), float)
