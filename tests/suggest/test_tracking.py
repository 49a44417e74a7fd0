"""The MLflow run of a suggestion: nested under the model's training run when the store has it."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest

from medcl.suggest.ranking import Ranked, SuggestResult
from medcl.suggest.tracking import log_to_mlflow, model_run_of

RUN = "0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize(
    ("source", "recorded", "expected"),
    [
        ("model.pt", RUN, RUN),  # the checkpoint's own record wins
        (RUN, None, RUN),
        (f"runs:/{RUN}", None, RUN),
        (f"runs:/{RUN}/checkpoints/best.pt", None, RUN),
        (f"runs:/{RUN[:-1]}", None, None),  # 31 hex digits: not a run id
        ("models:/hippocampus@champion", None, None),
        (f"/data/{RUN}/best.pt", None, None),  # a path that happens to hold one
    ],
)
def test_model_run_of(source: str, recorded: str | None, expected: str | None) -> None:
    assert model_run_of(source, recorded) == expected


def result(model_run: str | None) -> SuggestResult:
    rows = [
        Ranked(1, "patient002", 0.9, True, ["patient002_frame01", "patient002_frame12"]),
        Ranked(2, "patient001", 0.4, False, ["patient001_frame01"]),
    ]
    return SuggestResult("entropy", 1, rows, "model.pt", model_run, r"patient\d+", 0.25)


def test_a_run_under_the_model_run_of_the_same_store(output_dir: Path, tmp_path: Path) -> None:
    uri = f"sqlite:///{output_dir / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("trained-here", artifact_location=str(output_dir / "artifacts"))
    parent = client.create_run(experiment, run_name="train").info.run_id
    csv = tmp_path / "next.csv"
    csv.write_text("rank,case\n1,patient002\n")
    run_id, got_parent = log_to_mlflow(
        result(parent), [csv], store=(uri, str(output_dir / "artifacts")), extra_params={"data": "/d"}
    )
    assert got_parent == parent
    run = client.get_run(run_id)
    assert run.info.experiment_id == experiment and run.info.status == "FINISHED"
    assert run.data.tags["mlflow.parentRunId"] == parent and run.data.tags["medcl.model_run"] == parent
    assert run.info.run_name.startswith("suggest-entropy-")
    assert run.data.params == {
        "strategy": "entropy",
        "budget": "1",
        "pool_groups": "2",
        "pool_cases": "3",
        "group_by": r"patient\d+",
        "model": "model.pt",
        "data": "/d",
    }
    assert run.data.metrics["suggest/seconds_per_case"] == 0.25
    local = Path(
        mlflow.artifacts.download_artifacts(run_id=run_id, tracking_uri=uri, dst_path=str(tmp_path / "a"))
    )
    assert (local / "suggest" / "next.csv").read_text() == csv.read_text()
    assert json.loads((local / "suggest" / "suggested.json").read_text()) == {
        "suggested": [
            {
                "rank": 1,
                "case": "patient002",
                "score": 0.9,
                "cases": ["patient002_frame01", "patient002_frame12"],
            }
        ]
    }


def test_a_model_from_another_store_gets_a_plain_run(output_dir: Path) -> None:
    uri = f"sqlite:///{output_dir / 'mlflow.db'}"
    run_id, parent = log_to_mlflow(result(RUN), [], store=(uri, str(output_dir / "artifacts")))
    assert parent is None
    client = mlflow.MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    assert client.get_experiment(run.info.experiment_id).name == "suggestions"
    assert "mlflow.parentRunId" not in run.data.tags
    assert run.data.tags["medcl.model_run"] == RUN  # still linked by tag
    _, parent = log_to_mlflow(result(None), [], store=(uri, None))
    assert parent is None
