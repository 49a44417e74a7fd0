"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real datasets (Task04_Hippocampus, ACDC, LA2018) in ``../shared/data`` beside the repository.

    Fails, rather than skips, when the folder is missing: the tests are meant to run on real data.
    """
    if not SHARED_DATA.is_dir():
        pytest.fail(f"Real data folder {SHARED_DATA} is missing; the data tests need ../shared/data.")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _isolate_mlflow_uri():
    """``mlflow.set_tracking_uri`` exports MLFLOW_TRACKING_URI; keep one test's store out of the next."""
    import os

    import mlflow

    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before
    mlflow.set_tracking_uri(before)
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)


@pytest.fixture(scope="session")
def hippocampus(shared_data: Path) -> Path:
    return shared_data / "Task04_Hippocampus"


@pytest.fixture(scope="session")
def hippo(hippocampus: Path) -> Path:
    return hippocampus


MINI_IDS = ("hippocampus_001", "hippocampus_004", "hippocampus_006")


@pytest.fixture
def mini(hippocampus: Path, tmp_path: Path) -> Path:
    """MSD-layout copy of three real Hippocampus cases, for tests that break or extend a dataset."""
    import json
    import shutil

    root = tmp_path / "mini"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for case_id in MINI_IDS:
        shutil.copy(hippocampus / "imagesTr" / f"{case_id}.nii.gz", root / "imagesTr")
        shutil.copy(hippocampus / "labelsTr" / f"{case_id}.nii.gz", root / "labelsTr")
    data = {
        "name": "mini",
        "modality": {"0": "MRI"},
        "labels": {"0": "background", "1": "Anterior", "2": "Posterior"},
        "training": [
            {"image": f"./imagesTr/{i}.nii.gz", "label": f"./labelsTr/{i}.nii.gz"} for i in MINI_IDS
        ],
    }
    (root / "dataset.json").write_text(json.dumps(data))
    return root


@pytest.fixture(scope="session")
def _migrated_mlflow_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One migrated SQLite MLflow store per session (a fresh store runs migrations for seconds)."""
    import mlflow

    folder = tmp_path_factory.mktemp("mlflow_template")
    db = folder / "mlflow.db"
    mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture
def output_dir(tmp_path: Path, _migrated_mlflow_db: Path) -> Path:
    """A run output folder whose embedded MLflow store is already migrated."""
    import shutil

    out = tmp_path / "out"
    out.mkdir()
    shutil.copy(_migrated_mlflow_db, out / "mlflow.db")
    return out


@pytest.fixture
def small_splits(hippocampus: Path, tmp_path: Path) -> Path:
    """splits.json with 6 labeled and 2 validation Hippocampus cases (fast integration runs)."""
    import json

    ids = sorted(p.name.removesuffix(".nii.gz") for p in (hippocampus / "imagesTr").glob("*.nii.gz"))
    path = tmp_path / "splits.json"
    path.write_text(json.dumps({"labeled": ids[:6], "unlabeled": [], "val": ids[6:8], "test": []}))
    return path


@pytest.fixture(scope="session")
def trained_run(hippocampus: Path, tmp_path_factory: pytest.TempPathFactory, _migrated_mlflow_db: Path):
    """A small supervised model trained once per test session on 12 real Hippocampus cases.

    Returns ``(result, output_dir, val_ids)``; the run is logged (with its MLflow model) in
    ``output_dir/mlflow.db``. Used by the inference and evaluation tests as a golden model.
    """
    import json
    import shutil

    from medcl.config import build_config
    from medcl.engine.run import train

    out = tmp_path_factory.mktemp("trained")
    shutil.copy(_migrated_mlflow_db, out / "mlflow.db")
    ids = sorted(p.name.removesuffix(".nii.gz") for p in (hippocampus / "imagesTr").glob("*.nii.gz"))
    splits = out / "splits.json"
    splits.write_text(
        json.dumps({"labeled": ids[:12], "val": ids[12:15], "test": ids[15:18], "unlabeled": []})
    )
    cfg = build_config(
        {"method": {"name": "supervised"}},
        [
            f"data.path={hippocampus}",
            f"data.splits={splits}",
            f"output={out}",
            "model.features=[16, 16, 32, 64, 128, 16]",
            "data.batch_size=16",
            "optim.lr=0.003",
            "train.steps=300",
            "val.every=300",
            "tracking.run_name=golden",
        ],
    )
    result = train(cfg, progress=False)
    return result, out, ids[15:18]
