"""``--init``: which checkpoint a run folder stands for, and the preprocessing and label checks against the new run."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from medcl.data.cases import DatasetInfo
from medcl.data.splits import Splits
from medcl.engine.resume import InitSource, check_init_labels, check_init_preprocessing, label_cases
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


class _Method:
    def __init__(self, streams: dict[str, bool], validates: bool = True) -> None:
        self.streams, self.validates = streams, validates


def test_label_lineage_checks_every_subset_the_init_run_withheld(caplog: pytest.LogCaptureFixture) -> None:
    info = DatasetInfo(Path("."), "ACDC", {0: "background", 1: "LV"}, {0: "MRI"}, [], [])
    splits = Splits(labeled=["a"], unlabeled=["b", "c"], val=["v"], test=["t"])
    seen = InitSource("run", {"ACDC": ["a", "b", "t", "v", "x"], "Other": ["c"]})
    with caplog.at_level(logging.WARNING):
        assert (
            check_init_labels(seen, "RUN", info, splits, _Method({})) == "unlabeled:1,unlisted:1,val:1,test:1"
        )
    assert (
        "labels of 1 case(s) (b) that this run treats as unlabeled, so the weights have seen more labeled"
        in (caplog.text)
    )
    assert "(x) that this run's splits do not list" in caplog.text
    assert "(v) that this run validates on" in caplog.text and "(t) that this run holds out" in caplog.text
    # A method that never validates: its val cases are not scored. Another dataset's ids never match.
    assert (
        check_init_labels(seen, "RUN", info, splits, _Method({}, validates=False))
        == "unlabeled:1,unlisted:1,test:1"
    )
    assert check_init_labels(InitSource("run", {"ACDC": ["a"]}), "RUN", info, splits, _Method({})) == ""
    assert (
        check_init_labels(InitSource("run", None), "RUN", info, splits, _Method({})) == ""
    )  # older checkpoint


def test_label_lineage_merges_the_labeled_streams_with_what_the_weights_had_seen() -> None:
    info = DatasetInfo(Path("."), "ACDC", {0: "background", 1: "LV"}, {0: "MRI"}, [], [])
    splits = Splits(labeled=["a"], unlabeled=["b"], val=["v"])
    semi = _Method({"labeled": True, "unlabeled": False})
    assert label_cases(info, semi, splits, {"ACDC": ["c"], "Other": ["z"]}) == {
        "ACDC": ["a", "c"],
        "Other": ["z"],
    }
    assert label_cases(info, semi, splits, None) == {"ACDC": ["a"]}
    assert label_cases(info, _Method({"images": False}), splits) == {}  # label-free pretraining reads none
