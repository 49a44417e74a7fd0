"""What a training run reads: its data, splits (``data.splits``, ``data.labeled``, ``--unlabeled``), streams."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medcl.data.dataset import load_dataset
from medcl.data.splits import Splits
from medcl.engine.data_setup import (
    check_image_only_method,
    data_spec,
    dataset_inputs,
    default_splits,
    load_training_data,
    run_splits,
    stream_case_ids,
    used_case_ids,
)
from medcl.errors import ConfigError, DataError, MedclError
from medcl.methods import METHODS, DataSpec
from medcl.services.configs import build_config

# Method classes carry what the data setup reads (streams, validates): no network is built.
SUPERVISED, FIXMATCH, PRETRAIN = METHODS["supervised"], METHODS["fixmatch"], METHODS["pretrain_global"]
EXTRA = ("hippocampus_008", "hippocampus_011")


def cfg_of(method: str, *overrides: str):
    return build_config({"method": {"name": method}}, list(overrides))


@pytest.fixture
def extra(image_folder) -> Path:
    """A folder of two real unlabeled images (``--unlabeled``)."""
    return image_folder(EXTRA, "extra")


def test_splits_file_then_data_labeled(hippocampus: Path, small_splits: Path) -> None:
    info = load_dataset(hippocampus)
    given = Splits.load(small_splits)
    cfg = cfg_of("fixmatch", f"data.splits={small_splits}", "data.labeled=2")
    splits = run_splits(cfg, info, FIXMATCH, [])
    assert splits.labeled == given.labeled[:2]  # the first N, as the papers' protocols take them
    assert splits.unlabeled == given.labeled[2:] and splits.val == given.val
    assert stream_case_ids("labeled", splits) == given.labeled[:2]
    assert stream_case_ids("unlabeled", splits) == given.labeled[2:]
    assert stream_case_ids("images", splits) == given.labeled  # pretraining: every training case
    assert used_case_ids(FIXMATCH, splits) == [*given.labeled, *given.val]
    with pytest.raises(ValueError, match="unknown data stream 'val'; known: labeled, unlabeled, images"):
        stream_case_ids("val", splits)


def test_without_a_splits_file(mini: Path) -> None:
    info = load_dataset(mini)
    cfg = cfg_of("supervised", f"data.path={mini}", "train.seed=1")
    splits = run_splits(cfg, info, SUPERVISED, [])  # 3 cases: 80/20 rounds to 2 labeled, 1 validation
    assert (len(splits.labeled), len(splits.val), splits.unlabeled) == (2, 1, [])
    assert sorted([*splits.labeled, *splits.val]) == sorted(c.id for c in info.cases)
    assert run_splits(cfg, info, SUPERVISED, []) == splits  # seeded
    every = run_splits(cfg_of("pretrain_global", f"data.path={mini}"), info, PRETRAIN, [])
    assert every == Splits(labeled=[c.id for c in info.cases])  # label-free pretraining: no validation
    assert used_case_ids(PRETRAIN, every) == every.labeled


def test_unlabeled_folders_join_a_splits_file_written_before_them(mini: Path, extra: Path, tmp_path) -> None:
    info = load_dataset(mini, unlabeled_dir=str(extra))
    assert [c.id for c in info.unlabeled] == list(EXTRA)
    path = tmp_path / "splits.json"
    path.write_text(
        json.dumps({"labeled": ["hippocampus_001", "hippocampus_004"], "val": ["hippocampus_006"]})
    )
    cfg = cfg_of("fixmatch", f"data.splits={path}")
    assert run_splits(cfg, info, FIXMATCH, []).unlabeled == []
    assert run_splits(cfg, info, FIXMATCH, [extra]).unlabeled == list(EXTRA)
    # A case the file already lists is not added twice.
    path.write_text(
        json.dumps({"labeled": ["hippocampus_001"], "unlabeled": [EXTRA[1]], "val": ["hippocampus_006"]})
    )
    assert run_splits(cfg, info, FIXMATCH, [extra]).unlabeled == [EXTRA[1], EXTRA[0]]


def test_dataset_inputs_list_what_each_stream_reads(mini: Path, extra: Path) -> None:
    info = load_dataset(mini, unlabeled_dir=str(extra))
    splits = Splits(labeled=["hippocampus_004"], unlabeled=list(EXTRA), val=["hippocampus_001"])
    (training, files, n), (validation, val_files, n_val) = dataset_inputs(info, splits, FIXMATCH)
    assert (training, n, validation, n_val) == ("training", 3, "validation", 1)
    assert [Path(f).resolve() for f in files] == [
        (mini / "imagesTr" / "hippocampus_004.nii.gz").resolve(),
        (mini / "labelsTr" / "hippocampus_004.nii.gz").resolve(),  # the labeled stream reads labels
        *[(extra / f"{i}.nii.gz").resolve() for i in EXTRA],  # the unlabeled stream does not
        (mini / "dataset.json").resolve(),
    ]
    assert [f.parent.name for f in val_files] == ["imagesTr", "labelsTr"]
    assert len(dataset_inputs(info, splits, PRETRAIN)) == 1  # no validation


def test_what_cannot_be_trained_on_is_named(mini: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no dataset given: pass --data DIR"):
        load_training_data(cfg_of("supervised"))
    with pytest.raises(ConfigError, match="give either --data .* or --images"):
        load_training_data(cfg_of("pretrain_global", f"data.path={mini}", f"data.images=[{tmp_path}]"))
    with pytest.raises(ConfigError, match="--unlabeled adds images to a labeled dataset"):
        load_training_data(
            cfg_of("pretrain_global", f"data.images=[{tmp_path}]", f"data.unlabeled_dir={tmp_path}")
        )
    with pytest.raises(ConfigError, match=r"pass --modality ct \(HU window \[-175.0, 250.0\]"):
        load_training_data(cfg_of("pretrain_global", f"data.images=[{tmp_path}]"))
    with pytest.raises(DataError, match=f"--data {tmp_path} has no dataset.json"):
        load_training_data(cfg_of("supervised", f"data.path={tmp_path}"))
    assert load_training_data(cfg_of("supervised", f"data.path={mini}")).root == mini
    one = load_dataset(mini)
    one.cases[1:] = []
    with pytest.raises(MedclError, match=r"has 1 labeled case\(s\); training needs at least 2"):
        default_splits(one, seed=0)
    with pytest.raises(ConfigError, match="method 'supervised' trains or validates on labeled cases"):
        check_image_only_method(SUPERVISED, cfg_of("supervised"))
    check_image_only_method(PRETRAIN, cfg_of("pretrain_global"))


def test_data_spec(mini: Path) -> None:
    info = load_dataset(mini)
    spec = data_spec(cfg_of("supervised", "data.patch_size=[48, 32]"), info)
    assert spec == DataSpec(1, 3, ("background", "Anterior", "Posterior"), 2, (48, 32), "mri")
    assert data_spec(cfg_of("supervised", "data.modality=ct"), info).modality == "ct"
