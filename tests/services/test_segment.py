"""medcl.services.segment with a real (untrained, tiny) Predictor on real Hippocampus images."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import nibabel as nib
import numpy as np
import pytest

from medcl.inference.inputs import collect_inputs
from medcl.services.segment import log_segmentation, segment_cases, uncertainty_path
from medcl.tracking.client_runs import ClientStore, tracking_uri_set

IDS = ["hippocampus_001", "hippocampus_004"]


@pytest.fixture
def predictor(tiny_checkpoint, tmp_path: Path):
    from medcl.inference.predictor import Predictor

    return Predictor.load(str(tiny_checkpoint(tmp_path / "model" / "model.pt")), device="cpu")


@pytest.fixture
def inputs(image_folder) -> Path:
    return image_folder(IDS)


def test_uncertainty_path_keeps_the_mask_format() -> None:
    assert uncertainty_path(Path("o/case.nii.gz")) == Path("o/case_uncertainty.nii.gz")
    assert uncertainty_path(Path("o/case.nrrd")) == Path("o/case_uncertainty.nrrd")


def test_masks_and_maps_on_each_input_grid(predictor, inputs: Path, tmp_path: Path) -> None:
    out = tmp_path / "out" / "masks"  # created
    result = segment_cases(
        predictor, collect_inputs([str(inputs)]), out, probabilities=True, uncertainty=True
    )
    assert result.failures == [] and [c.name for c in result.written] == IDS
    assert result.seconds == pytest.approx(sum(c.seconds for c in result.written)) and result.seconds > 0
    assert result.masks == {c: str(out / f"{c}.nii.gz") for c in IDS}
    for case in result.written:
        image, mask = nib.load(inputs / f"{case.name}.nii.gz"), nib.load(case.mask)
        assert mask.shape == image.shape and mask.get_data_dtype() == np.uint8
        np.testing.assert_allclose(mask.affine, image.affine)
        labels = np.asarray(mask.dataobj)
        np.testing.assert_array_equal(case.counts, np.bincount(labels.ravel(), minlength=3))
        unc = nib.load(uncertainty_path(case.mask))
        assert unc.shape == image.shape and unc.get_data_dtype() == np.float32
        probs = np.load(out / f"{case.name}_probabilities.npz")
        assert probs["probabilities"].shape == (3, *image.shape) and list(probs["class_names"]) == list(
            predictor.class_names
        )


def test_existing_files_fail_their_case_unless_overwritten(predictor, inputs: Path, tmp_path: Path) -> None:
    cases = collect_inputs([str(inputs)])
    out = tmp_path / "masks"
    first = segment_cases(predictor, cases[:1], out)
    before = first.written[0].mask.stat().st_mtime_ns
    seen: list[str] = []
    again = segment_cases(predictor, cases, out, on_error=lambda name, exc: seen.append(f"{name}: {exc}"))
    assert [c.name for c in again.written] == IDS[1:]  # the other case still goes on
    assert again.failures == [(IDS[0], f"{out / IDS[0]}.nii.gz exists; pass --overwrite to replace it")]
    assert seen == [f"{n}: {m}" for n, m in again.failures]
    assert first.written[0].mask.stat().st_mtime_ns == before
    replaced = segment_cases(predictor, cases, out, overwrite=True)
    assert replaced.failures == [] and len(replaced.written) == 2


def test_never_writes_over_its_own_input(predictor, inputs: Path) -> None:
    original = (inputs / f"{IDS[0]}.nii.gz").read_bytes()
    result = segment_cases(predictor, collect_inputs([str(inputs)]), inputs, overwrite=True)
    assert result.written == [] and all("would overwrite its own input" in m for _, m in result.failures)
    assert (inputs / f"{IDS[0]}.nii.gz").read_bytes() == original


def test_nifti_format_and_tta(predictor, hippocampus: Path, tmp_path: Path) -> None:
    import SimpleITK as sitk

    nrrd = tmp_path / "case.nrrd"
    sitk.WriteImage(sitk.ReadImage(str(hippocampus / "imagesTr" / f"{IDS[0]}.nii.gz")), str(nrrd))
    same = segment_cases(predictor, collect_inputs([str(nrrd)]), tmp_path / "same")
    nifti = segment_cases(predictor, collect_inputs([str(nrrd)]), tmp_path / "nifti", fmt="nifti", tta=True)
    assert same.written[0].mask.name == "case.nrrd" and nifti.written[0].mask.name == "case.nii.gz"


def test_log_segmentation(predictor, inputs: Path, tmp_path: Path, output_dir: Path) -> None:
    cases = collect_inputs([str(inputs)])
    (tmp_path / "masks").mkdir()
    (tmp_path / "masks" / f"{IDS[0]}.nii.gz").write_bytes(b"")  # fails: exists
    result = segment_cases(predictor, cases, tmp_path / "masks")
    uri = f"sqlite:///{output_dir / 'mlflow.db'}"
    with tracking_uri_set(uri):
        store = ClientStore(uri, str(output_dir / "mlartifacts"))
        run = store.create_run(store.experiment("infer-test"), "infer", {})
        log_segmentation(run, result, {"model": "m", "tta": False, "postprocess": None})
        run.end()
    client = mlflow.MlflowClient(tracking_uri=uri)
    logged = client.get_run(run.run_id)
    assert logged.data.params == {"model": "m", "tta": "False", "postprocess": "None"}
    assert logged.data.metrics["infer/n_cases"] == 1 and logged.data.metrics["infer/seconds"] > 0
    record = json.loads(Path(client.download_artifacts(run.run_id, "masks.json", str(tmp_path))).read_text())
    assert record["masks"] == result.masks and record["failed"][0].startswith(f"{IDS[0]}: ")
    assert [a.path for a in client.list_artifacts(run.run_id, "masks")] == [f"masks/{IDS[1]}.nii.gz"]
