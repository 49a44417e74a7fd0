"""Tests for medcl.data.dataset_json: label maps in both forms, channel names, file endings."""

from __future__ import annotations

from pathlib import Path

import pytest

from medcl.data.dataset_json import parse_channel_names, parse_file_ending, parse_labels
from medcl.errors import DataError


def test_label_maps_in_msd_and_nnunet_form():
    msd = {"0": "background", "1": "Anterior", "2": "Posterior"}
    assert parse_labels({"labels": msd}, Path("dataset.json")) == {
        0: "background",
        1: "Anterior",
        2: "Posterior",
    }
    nnunet = {"background": 0, "RV": 1}
    assert parse_labels({"labels": nnunet}, Path("dataset.json")) == {0: "background", 1: "RV"}


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ({"0": "background", "2": "Posterior"}, r"consecutive integers .* got \[0, 2\]"),
        ({"1": "Anterior", "2": "Posterior"}, r"consecutive integers .* got \[1, 2\]"),
        ({"background": 1, "a": 2}, r"consecutive integers .* got \[1, 2\]"),
        ({"background": 0, "a": 0}, r"gives the value 0 to both 'background' and 'a'"),
        ({"0": "background", "1": "x", "2": "x"}, r"gives the name 'x' to more than one value"),
        ({"background": 0, "whole": [1, 2]}, r"region lists"),
        ({"a": "b"}, r"must map values to names"),
        ([], r"must be a non-empty object"),
    ],
)
def test_bad_label_maps(labels, message):
    with pytest.raises(DataError, match=message):
        parse_labels({"labels": labels}, Path("dataset.json"))


def test_channel_names_and_file_ending():
    path = Path("dataset.json")
    assert parse_channel_names({"modality": {"0": "MRI"}}, path) == {0: "MRI"}
    assert parse_channel_names({"channel_names": {"0": "T1", "1": "T2"}, "modality": {"0": "x"}}, path) == {
        0: "T1",
        1: "T2",
    }
    assert parse_channel_names({}, path) is None
    with pytest.raises(
        DataError, match=r"Channel indices of 'modality' .* must be 0, 1, ..., n-1; got \[1\]"
    ):
        parse_channel_names({"modality": {"1": "MRI"}}, path)
    assert parse_file_ending({"file_ending": ".NII.GZ"}, path) == (".nii.gz",)
    assert ".nrrd" in parse_file_ending({}, path)
