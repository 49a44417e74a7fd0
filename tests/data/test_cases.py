"""Tests for medcl.data.cases: the DatasetInfo properties and looking a case up by id."""

from __future__ import annotations

from pathlib import Path

import pytest

from medcl.data.cases import Case, DatasetInfo
from medcl.data.dataset import load_dataset
from medcl.errors import DataError


def test_case_lookup_and_unknown_id_suggests_close_ids(shared_data: Path):
    info = load_dataset(shared_data / "ACDC")
    assert info.case("patient003_frame02").label.name == "patient003_frame02.nii.gz"
    assert info.all_ids == [c.id for c in info.cases]
    with pytest.raises(DataError, match=r"no case 'patient003_frame03'.*did you mean patient003_frame0"):
        info.case("patient003_frame03")
    with pytest.raises(DataError, match=r"160 cases in total"):
        info.case("nope")


def test_modality_ct_and_properties():
    info = DatasetInfo(
        root=Path("/d"),
        name="d",
        labels={0: "background", 1: "liver"},
        channel_names={0: "CT"},
        cases=[Case("a", (Path("/d/a.nii.gz"),), Path("/d/la.nii.gz"))],
        unlabeled=[Case("b", (Path("/d/b.nii.gz"),), None)],
    )
    assert info.modality == "ct"
    assert info.num_channels == 1
    assert info.all_ids == ["a", "b"]
    assert info.case("b").label is None
