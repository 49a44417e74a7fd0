"""medcl.cli: flags that apply to every command."""

from __future__ import annotations

import os
from pathlib import Path

from medcl.cli import main


def test_no_progress_also_silences_mlflow_bars(mini: Path, monkeypatch, capsys) -> None:
    monkeypatch.delenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", raising=False)
    assert main(["data", "check", str(mini), "--no-progress"]) == 0
    assert os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] == "false"
    monkeypatch.delenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", raising=False)
    assert main(["data", "check", str(mini)]) == 0
    assert "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR" not in os.environ
