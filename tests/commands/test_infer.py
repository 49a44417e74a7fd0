"""`medcl infer` from the command line: batches of files, safety, the final table."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np

from medcl.cli import main


def make_inputs(hippocampus: Path, folder: Path) -> list[str]:
    folder.mkdir()
    ids = ["hippocampus_001", "hippocampus_004"]
    for i in ids:
        shutil.copy(hippocampus / "imagesTr" / f"{i}.nii.gz", folder)
    (folder / "broken.nii.gz").write_bytes(gzip.compress(b"truncated"))
    return ids


def snapshot(folder: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_folder_with_a_corrupt_file(trained_run, hippocampus: Path, tmp_path: Path, capsys) -> None:
    result, _, _ = trained_run
    inputs = tmp_path / "in"
    ids = make_inputs(hippocampus, inputs)
    before = snapshot(inputs)
    out = tmp_path / "masks"
    code = main(
        [
            "infer",
            "--model",
            str(result.best_checkpoint),
            "--input",
            str(inputs),
            "--output",
            str(out),
            "--no-progress",
        ]
    )
    printed = capsys.readouterr()
    assert code == 1  # the bad case fails the command...
    assert "broken" in printed.out + printed.err
    for i in ids:  # ...but every good case is written, aligned with its input
        mask = nib.load(out / f"{i}.nii.gz")
        ref = nib.load(inputs / f"{i}.nii.gz")
        assert mask.shape == ref.shape and mask.get_data_dtype() == np.uint8
        np.testing.assert_allclose(mask.affine, ref.affine)
        assert i in printed.out  # final table row
    assert "2 of 3 case(s) written" in printed.out
    assert snapshot(inputs) == before  # inputs untouched
    assert sorted(p.name for p in out.iterdir()) == [f"{i}.nii.gz" for i in ids]  # no temp files left

    # A second run refuses to overwrite, per case, unless --overwrite.
    first = (out / f"{ids[0]}.nii.gz").stat().st_mtime_ns
    again = ["infer", "--model", str(result.best_checkpoint), "--input", str(inputs / f"{ids[0]}.nii.gz")]
    again += ["--output", str(out), "--no-progress"]
    assert main(again) == 1 and "--overwrite" in capsys.readouterr().out
    assert (out / f"{ids[0]}.nii.gz").stat().st_mtime_ns == first
    assert main([*again, "--overwrite", "--save-probabilities", "--tta"]) == 0
    probs = np.load(out / f"{ids[0]}_probabilities.npz")["probabilities"]
    assert probs.shape == (3, *nib.load(out / f"{ids[0]}.nii.gz").shape)


def test_refuses_to_write_into_the_input_folder(
    trained_run, hippocampus: Path, tmp_path: Path, capsys
) -> None:
    result, _, _ = trained_run
    inputs = tmp_path / "in"
    make_inputs(hippocampus, inputs)
    before = snapshot(inputs)
    code = main(
        ["infer", "--model", str(result.best_checkpoint), "--input", str(inputs), "--output", str(inputs)]
    )
    assert code == 1 and "holds input images" in capsys.readouterr().err
    assert snapshot(inputs) == before


def test_list_file_and_nifti_format(trained_run, hippocampus: Path, tmp_path: Path) -> None:
    import SimpleITK as sitk

    result, _, _ = trained_run
    mha = tmp_path / "case.mha"
    sitk.WriteImage(sitk.ReadImage(str(hippocampus / "imagesTr" / "hippocampus_001.nii.gz")), str(mha))
    listing = tmp_path / "cases.txt"
    listing.write_text("# one per line\ncase.mha\n")
    out = tmp_path / "o"
    assert (
        main(
            [
                "infer",
                "--model",
                str(result.run_dir),
                "--input",
                str(listing),
                "--output",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    assert (out / "case.mha").is_file()
    assert (
        main(
            [
                "infer",
                "--model",
                str(result.run_dir),
                "--input",
                str(mha),
                "--output",
                str(out),
                "--format",
                "nifti",
                "--no-progress",
            ]
        )
        == 0
    )
    assert nib.load(out / "case.nii.gz").shape == sitk.ReadImage(str(mha)).GetSize()


def test_unknown_model_fails_in_one_line_without_creating_a_store(
    hippocampus: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    """A lookup only reads: neither ``./medcl_runs`` nor the ``--runs`` folder may appear."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    image = str(hippocampus / "imagesTr" / "hippocampus_001.nii.gz")
    for model, extra in (("typo.pt", []), ("0123456789abcdef0123456789abcdef", ["--runs", "nostore"])):
        code = main(["infer", "--model", model, "--input", image, "--output", "masks", *extra])
        err = capsys.readouterr().err
        assert code == 1
        assert err.count("\n") == 1 and model in err and "no MLflow store" in err, err
    assert list(tmp_path.iterdir()) == []
