"""Tests for medcl.data.splits on the real Hippocampus and ACDC case lists."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import medcl
from medcl.data.dataset import Case, DatasetInfo, load_dataset
from medcl.data.splits import Splits, make_splits, parse_amount
from medcl.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def hippo(shared_data: Path) -> DatasetInfo:
    return load_dataset(shared_data / "Task04_Hippocampus")


@pytest.fixture(scope="module")
def acdc(shared_data: Path) -> DatasetInfo:
    return load_dataset(shared_data / "ACDC")


def subsets(splits: Splits) -> dict[str, list[str]]:
    return {"labeled": splits.labeled, "unlabeled": splits.unlabeled, "val": splits.val, "test": splits.test}


# --- parse_amount ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "total", "expected"),
    [
        ("10%", 208, 21),  # 20.8 rounds to 21
        ("10%", 80, 8),
        ("5%", 10, 1),  # 0.5 rounds half up
        ("1%", 8, 1),  # at least one when the percentage is above 0
        ("0%", 8, 0),
        ("100%", 8, 8),
        (" 2.5% ", 200, 5),
        ("12", 208, 12),
        (12, 208, 12),
        ("0", 5, 0),
        (5, 5, 5),
    ],
)
def test_parse_amount(text, total, expected):
    assert parse_amount(text, total, "--labeled") == expected


@pytest.mark.parametrize(
    ("text", "error", "message"),
    [
        ("ten", ConfigError, r"--val must be a count like 12 or a percentage like '10%', got 'ten'"),
        ("1.5", ConfigError, r"must be a count"),
        ("%", ConfigError, r"between 0% and 100%"),
        ("150%", ConfigError, r"between 0% and 100%, got '150%'"),
        ("-5%", ConfigError, r"between 0% and 100%"),
        ("-3", ConfigError, r"--val must not be negative, got '-3'"),
        (-3, ConfigError, r"must not be negative"),
        (0.1, ConfigError, r"must be a count"),
        (True, ConfigError, r"must be a count"),
        ("21", DataError, r"--val asks for 21 but there are only 20"),
    ],
)
def test_parse_amount_rejects(text, error, message):
    with pytest.raises(error, match=message):
        parse_amount(text, 20, "--val")


# --- make_splits ---------------------------------------------------------------------------------------------


def test_counts_disjoint_and_complete(hippo: DatasetInfo):
    splits = make_splits(hippo, labeled="10%", val=20, test="5%", seed=3)
    assert (len(splits.labeled), len(splits.val), len(splits.test)) == (21, 20, 10)
    assert len(splits.unlabeled) == 208 - 21 - 20 - 10
    everything = [i for ids in subsets(splits).values() for i in ids]
    assert len(everything) == len(set(everything)) == 208
    assert set(everything) == {c.id for c in hippo.cases}
    for ids in subsets(splits).values():
        assert ids == sorted(ids)
    assert splits.meta["seed"] == 3
    assert splits.meta["requested"] == {"labeled": "10%", "val": 20, "test": "5%"}
    assert splits.meta["groups"] == {"labeled": 21, "val": 20, "test": 10, "unlabeled": 157}
    assert splits.meta["dataset"] == str(hippo.root)
    assert splits.meta["medcl_version"] == medcl.__version__


def test_same_seed_same_splits_other_seed_differs(hippo: DatasetInfo):
    a = make_splits(hippo, labeled=10, val=10, seed=7)
    b = make_splits(hippo, labeled=10, val=10, seed=7)
    c = make_splits(hippo, labeled=10, val=10, seed=8)
    assert a == b
    assert a.to_dict() == b.to_dict()
    assert a.labeled != c.labeled


def test_adding_cases_to_request_keeps_test_stable(hippo: DatasetInfo):
    # test is drawn first, so changing the labeled count does not move test cases.
    a = make_splits(hippo, labeled=5, test=10, seed=0)
    b = make_splits(hippo, labeled=50, test=10, seed=0)
    assert a.test == b.test


def test_group_by_keeps_acdc_frames_together(acdc: DatasetInfo):
    splits = make_splits(acdc, labeled=3, val="10%", test=10, seed=1, group_by=r"patient\d+")
    assert splits.meta["groups"] == {"labeled": 3, "val": 8, "test": 10, "unlabeled": 59}
    assert splits.meta["num_groups"] == 80
    assert (len(splits.labeled), len(splits.val), len(splits.test)) == (6, 16, 20)
    where = {}
    for name, ids in subsets(splits).items():
        for case_id in ids:
            where[case_id] = name
    assert len(where) == 160
    for case_id, name in where.items():
        patient = case_id.split("_")[0]
        assert where[f"{patient}_frame01"] == where[f"{patient}_frame02"] == name


def test_group_by_capture_group(acdc: DatasetInfo):
    whole = make_splits(acdc, labeled=7, seed=2, group_by=r"patient\d+")
    captured = make_splits(acdc, labeled=7, seed=2, group_by=r"^(patient\d+)_frame")
    assert whole.labeled == captured.labeled
    assert len(captured.labeled) == 14


def test_group_by_errors(acdc: DatasetInfo):
    with pytest.raises(DataError, match=r"Case id 'patient002_frame01' does not match group_by 'frame03'"):
        make_splits(acdc, labeled=1, group_by="frame03")
    with pytest.raises(ConfigError, match=r"group_by 'patient\(' is not a valid regular expression"):
        make_splits(acdc, labeled=1, group_by="patient(")


def test_request_larger_than_groups(acdc: DatasetInfo):
    with pytest.raises(
        DataError, match=r"50 labeled \+ 20 val \+ 20 test = 90 groups, .* only 80 labeled groups"
    ):
        make_splits(acdc, labeled=50, val=20, test=20, group_by=r"patient\d+")
    with pytest.raises(ConfigError, match=r"labeled must select at least one group"):
        make_splits(acdc, labeled=0)


def test_dataset_unlabeled_cases_join_unlabeled():
    root = Path("/d")
    info = DatasetInfo(
        root=root,
        name="d",
        labels={0: "background", 1: "fg"},
        channel_names={0: "MRI"},
        cases=[Case(f"c{i}", (root / f"c{i}.nii.gz",), root / f"l{i}.nii.gz") for i in range(5)],
        unlabeled=[Case("u0", (root / "u0.nii.gz",), None)],
    )
    splits = make_splits(info, labeled=2, val=1)
    assert "u0" in splits.unlabeled and len(splits.unlabeled) == 3
    splits.check_against(info)


# --- save / load ---------------------------------------------------------------------------------------------


def test_save_load_round_trip(hippo: DatasetInfo, tmp_path: Path):
    splits = make_splits(hippo, labeled="10%", val=10, seed=0)
    path = tmp_path / "out" / "splits.json"
    splits.save(path)
    assert splits.path == path
    assert [p.name for p in path.parent.iterdir()] == ["splits.json"]  # no temporary file left behind
    text = path.read_text()
    assert text.startswith('{\n "labeled": [\n  "hippocampus_')  # indent 1
    loaded = Splits.load(path)
    assert loaded == splits
    assert loaded.path == path
    loaded.check_against(hippo)


def test_load_shipped_acdc_train_val_file(shared_data: Path, acdc: DatasetInfo):
    path = shared_data / "ACDC" / "splits.json"
    splits = Splits.load(path)
    assert len(splits.labeled) == 140 and len(splits.val) == 20
    assert splits.unlabeled == [] and splits.test == []
    assert splits.meta["source_format"] == "train/val"
    assert "SSL4MIS" in splits.meta["note"]
    assert splits.path == path
    assert "patient002_frame01" in splits.val
    splits.check_against(acdc)


def test_load_medcl_file_missing_lists_are_empty(tmp_path: Path):
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"labeled": ["a", "b"], "val": ["c"]}))
    splits = Splits.load(path)
    assert (splits.labeled, splits.unlabeled, splits.val, splits.test, splits.meta) == (
        ["a", "b"],
        [],
        ["c"],
        [],
        {},
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"labeled": ["a"],}', r"is not valid JSON: .* line 1, column \d+"),
        ("[1, 2]", r"must hold a JSON object, not a list"),
        (
            '{"labeled": ["a"], "training": ["b"]}',
            r"unknown key 'training'; allowed keys are labeled, unlabeled",
        ),
        ('{"train": ["a"], "labeled": ["b"]}', r"unknown key 'labeled'; .* train, val, test, note"),
        ('{"labeled": "a"}', r"'labeled' in splits file .* must be a list of case ids, got str"),
        ('{"val": ["a", 3]}', r"'val' in splits file .* must hold case ids \(strings\); item 1 is 3"),
        (
            '{"labeled": ["a", "b"], "val": ["c", "b"]}',
            r"Case 'b' is in both 'labeled' and 'val' of splits file",
        ),
        ('{"train": ["a"], "val": ["a"]}', r"Case 'a' is in both 'labeled' and 'val'"),
        ('{"test": ["a", "a"]}', r"Case 'a' is listed twice in 'test'"),
        ('{"labeled": ["a"], "meta": []}', r"'meta' in splits file .* must be an object"),
    ],
)
def test_load_rejects_bad_files(tmp_path: Path, content: str, message: str):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(DataError, match=message) as excinfo:
        Splits.load(path)
    assert str(path) in str(excinfo.value)


def test_load_missing_file(tmp_path: Path):
    with pytest.raises(
        DataError, match=rf"Splits file {re.escape(str(tmp_path / 'none.json'))} does not exist"
    ):
        Splits.load(tmp_path / "none.json")
    with pytest.raises(DataError, match=r"is a folder, not a file"):
        Splits.load(tmp_path)


# --- check_against -------------------------------------------------------------------------------------------


def test_check_against_unknown_ids(hippo: DatasetInfo, tmp_path: Path):
    path = tmp_path / "s.json"
    missing = [f"hippocampus_9{i:02d}" for i in range(7)]
    path.write_text(json.dumps({"labeled": ["hippocampus_001"], "val": ["hippocampus_004", *missing]}))
    splits = Splits.load(path)
    with pytest.raises(DataError) as excinfo:
        splits.check_against(hippo)
    message = str(excinfo.value)
    assert str(path) in message
    assert "7 id(s) of 'val' are not in dataset" in message
    assert (
        "hippocampus_900, hippocampus_901, hippocampus_902, hippocampus_903, hippocampus_904, ..." in message
    )
    assert "hippocampus_905" not in message


def test_check_against_unlabeled_case_in_labeled_subset(tmp_path: Path):
    root = Path("/d")
    info = DatasetInfo(
        root=root,
        name="d",
        labels={0: "background", 1: "fg"},
        channel_names={0: "MRI"},
        cases=[Case("c0", (root / "c0.nii.gz",), root / "l0.nii.gz")],
        unlabeled=[Case("u0", (root / "u0.nii.gz",), None)],
    )
    Splits(labeled=["c0"], unlabeled=["u0"]).check_against(info)
    with pytest.raises(DataError, match=r"The splits: 1 case\(s\) of 'test' have no label .*: u0; move them"):
        Splits(labeled=["c0"], test=["u0"]).check_against(info)


def test_with_labeled_keeps_the_first_patients_whole(shared_data) -> None:
    acdc = Splits.load(shared_data / "ACDC" / "splits.json")
    three = acdc.with_labeled(3, group_by=r"patient\d+")
    assert three.labeled == acdc.labeled[:6]  # 3 patients x 2 frames, in the file's order
    assert set(three.unlabeled) == set(acdc.labeled[6:]) and three.val == acdc.val
    assert three.meta["labeled_groups"] == 3
    drawn = acdc.with_labeled(2, group_by=r"patient\d+", seed=1)
    assert len(drawn.labeled) == 4 and len({c[:10] for c in drawn.labeled}) == 2
    assert drawn.labeled == acdc.with_labeled(2, group_by=r"patient\d+", seed=1).labeled
    with pytest.raises(ConfigError, match="has 70 group"):
        acdc.with_labeled(71, group_by=r"patient\d+")
