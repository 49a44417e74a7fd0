"""medcl.services.training_options: one map from training options to config keys, for flags and stages."""

from __future__ import annotations

from pathlib import Path

import pytest

from medcl.services.training_options import TRAINING_OPTIONS, training_overrides

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "hippocampus" / "supervised.yaml"


def test_given_options_become_config_keys() -> None:
    assert training_overrides(steps=100, seed=None, data="d") == {"data.path": "d", "train.steps": 100}
    assert training_overrides() == {}
    every = training_overrides(**{name: i for i, name in enumerate(TRAINING_OPTIONS)})
    assert list(every) == list(TRAINING_OPTIONS.values())  # in the map's order, 0 counts as given
    with pytest.raises(TypeError, match="unknown training option"):
        training_overrides(step=1)


def test_a_command_and_a_workflow_stage_set_the_same_keys(hippocampus: Path, tmp_path: Path) -> None:
    """``medcl train --data D --steps 7 --seed 3 --labeled 2 --runs R`` and a train stage with the same fields
    give the same values for those keys."""
    from medcl.cli import build_parser
    from medcl.commands.common import config_from_args
    from medcl.workflows.spec import build_workflow
    from medcl.workflows.stages import StageContext, training_config

    runs = tmp_path / "runs"
    argv = ["train", str(CONFIG), "--data", str(hippocampus), "--steps", "7", "--seed", "3", "--labeled", "2"]
    from_flags = config_from_args(build_parser().parse_args([*argv, "--runs", str(runs), "--device", "cpu"]))
    stage = {"name": "t", "kind": "train", "config": str(CONFIG), "steps": 7, "seed": 3, "labeled": 2}
    wf = build_workflow({"name": "w", "data": str(hippocampus), "output": str(runs), "stages": [stage]})
    ctx = StageContext(wf, f"sqlite:///{runs / 'mlflow.db'}", "workflow w")
    wf.stages[0].device = "cpu"
    from_stage = training_config(ctx, wf.stages[0], "w-t")
    for cfg in (from_flags, from_stage):
        # resolved: the workflow makes paths absolute, and ../shared may be a symlink
        assert (Path(cfg.data.path).resolve(), cfg.train.steps, cfg.train.seed, cfg.data.labeled) == (
            hippocampus.resolve(),
            7,
            3,
            2,
        )
        assert (Path(cfg.output), cfg.train.device) == (runs, "cpu")
    assert from_stage.tracking.experiment == "workflow-w" and from_stage.tracking.run_name == "w-t"
