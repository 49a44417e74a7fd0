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


@pytest.fixture(scope="session", autouse=True)
def _medcl_state_dir(tmp_path_factory: pytest.TempPathFactory):
    """The list of remembered MLflow stores (medcl.tracking.stores) lives in a temporary folder, not in ~."""
    import os

    before = os.environ.get("MEDCL_STATE_DIR")
    os.environ["MEDCL_STATE_DIR"] = str(tmp_path_factory.mktemp("medcl_state"))
    yield
    if before is None:
        os.environ.pop("MEDCL_STATE_DIR", None)
    else:
        os.environ["MEDCL_STATE_DIR"] = before


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
def image_folder(hippocampus: Path, tmp_path: Path):
    """Factory: ``make(ids, name)`` -> ``tmp_path / name`` holding copies of those real Hippocampus images."""
    import shutil

    def make(ids, name: str = "in") -> Path:
        folder = tmp_path / name
        folder.mkdir(parents=True, exist_ok=True)
        for case_id in ids:
            shutil.copy(hippocampus / "imagesTr" / f"{case_id}.nii.gz", folder)
        return folder

    return make


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

    from medcl.engine.run import train
    from medcl.services.configs import build_config

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


@pytest.fixture
def tiny_checkpoint():
    """Factory: an untrained tiny Hippocampus model of a method, saved as a medcl checkpoint.

    ``tiny_checkpoint(path, method="supervised", extra=[], run_id=None)``: ``extra`` are config overrides,
    ``run_id`` is stored as the MLflow run that "trained" it. Fast stand-in for a trained model wherever only
    probabilities are needed (uncertainty maps, ``medcl suggest``).
    """
    import torch

    from medcl.methods import DataSpec, build_method
    from medcl.runtime.checkpoint import save_checkpoint
    from medcl.services.configs import build_config

    spec = DataSpec(1, 3, ("background", "Anterior", "Posterior"), 2, (64, 64))

    def make(
        path: Path, method: str = "supervised", extra: list[str] = (), run_id: str | None = None
    ) -> Path:
        overrides = ["model.features=[4, 4, 8, 8, 16, 4]", f"output={path.parent}", *extra]
        cfg = build_config({"method": {"name": method}}, overrides)
        torch.manual_seed(0)
        model = build_method(cfg, spec)
        data_spec = {
            **spec.__dict__,
            "class_names": list(spec.class_names),
            "patch_size": list(spec.patch_size),
        }
        state = {"config": cfg.model_dump(mode="json"), "data_spec": data_spec, "model": model.state_dict()}
        state["step"] = 0
        if run_id:
            state["mlflow_run_id"] = run_id
        return save_checkpoint(state, path)

    return make


@pytest.fixture(scope="session")
def tiny_logged_model(hippocampus: Path, tmp_path_factory: pytest.TempPathFactory, _migrated_mlflow_db: Path):
    """A tiny supervised model trained for 4 steps, with its MLflow model logged (export and pyfunc tests).

    Returns the ``TrainResult``; the store is ``result.run_dir.parent.parent / "mlflow.db"``. The weights are
    far from converged, which does not matter to tests that compare two ways of running the same network.
    """
    import json
    import shutil

    from medcl.engine.run import train
    from medcl.services.configs import build_config

    out = tmp_path_factory.mktemp("tiny")
    shutil.copy(_migrated_mlflow_db, out / "mlflow.db")
    ids = sorted(p.name.removesuffix(".nii.gz") for p in (hippocampus / "imagesTr").glob("*.nii.gz"))
    splits = out / "splits.json"
    splits.write_text(json.dumps({"labeled": ids[:3], "val": ids[3:4], "test": [], "unlabeled": []}))
    overrides = ["model.features=[8, 8, 16, 32, 64, 8]", "data.batch_size=4", "data.num_workers=0"]
    overrides += ["train.steps=4", "val.every=4", "tracking.log_model=true", "tracking.run_name=tiny"]
    cfg = build_config(
        {"method": {"name": "supervised"}},
        [f"data.path={hippocampus}", f"data.splits={splits}", f"output={out}", *overrides],
    )
    return train(cfg, progress=False)


@pytest.fixture(autouse=True)
def _grad_mode_is_restored():
    """A test (or code it calls in-process, e.g. a MONAI bundle) must not leave autograd switched off."""
    import sys

    yield
    torch = sys.modules.get("torch")  # not imported here: some tests check what a command imports
    if torch is not None and not torch.is_grad_enabled():
        torch.set_grad_enabled(True)
        pytest.fail("autograd was left disabled by this test")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests that need a trained run (the ``trained_run`` fixture: 300 real training steps) are slow too."""
    for item in items:
        if "trained_run" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
