"""Trainer.validate: one network, and several networks with a selected one (MCSC's CNN + Transformer)."""

from __future__ import annotations

import torch
from torch import nn

from medcl.engine.trainer import Trainer
from medcl.methods.base import DataSpec, Method, RunFacts
from medcl.methods.supervised import SupervisedParams
from medcl.services.configs import build_config


class _Oracle(nn.Module):
    """Logits that reproduce the label stored as the image intensity (Dice 1)."""

    def forward(self, x):
        return torch.nn.functional.one_hot(x[:, 0].round().long(), 3).movedim(-1, 1).float() * 10


class _Background(nn.Module):
    """Predicts background everywhere (Dice 0)."""

    def forward(self, x):
        out = torch.zeros(x.shape[0], 3, *x.shape[2:])
        out[:, 0] = 1
        return out


class _TwoNets(Method):
    name = "two-nets-test"
    Params = SupervisedParams  # the config below names the supervised method

    def __init__(self, cfg, spec):
        super().__init__(cfg.method, RunFacts.of(cfg), spec)
        self.good, self.bad = _Oracle(), _Background()
        self.w = nn.Parameter(torch.zeros(1))
        self.selected = None

    def training_step(self, batch, step):
        return {"loss": self.w.sum()}

    def validation_networks(self):
        return {"bad": self.bad, "good": self.good}

    def select_network(self, dice):
        self.selected = max(dice, key=dice.get)

    def inference_network(self):
        return self.good if self.selected == "good" else self.bad


class _Recorder:
    run_id = None

    def __init__(self):
        self.metrics, self.images = {}, []

    def log_metrics(self, metrics, step):
        self.metrics.update(metrics)

    def log_image(self, pic, key, step):
        self.images.append(key)


def test_each_network_is_validated_and_the_selected_one_is_reported(tmp_path) -> None:
    cfg = build_config(
        {
            "method": {"name": "supervised"},
            "data": {"patch_size": [8, 8]},
            "val": {"hd95": False, "overlays": 1},
        }
    )
    spec = DataSpec(1, 3, ("background", "a", "b"), 2, (8, 8))
    label = torch.zeros(1, 8, 8, 4)
    label[0, 2:5, 2:5, 1:3] = 1
    label[0, 5:7, 1:4, :] = 2
    vols = [{"image": label.clone(), "label": label, "case_id": "c0"}]
    tracker = _Recorder()
    trainer = Trainer(cfg, _TwoNets(cfg, spec), spec, None, vols, tmp_path, tracker=tracker, progress=False)
    metrics = trainer.validate()
    assert metrics["val/good/dice_mean"] == 1.0
    assert metrics["val/bad/dice_mean"] == 0.0
    assert metrics["val/dice_mean"] == 1.0  # the selected network's
    assert metrics["val/dice/a"] == metrics["val/good/dice/a"] == 1.0
    assert metrics["val/selected/good"] == 1.0 and "val/selected/bad" not in metrics
    assert tracker.metrics == metrics and tracker.images == ["val/overlay_0"]


def test_validation_draws_a_progress_bar_per_network_unless_disabled(tmp_path, capsys) -> None:
    cfg = build_config(
        {
            "method": {"name": "supervised"},
            "data": {"patch_size": [8, 8]},
            "val": {"hd95": False, "overlays": 0},
        }
    )
    spec = DataSpec(1, 3, ("background", "a", "b"), 2, (8, 8))
    label = torch.zeros(1, 8, 8, 4)
    label[0, 2:5, 2:5, 1:3] = 1
    vols = [{"image": label.clone(), "label": label, "case_id": f"c{i}"} for i in range(2)]
    for progress in (True, False):
        trainer = Trainer(
            cfg, _TwoNets(cfg, spec), spec, None, vols, tmp_path, tracker=_Recorder(), progress=progress
        )
        trainer.validate()
        err = capsys.readouterr().err
        if progress:
            assert "validate bad" in err and "validate good" in err and "/2 " in err, err
        else:
            assert "validate" not in err
