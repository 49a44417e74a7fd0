"""benchmarks/pseudo_dice.py: the pseudo-label diagnostics read back from a real MLflow store."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """A sqlite store with one MCSC-like run (two pseudo-label curves) and one supervised run (none)."""
    db = tmp_path / "mlflow.db"
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    exp = client.create_experiment("acc", artifact_location=(tmp_path / "artifacts").as_uri())
    run = client.create_run(exp, run_name="mcsc-n3-s0")
    client.log_param(run.info.run_id, "train.steps", "100")
    for step in range(0, 101, 5):
        client.log_metric(run.info.run_id, "train/pseudo_dice", step / 100, step=step)  # CNN: rises to 1
        client.log_metric(run.info.run_id, "train/pseudo_dice_transformer", 0.2, step=step)  # flat
        client.log_metric(run.info.run_id, "train/confident_fraction", 0.5, step=step)
    for step, dice in ((50, 0.6), (100, 0.5)):
        client.log_metric(run.info.run_id, "val/dice_mean", dice, step=step)
    client.set_terminated(run.info.run_id)
    plain = client.create_run(exp, run_name="supervised-n3-s0")
    client.log_metric(plain.info.run_id, "val/dice_mean", 0.7, step=100)
    client.set_terminated(plain.info.run_id)
    return db


def test_curves_table_and_figure_from_a_store(
    benchmark_script, store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mod = benchmark_script("pseudo_dice")
    runs = mod.read_store(str(store))
    assert [r.name for r in runs] == ["mcsc-n3-s0"]  # the supervised run logged no pseudo-labels
    run = runs[0]
    assert run.steps == 100
    # Windows of 5% of the run ending at each point: steps 5-10 -> (0.05 + 0.10) / 2, 95-100 -> 0.975.
    assert run.at("train/pseudo_dice", 0.1) == pytest.approx(0.075)
    assert run.at("train/pseudo_dice", 1.0) == pytest.approx(0.975)
    assert run.best_val() == (0.6, 50)
    assert run.at("train/pseudo_dice", 0.02) == pytest.approx(0.0)  # empty window: the last value before it
    md = mod.table(runs)
    assert "| mcsc-n3-s0 (100) | 0.075 | 0.225 | 0.475 | 0.975 | 0.500 | 0.600 (50) |" in md
    assert (
        "| mcsc-n3-s0 (100), Transformer's pseudo-labels (teach the CNN) | 0.200 | 0.200 | 0.200 | 0.200 |"
        in md
    )
    out = tmp_path / "out"  # the CLI writes the figure and the table
    monkeypatch.setattr("sys.argv", ["pseudo_dice.py", str(store), "--output", str(out), "--dataset", "acdc"])
    mod.main()
    assert (out / "pseudo-dice-acdc.png").stat().st_size > 10_000
    assert (out / "pseudo-dice-acdc.md").read_text(encoding="utf-8").startswith("| run (steps) |")
