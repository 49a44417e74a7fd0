"""The README recipe "Pretrain on your own unlabeled CT/MRI, then fine-tune on 5 labeled cases", run as written
(with tiny step counts and patches), and every way of naming its two runs in ``--init`` and ``infer --model``.

The commands are read from the README's code block, so the recipe a user copies is the one tested.
"""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest
import torch

from medcl.cli import main
from medcl.data.dataset import load_dataset
from medcl.engine.data_setup import data_spec
from medcl.engine.resume import init_weights
from medcl.methods import build_method
from medcl.runtime.checkpoint import load_checkpoint
from medcl.services.configs import load_config
from medcl.tracking.mlflow_tracking import resolve_checkpoint

pytestmark = (
    pytest.mark.slow
)  # pretraining then fine-tuning on real data: `make test` runs it, `make test-fast` does not

REPO = Path(__file__).resolve().parents[2]
HEADING = "## Pretrain on your own unlabeled CT/MRI, then fine-tune on 5 labeled cases"
# Appended to the README's commands so that each run takes seconds: 2 steps on 32x32 slices.
TINY = {
    "pretrain": "--steps 2 --set data.patch_size=[32,32] --set method.volumes_per_batch=2 --set method.partitions=2",
    "finetune": "--steps 2 --set data.patch_size=[32,32] --set data.batch_size=4 --set val.every=2 "
    "--set val.hd95=false --set val.max_cases=1 --set tracking.log_model=false",
}


def readme_recipe() -> list[str]:
    """The ``medcl`` command lines of the README's recipe block."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert HEADING in text, "the README lost its pretraining recipe"
    block = text.split(HEADING, 1)[1].split("```", 2)[1]
    return [line for line in block.splitlines() if line.startswith("medcl ")]


def write_dicom_series(src: Path, folder: Path) -> None:
    """A real volume as a DICOM series (int16 slices with position and orientation tags)."""
    import SimpleITK as sitk

    img = sitk.Cast(sitk.RescaleIntensity(sitk.ReadImage(str(src)), 0, 1000), sitk.sitkInt16)
    folder.mkdir(parents=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    uid = "1.2.826.0.1.3680043.2.1125.8"
    direction = "\\".join(map(str, img.GetDirection()[0:6]))
    for z in range(img.GetDepth()):
        s = img[:, :, z]
        position = "\\".join(map(str, img.TransformIndexToPhysicalPoint((0, 0, z))))
        for k, v in {
            "0008|0060": "MR",
            "0020|000e": uid,
            "0020|000d": uid + ".0",
            "0020|0013": str(z + 1),
            "0020|0032": position,
            "0020|0037": direction,
        }.items():
            s.SetMetaData(k, v)
        writer.SetFileName(str(folder / f"IM{z:04d}.dcm"))
        writer.Execute(s)


def run_id_of(out: str) -> str:
    return re.search(r"^run id:\s+(\w+)", out, re.M).group(1)


@pytest.fixture(scope="module")
def recipe(hippocampus: Path, tmp_path_factory: pytest.TempPathFactory, _migrated_mlflow_db: Path):
    """Run the recipe on real Hippocampus scans; returns the two runs (id, folder) and the folders used."""
    tmp = tmp_path_factory.mktemp("recipe")
    runs = tmp / "runs"
    runs.mkdir()
    shutil.copy(_migrated_mlflow_db, runs / "mlflow.db")
    src = hippocampus / "imagesTr"
    scans = tmp / "scans"
    (scans / "site_a").mkdir(parents=True)
    for name in ("hippocampus_001", "hippocampus_004"):
        shutil.copy(src / f"{name}.nii.gz", scans / "site_a" / f"{name}.nii.gz")
    shutil.copy(src / "hippocampus_006.nii.gz", scans / "loose.nii.gz")
    write_dicom_series(src / "hippocampus_008.nii.gz", scans / "site_b" / "series1")
    new_scans = tmp / "new_scans"
    new_scans.mkdir()
    shutil.copy(src / "hippocampus_011.nii.gz", new_scans)
    places = {
        "scans/": str(scans),
        "labeled/": str(hippocampus),
        "splits.json": str(tmp / "splits.json"),
        "new_scans/": str(new_scans),
        "masks/": str(tmp / "masks"),
    }
    ids: dict[str, str] = {}
    outputs = []
    for line in readme_recipe():
        for placeholder, run_id in ids.items():
            line = line.replace(placeholder, run_id)
        argv = [places.get(a, a) for a in shlex.split(line)[1:]]
        argv = [str(REPO / a) if a.startswith("configs/") else a for a in argv]
        command = argv[0]
        if command in TINY:
            argv += ["--runs", str(runs), "--no-progress", *TINY[command].split()]
        elif command == "infer":
            argv += ["--runs", str(runs), "--no-progress"]
        elif command == "data" and argv[1] == "check":
            argv += ["--no-progress"]
        outputs.append((argv, _run(argv)))
        if command == "pretrain":
            ids["<pretraining run id>"] = run_id_of(outputs[-1][1])
        if command == "finetune":
            ids["<fine-tuning run id>"] = run_id_of(outputs[-1][1])
    folders = {p.name.split("-")[0]: p for p in (runs / "runs").iterdir()}
    return {
        "runs": runs,
        "outputs": outputs,
        "masks": tmp / "masks",
        "new_scans": new_scans,
        "pretraining": (ids["<pretraining run id>"], folders["pretrain_global"]),
        "segmentation": (ids["<fine-tuning run id>"], folders["supervised"]),
    }


def _run(argv: list[str]) -> str:
    """Run one medcl command in-process; its stdout, or a failure that shows the command and its output."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    assert code == 0, f"medcl {' '.join(argv)} exited {code}:\n{out.getvalue()}\n{err.getvalue()}"
    return out.getvalue()


def test_readme_recipe_runs_end_to_end(recipe) -> None:
    commands = [argv[0] if argv[0] != "data" else f"data {argv[1]}" for argv, _ in recipe["outputs"]]
    assert commands == ["data check", "pretrain", "data split", "finetune", "infer"]
    check = recipe["outputs"][0][1]
    assert "4 cases checked: 0 errors" in check  # 3 NIfTI files in two levels + 1 DICOM series folder
    pretrain_id, pretrain_dir = recipe["pretraining"]
    state = load_checkpoint(pretrain_dir / "checkpoints" / "last.pt")
    assert state["data_spec"]["modality"] == "mri" and state["config"]["data"]["modality"] == "mri"
    assert (
        sorted(state["config"]["data"]["images"]) and not (pretrain_dir / "checkpoints" / "best.pt").exists()
    )
    # The fine-tuning started from the pretraining run, with the same preprocessing.
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{recipe['runs'] / 'mlflow.db'}")
    finetune_id, _ = recipe["segmentation"]
    run = client.get_run(finetune_id)
    assert run.data.tags["medcl.init_from"] == pretrain_id
    assert run.data.params["data.modality_resolved"] == "mri"
    assert client.get_run(pretrain_id).data.params["data.modality_resolved"] == "mri"
    assert (recipe["masks"] / "hippocampus_011.nii.gz").is_file()


FORMS = {
    "run id": lambda run_id, folder: run_id,
    "runs:/ URI": lambda run_id, folder: f"runs:/{run_id}",
    "runs:/ URI of the checkpoints folder": lambda run_id, folder: f"runs:/{run_id}/checkpoints",
    "run folder": lambda run_id, folder: str(folder),
}


@pytest.mark.parametrize("kind, checkpoint", [("pretraining", "last.pt"), ("segmentation", "best.pt")])
@pytest.mark.parametrize("form", list(FORMS))
def test_init_takes_every_form_of_either_run(
    recipe, hippocampus: Path, kind: str, checkpoint: str, form: str
) -> None:
    source = FORMS[form](*recipe[kind])
    path = resolve_checkpoint(source, None, recipe["runs"])
    assert path.name == checkpoint
    cfg = load_config(
        REPO / "configs" / "hippocampus" / "finetune.yaml",
        [f"data.path={hippocampus}", f"output={recipe['runs']}", "data.patch_size=[32,32]"],
    )
    spec = data_spec(cfg, load_dataset(hippocampus))
    method = build_method(cfg, spec)
    assert init_weights(method, source, cfg, modality=spec.modality).run_id == recipe[kind][0]
    saved = load_checkpoint(path)["model"]
    key = "net.net.conv_0.conv_0.conv.weight"  # the first encoder convolution: pretrained in both runs
    assert torch.equal(method.state_dict()[key], saved[key])


@pytest.mark.parametrize("form", list(FORMS))
def test_infer_takes_every_form_and_explains_a_pretraining_run(
    recipe, tmp_path: Path, form: str, capsys
) -> None:
    model = FORMS[form](*recipe["segmentation"])
    args = ["infer", "--input", str(recipe["new_scans"]), "--runs", str(recipe["runs"]), "--no-progress"]
    assert main([*args, "--model", model, "--output", str(tmp_path / "seg")]) == 0
    assert (tmp_path / "seg" / "hippocampus_011.nii.gz").is_file()
    capsys.readouterr()
    model = FORMS[form](*recipe["pretraining"])
    assert main([*args, "--model", model, "--output", str(tmp_path / "pre")]) == 1
    err = capsys.readouterr().err
    assert "pretrain_global pretraining run" in err and f"--init {model}" in err and "best.pt" not in err
    assert not (tmp_path / "pre").exists() or not any((tmp_path / "pre").iterdir())


def test_finetuning_refuses_a_pretraining_run_of_the_other_modality(
    recipe, hippocampus: Path, capsys
) -> None:
    _, folder = recipe["pretraining"]
    before = sorted((recipe["runs"] / "runs").iterdir())
    code = main(
        [
            "finetune",
            str(REPO / "configs" / "hippocampus" / "finetune.yaml"),
            "--data",
            str(hippocampus),
            "--modality",
            "ct",
            "--init",
            str(folder),
            "--runs",
            str(recipe["runs"]),
            "--steps",
            "1",
        ]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert "was trained on MRI" in err and "this run's data is CT" in err and "--modality mri" in err
    assert sorted((recipe["runs"] / "runs").iterdir()) == before  # refused before any run folder
