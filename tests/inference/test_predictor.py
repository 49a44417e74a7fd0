"""Inference: geometry to the voxel, golden Dice of a model trained in the session, model sources."""

from __future__ import annotations

from pathlib import Path

import mlflow
import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from medcl.data.volume import read_volume
from medcl.errors import MedclError
from medcl.inference.outputs import write_labels
from medcl.inference.predictor import Predictor


class SignOfImage(torch.nn.Module):
    """An 'identity-like' model: class 1 wherever the preprocessed intensity is above the mean (0)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.zeros_like(x), x * 50], dim=1)


def dice(a: np.ndarray, b: np.ndarray, k: int) -> float:
    return 2 * ((a == k) & (b == k)).sum() / max((a == k).sum() + (b == k).sum(), 1)


def reoriented_copy(src: Path, dst: Path, spacing=(1.0, 1.0, 1.0)) -> Path:
    """The same voxels stored LPS (x and y axes flipped) with a new spacing: a new, valid geometry."""
    img = nib.load(src)
    data = np.asanyarray(img.dataobj)[::-1, ::-1, :]
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    affine[:3, 3] = [30.0, 40.0, -5.0]
    nib.save(nib.Nifti1Image(np.ascontiguousarray(data), affine), dst)
    return dst


@pytest.fixture(scope="module")
def golden(trained_run):
    result, out, test_ids = trained_run
    return Predictor.load(str(result.best_checkpoint)), result, out, test_ids


def test_golden_dice_on_real_cases(golden, hippocampus: Path) -> None:
    predictor, _, _, test_ids = golden
    scores = []
    for case in test_ids:
        seg = predictor.segment([hippocampus / "imagesTr" / f"{case}.nii.gz"])
        gt, affine = read_volume(hippocampus / "labelsTr" / f"{case}.nii.gz")
        assert seg.labels.shape == gt.shape and seg.labels.dtype == np.uint8
        np.testing.assert_allclose(seg.affine, affine)
        scores.append(np.mean([dice(seg.labels, gt, k) for k in (1, 2)]))
    assert np.mean(scores) > 0.7, scores


def test_reoriented_anisotropic_input_comes_back_on_its_own_grid(
    golden, hippocampus: Path, tmp_path: Path
) -> None:
    predictor, *_ = golden
    src = hippocampus / "imagesTr" / "hippocampus_001.nii.gz"
    plain = predictor.segment([src]).labels
    lps = reoriented_copy(src, tmp_path / "lps.nii.gz", spacing=(1.0, 1.0, 2.5))
    seg = predictor.segment([lps])
    out = write_labels(seg.labels, lps, tmp_path / "out" / "lps.nii.gz")
    written = nib.load(out)
    ref = nib.load(lps)
    assert written.shape == ref.shape and written.get_data_dtype() == np.uint8
    np.testing.assert_allclose(written.affine, ref.affine)
    # The model saw the same RAS volume, so the mask is the plain one stored with the flips of the input.
    np.testing.assert_array_equal(np.asanyarray(written.dataobj), plain[::-1, ::-1, :])


def test_identity_like_model_through_spacing_resampling(golden, hippocampus: Path, tmp_path: Path) -> None:
    """With resampling to 0.5 mm in training config, inversion still lands on the input grid."""
    predictor, *_ = golden
    lps = reoriented_copy(
        hippocampus / "imagesTr" / "hippocampus_004.nii.gz", tmp_path / "x.nii.gz", (1.0, 1.0, 2.0)
    )
    from medcl.data.transforms import volume_transforms

    cfg = predictor.cfg.model_copy(deep=True)
    cfg.data.spacing = [0.5, 0.5, 1.0]
    predictor.preprocess = volume_transforms(cfg.data, "mri", with_label=False)
    predictor.net = SignOfImage()
    seg = predictor.segment([lps])
    ref = nib.load(lps)
    assert seg.labels.shape == ref.shape
    np.testing.assert_allclose(seg.affine, ref.affine)
    image = np.asanyarray(ref.dataobj).astype(np.float32)
    lo, hi = np.percentile(image, [0.5, 99.5])
    expected = (np.clip(image, lo, hi) > np.clip(image, lo, hi).mean()).astype(np.uint8)
    assert (
        seg.labels == expected
    ).mean() > 0.97  # only voxels at intensity edges may differ after resampling


def test_tta_and_lcc(golden, hippocampus: Path) -> None:
    predictor, *_ = golden
    src = [hippocampus / "imagesTr" / "hippocampus_001.nii.gz"]
    assert len(predictor.tta_flips()) == 4
    plain = predictor.segment(src).labels
    tta = predictor.segment(src, tta=True).labels
    assert tta.shape == plain.shape and (tta == plain).mean() > 0.95
    from skimage.measure import label as components

    lcc = predictor.segment(src, postprocess="lcc").labels
    for k in (1, 2):
        if (lcc == k).any():
            assert components(lcc == k).max() == 1


def test_model_sources_checkpoint_run_id_runs_uri_and_registry_alias(golden, hippocampus: Path) -> None:
    _, result, out, _ = golden
    src = [hippocampus / "imagesTr" / "hippocampus_001.nii.gz"]
    expected = Predictor.load(str(result.best_checkpoint)).segment(src).labels
    uri = f"sqlite:///{out / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    mlflow.set_tracking_uri(uri)
    version = mlflow.register_model(result.model_uri, "hippocampus-golden")
    client.set_registered_model_alias("hippocampus-golden", "champion", version.version)
    for source in (
        str(result.run_dir),
        result.run_id,
        f"runs:/{result.run_id}/checkpoints/best.pt",
        "models:/hippocampus-golden@champion",
    ):
        labels = Predictor.load(source, tracking_uri=uri).segment(src).labels
        np.testing.assert_array_equal(labels, expected, err_msg=source)
    with pytest.raises(MedclError, match="cannot find model"):
        Predictor.load("no-such-model", tracking_uri=uri)


def test_nrrd_input_keeps_its_geometry(golden, hippocampus: Path, tmp_path: Path) -> None:
    predictor, *_ = golden
    img = sitk.ReadImage(str(hippocampus / "imagesTr" / "hippocampus_001.nii.gz"))
    img.SetDirection((0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))  # rotated in-plane
    img.SetSpacing((0.8, 0.8, 1.5))
    nrrd = tmp_path / "case.nrrd"
    sitk.WriteImage(img, str(nrrd))
    seg = predictor.segment([nrrd])
    out = write_labels(seg.labels, nrrd, tmp_path / "out" / "case.nrrd")
    back = sitk.ReadImage(str(out))
    assert back.GetSize() == img.GetSize() and back.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_allclose(back.GetSpacing(), img.GetSpacing())
    np.testing.assert_allclose(back.GetDirection(), img.GetDirection())
    np.testing.assert_allclose(back.GetOrigin(), img.GetOrigin())


def test_bad_inputs(golden, hippocampus: Path, tmp_path: Path) -> None:
    from medcl.errors import DataError

    predictor, *_ = golden
    four_d = tmp_path / "4d.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8, 3), np.float32), np.eye(4)), four_d)
    with pytest.raises(DataError, match="4d.nii.gz"):
        predictor.segment([four_d])
    nan = tmp_path / "nan.nii.gz"
    data = np.ones((20, 20, 20), np.float32)
    data[3, 3, 3] = np.nan
    nib.save(nib.Nifti1Image(data, np.eye(4)), nan)
    with pytest.raises(DataError, match="NaN"):
        predictor.segment([nan])


def write_dicom_series(src: Path, folder: Path) -> sitk.Image:
    """Store a real volume as a DICOM series (int16 slices with position/orientation tags)."""
    img = sitk.Cast(sitk.RescaleIntensity(sitk.ReadImage(str(src)), 0, 1000), sitk.sitkInt16)
    img.SetSpacing((1.0, 1.0, 2.0))
    folder.mkdir()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    direction = img.GetDirection()
    series_uid = "1.2.826.0.1.3680043.2.1125.1"
    for z in range(img.GetDepth()):
        s = img[:, :, z]
        position = img.TransformIndexToPhysicalPoint((0, 0, z))
        tags = {
            "0008|0060": "MR",
            "0020|000e": series_uid,
            "0020|000d": series_uid + ".0",
            "0020|0013": str(z + 1),
            "0020|0032": "\\".join(map(str, position)),
            "0020|0037": "\\".join(map(str, direction[0:3] + direction[3:6])),
            "0018|0050": "2.0",
        }
        for k, v in tags.items():
            s.SetMetaData(k, v)
        writer.SetFileName(str(folder / f"slice{z:03d}.dcm"))
        writer.Execute(s)
    return img


def test_dicom_series_folder_becomes_an_aligned_nifti(golden, hippocampus: Path, tmp_path: Path) -> None:
    from medcl.commands.infer import collect_inputs, output_path

    predictor, *_ = golden
    series = tmp_path / "series"
    original = write_dicom_series(hippocampus / "imagesTr" / "hippocampus_001.nii.gz", series)
    cases = collect_inputs([str(series)])
    assert len(cases) == 1 and cases[0].paths == [series]
    seg = predictor.segment(cases[0].paths)
    target = output_path(cases[0], tmp_path / "out", "same")
    assert target.name == "series.nii.gz"
    back = sitk.ReadImage(str(write_labels(seg.labels, series, target)))
    assert back.GetSize() == original.GetSize()
    np.testing.assert_allclose(back.GetSpacing(), (1.0, 1.0, 2.0), atol=1e-4)
    np.testing.assert_allclose(back.GetOrigin(), original.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(back.GetDirection(), original.GetDirection(), atol=1e-6)
    assert (seg.labels > 0).sum() > 100  # the network still finds the hippocampus in the rescaled series
