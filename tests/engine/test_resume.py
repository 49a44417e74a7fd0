"""``--init``: which checkpoint a run folder stands for, and the preprocessing check against the new run."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from medcl.engine.resume import check_init_preprocessing
from medcl.errors import ConfigError, MedclError
from medcl.services.configs import build_config
from medcl.tracking.mlflow_tracking import pick_checkpoint


def test_pick_checkpoint_prefers_best_then_model_then_last(tmp_path: Path) -> None:
    ckpts = tmp_path / "run" / "checkpoints"
    ckpts.mkdir(parents=True)
    with pytest.raises(MedclError, match="without a checkpoint"):
        pick_checkpoint(tmp_path / "run")
    (ckpts / "last.pt").touch()  # a pretraining run: last.pt only
    assert pick_checkpoint(tmp_path / "run") == ckpts / "last.pt"
    assert pick_checkpoint(ckpts) == ckpts / "last.pt"  # a downloaded checkpoints/ folder
    (ckpts / "best.pt").touch()
    assert pick_checkpoint(tmp_path / "run") == ckpts / "best.pt"


def _init(modality: str, **data) -> dict:
    return {"data_spec": {"modality": modality}, "config": {"data": {"modality": modality, **data}}}


def test_other_modality_is_refused_with_the_fix() -> None:
    cfg = build_config({}, ["data.modality=auto"])
    with pytest.raises(
        ConfigError, match=r"trained on CT .* this run's data is MRI .*from dataset.json.*--modality ct"
    ):
        check_init_preprocessing(_init("ct"), "RUN", cfg, "mri")
    check_init_preprocessing(_init("mri"), "RUN", cfg, "mri")
    check_init_preprocessing(
        {"model": {}}, "RUN", cfg, "ct"
    )  # checkpoints without a data_spec: nothing to check


def test_other_ct_window_warns_with_the_key(caplog: pytest.LogCaptureFixture) -> None:
    cfg = build_config({}, ["data.modality=ct"])
    with caplog.at_level(logging.WARNING, logger="medcl.engine.resume"):
        check_init_preprocessing(_init("ct", ct_window=[-1000, 1000]), "RUN", cfg, "ct")
    assert "data.ct_window=[-1000, 1000]" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="medcl.engine.resume"):
        check_init_preprocessing(_init("ct", ct_window=list(cfg.data.ct_window)), "RUN", cfg, "ct")
    assert caplog.text == ""
