"""``medcl export``: each format round-trips on real Hippocampus data to the masks of ``medcl infer``."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medcl.cli import main
from medcl.inference.predictor import Predictor

CASE = "hippocampus_001"


@pytest.fixture(scope="module")
def infer_masks(tiny_logged_model, hippocampus: Path, tmp_path_factory: pytest.TempPathFactory):
    """``(checkpoint, image, mask written by medcl infer)`` for one real case."""
    model = str(tiny_logged_model.best_checkpoint)
    image = hippocampus / "imagesTr" / f"{CASE}.nii.gz"
    out = tmp_path_factory.mktemp("infer")
    args = ["infer", "--model", model, "--input", str(image), "--output", str(out)]
    assert main([*args, "--device", "cpu", "--precision", "fp32", "--no-progress"]) == 0
    return model, image, np.asarray(nib.load(out / f"{CASE}.nii.gz").dataobj)


def export(model: str, fmt: str, out: Path) -> Path:
    assert main(["export", model, "--format", fmt, "-o", str(out)]) == 0
    return out


def test_torchscript_and_onnx_give_medcl_infer_masks(infer_masks, tmp_path: Path) -> None:
    from medcl.inference.export import OnnxNetwork

    model, image, want = infer_masks
    predictor = Predictor.load(model, device="cpu", precision="fp32")
    ts = export(model, "torchscript", tmp_path / "ts")
    onnx = export(model, "onnx", tmp_path / "onnx")
    described = json.loads((ts / "medcl_inference.json").read_text())
    assert described["class_names"] == ["background", "Anterior", "Posterior"]
    assert described["patch_size"] == [64, 64] and described["slice_axis"] == 2

    for net in (torch.jit.load(str(ts / "model.ts")), OnnxNetwork(onnx / "model.onnx")):
        # Dynamic batch and spatial sizes, not only the 64x64 training patch.
        assert tuple(net(torch.zeros(3, 1, 96, 48)).shape) == (3, 3, 96, 48)
        predictor.net = net  # the exported network in medcl's own pipeline: the same masks
        np.testing.assert_array_equal(predictor.segment([image]).labels, want)


def test_bundle_segments_a_nifti_folder_like_medcl_infer(infer_masks, tmp_path: Path) -> None:
    from monai.bundle import run

    model, image, want = infer_masks
    bundle = export(model, "bundle", tmp_path / "bundle")
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert meta["network_data_format"]["outputs"]["pred"]["channel_def"]["2"] == "Posterior"
    assert (bundle / "models" / "model.ts").is_file()
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(image, images)
    # What `python -m monai.bundle run ...` calls, in this process (the bundle needs no medcl).
    run(
        bundle_root=str(bundle),
        config_file=str(bundle / "configs" / "inference.json"),
        meta_file=str(bundle / "configs" / "metadata.json"),
        dataset_dir=str(images),
        output_dir=str(tmp_path / "masks"),
    )
    mask = nib.load(tmp_path / "masks" / f"{CASE}_seg.nii.gz")
    assert mask.get_data_dtype() == np.uint8
    np.testing.assert_allclose(mask.affine, nib.load(image).affine)
    np.testing.assert_array_equal(np.asarray(mask.dataobj), want)


def test_onnx_without_the_extra_says_what_to_install(infer_masks, tmp_path, monkeypatch, capsys) -> None:
    model, *_ = infer_masks
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    assert main(["export", model, "--format", "onnx", "-o", str(tmp_path / "x")]) == 1
    assert "pip install 'medcl[export]'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_refuses_a_folder_that_is_not_empty(infer_masks, tmp_path, capsys) -> None:
    model, *_ = infer_masks
    (tmp_path / "keep.txt").write_text("mine")
    assert main(["export", model, "--format", "torchscript", "-o", str(tmp_path)]) == 1
    assert "not empty" in capsys.readouterr().err
