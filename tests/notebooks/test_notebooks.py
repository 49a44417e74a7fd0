"""The notebooks run top to bottom (nbclient, a real kernel) on tiny settings and produce what they promise:
a tracked run, an evaluation, a mask and an overlay figure (01), and the comparison figure (02)."""

from __future__ import annotations

from pathlib import Path

import mlflow
import nbformat
import pytest

pytestmark = pytest.mark.slow  # executes the notebooks: `make test` runs it, `make test-fast` does not

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"


def _execute(name: str, parameters: dict[str, object]) -> nbformat.NotebookNode:
    """Run a notebook with a cell after its ``parameters`` cell that overrides them (papermill's way)."""
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{name} needs exactly one cell tagged 'parameters'"
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), (
        f"{name} is stored with outputs"
    )
    source = "\n".join(f"{key} = {value!r}" for key, value in parameters.items())
    nb.cells.insert(tagged[0] + 1, nbformat.v4.new_code_cell(source))
    client = NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}
    )
    client.execute()
    return nb


def _text(nb: nbformat.NotebookNode) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            parts.append(out.get("text", "") + str(out.get("data", {}).get("text/plain", "")))
    return "\n".join(parts)


def test_quickstart_then_compare_runs(output_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("nbclient")
    sample = ROOT / "demo" / "Task04_Hippocampus_sample"
    quick = _execute(
        "01_quickstart.ipynb",
        {
            "DATA": str(sample),
            "OUTPUT": str(output_dir),
            "STEPS": 3,
            "LABELED": 2,
            "VAL": 1,
            "TEST": 1,
            "DEVICE": "cpu",
            "OVERRIDES": ["model.features=[8, 8, 16, 16, 32, 8]", "data.batch_size=4", "val.overlays=1"],
        },
    )
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{output_dir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("quickstart")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and "val/dice_mean" in run.data.metrics
    assert run.info.run_id in _text(quick)
    assert (output_dir / "quickstart_eval" / "summary.json").is_file()
    assert len(list((output_dir / "quickstart_masks").glob("*.nii.gz"))) == 1
    overlay = output_dir / "quickstart_overlay.png"
    assert overlay.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    figure = tmp_path / "compare.png"
    compare = _execute("02_compare_runs.ipynb", {"OUTPUT": str(output_dir), "FIGURE": str(figure)})
    text = _text(compare)
    assert "1 finished run(s) with val/best_dice_mean" in text
    assert run.info.run_id in text and "supervised" in text
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
