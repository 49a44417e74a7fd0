"""Trainer.fit: losses stay on the device and are checked once per window; loader and validation time."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medcl.data.sampling import TrainBatches
from medcl.engine.trainer import Trainer
from medcl.errors import MedclError
from medcl.methods.base import DataSpec, Method, RunFacts
from medcl.methods.supervised import SupervisedParams
from medcl.services.configs import build_config


class _Constant:
    """A sampler whose every batch is one zero image."""

    def sample(self, seed, rank, step):
        return {"image": torch.zeros(1, 1, 4, 4)}


class _NanAt(Method):
    """Loss (w - 1)^2, NaN from step ``bad`` on; records the steps it trained."""

    name = "nan-test"
    Params = SupervisedParams

    def __init__(self, cfg, spec, bad: int):
        super().__init__(cfg.method, RunFacts.of(cfg), spec)
        self.w = nn.Parameter(torch.zeros(1))
        self.bad, self.seen = bad, []

    def training_step(self, batch, step):
        self.seen.append(step)
        loss = ((self.w - 1) ** 2).sum()
        if step >= self.bad:
            loss = loss * float("nan")
        return {"loss": loss, "sup": loss.detach(), "tau": 0.5}

    def inference_network(self):
        return nn.Identity()


class _Log:
    run_id = None

    def __init__(self):
        self.metrics = []

    def log_metrics(self, metrics, step):
        self.metrics.append((step, dict(metrics)))


def make(tmp_path, bad: int, steps: int = 12):
    cfg = build_config(
        {"method": {"name": "supervised"}},
        [f"train.steps={steps}", "train.log_every=5", "train.checkpoint_every=100", "val.every=1000"],
    )
    spec = DataSpec(1, 2, ("background", "a"), 2, (4, 4))
    method = _NanAt(cfg, spec, bad)
    tracker = _Log()
    batches = TrainBatches({"labeled": _Constant()}, seed=0)
    trainer = Trainer(cfg, method, spec, batches, [], tmp_path, tracker=tracker, progress=False)
    return trainer, method, tracker


def test_window_means_are_logged_once_per_window(tmp_path) -> None:
    trainer, method, tracker = make(tmp_path, bad=10**6)
    result = trainer.fit()
    assert [step for step, _ in tracker.metrics] == [5, 10, 12]
    first = tracker.metrics[0][1]
    assert set(first) == {"train/loss", "train/loss_sup", "train/tau", "train/lr"}
    assert first["train/tau"] == 0.5 and first["train/loss"] < 1.0  # w moved towards 1
    assert result.steps == 12 and 0 <= result.loader_seconds < result.seconds
    assert (tmp_path / "checkpoints" / "last.pt").is_file()


def test_a_nan_loss_names_its_step_before_anything_is_saved(tmp_path) -> None:
    trainer, method, tracker = make(tmp_path, bad=7)
    with pytest.raises(MedclError, match="the training loss became nan at step 7"):
        trainer.fit()
    assert method.seen[-1] == 9  # stopped at the end of the window (steps 6..10), not later
    assert [step for step, _ in tracker.metrics] == [5]
    assert not (tmp_path / "checkpoints" / "last.pt").exists()


def test_the_schedule_is_reported_once_with_a_warning_for_a_count_past_the_run(tmp_path, caplog) -> None:
    # optim.warmup_steps=50 (absolute) in a 12-step run never ends; 0.25 (a fraction) is 3 steps.
    spec = DataSpec(1, 2, ("background", "a"), 2, (4, 4))
    batches = TrainBatches({"labeled": _Constant()}, seed=0)
    for warmup, expected, warns in (("50", 50, True), ("0.25", 3, False)):
        cfg = build_config(
            {"method": {"name": "supervised"}}, ["train.steps=12", f"optim.warmup_steps={warmup}"]
        )
        caplog.clear()
        with caplog.at_level("WARNING", logger="medcl.schedules"):
            trainer = Trainer(cfg, _NanAt(cfg, spec, 10**6), spec, batches, [], tmp_path, progress=False)
        assert trainer.schedule_params == {"optim.warmup_steps_resolved": expected}
        warnings = [r.getMessage() for r in caplog.records]
        assert len(warnings) == int(warns)
        assert not warns or ("optim.warmup_steps=50" in warnings[0] and "train.steps=12" in warnings[0])
        # The LR schedule uses the same steps: the first step's factor is 1 / warm-up.
        assert trainer.scheduler.get_last_lr()[0] == pytest.approx(cfg.optim.lr / expected)
