"""What a stage does: the config of a training stage, checked before anything runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from medcl.errors import ConfigError
from medcl.workflows.spec import build_workflow
from medcl.workflows.stages import StageContext, preflight, training_config

ROOT = Path(__file__).resolve().parents[2]
CONFIG = str(ROOT / "configs" / "hippocampus" / "supervised.yaml")


def context(tmp_path: Path, stages: list[dict], **top) -> StageContext:
    raw = {"name": "w", "output": str(tmp_path / "runs"), "stages": stages, **top}
    wf = build_workflow(raw, source="w.yaml")
    return StageContext(wf, f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}", "workflow w.yaml", progress=False)


def test_training_config_from_the_stage_the_workflow_and_set(tmp_path: Path) -> None:
    stages = [
        {"name": "split", "kind": "split", "labeled": 2, "val": 1},
        {
            "name": "train",
            "kind": "train",
            "config": CONFIG,
            "splits": "${stages.split.splits}",
            "steps": 9,
            "seed": 4,
            "set": {"optim.lr": 0.01, "val.every": 3},
        },
    ]
    top = {"data": str(tmp_path), "device": "cpu", "set": {"optim.lr": 0.5, "data.batch_size": 2}}
    ctx = context(tmp_path, stages, **top)
    train = ctx.wf.stage("train")
    cfg = training_config(ctx, train, "w-train", static_only=True)  # before the split stage ran
    assert cfg.data.splits is None  # the reference is skipped, not read as a path
    assert (cfg.data.path, cfg.train.steps, cfg.train.seed, cfg.train.device) == (str(tmp_path), 9, 4, "cpu")
    assert (cfg.optim.lr, cfg.val.every, cfg.data.batch_size) == (0.01, 3, 2)  # the stage's set wins
    assert Path(cfg.output) == tmp_path / "runs"
    assert (cfg.tracking.uri, cfg.tracking.experiment, cfg.tracking.run_name) == (
        ctx.uri,
        "workflow-w",
        "w-train",
    )
    train.splits = str(tmp_path / "splits.json")  # as resolve_stage leaves it when the stage starts
    assert training_config(ctx, train, "w-train").data.splits == str(tmp_path / "splits.json")


def test_bad_stage_configs_name_the_workflow_and_the_stage(tmp_path: Path) -> None:
    missing = context(tmp_path, [{"name": "t", "kind": "train", "config": str(tmp_path / "nope.yaml")}])
    with pytest.raises(ConfigError) as err:
        training_config(missing, missing.wf.stages[0], None)
    assert str(err.value) == f"workflow w.yaml, stage 't': config file not found: {tmp_path / 'nope.yaml'}"

    typo = context(tmp_path, [{"name": "t", "kind": "train", "config": CONFIG, "set": {"optim.lrr": 1}}])
    with pytest.raises(ConfigError) as err:
        preflight(typo, typo.wf.stages)
    assert "unknown config key 'optim.lrr'" in str(err.value)
    assert f"({CONFIG}, stage 't' of workflow w.yaml)" in str(err.value)

    no_data = context(tmp_path, [{"name": "t", "kind": "train", "config": CONFIG}])
    with pytest.raises(ConfigError, match="stage 't': no dataset: set data: at the top of the workflow"):
        preflight(no_data, no_data.wf.stages)
    split = context(tmp_path, [{"name": "s", "kind": "split", "labeled": 1}])
    with pytest.raises(ConfigError, match=r"^workflow w.yaml, stage 's': no dataset \(set data:\)$"):
        split.data(split.wf.stages[0])
    preflight(split, split.wf.stages)  # only training stages have a config to check
