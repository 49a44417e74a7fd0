"""Shared fixtures of the workflow tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def raw_workflow() -> dict:
    """A fresh raw workflow mapping: split, train, evaluate and infer stages with references between them."""
    raw = {
        "name": "wf",
        "data": "some/data",
        "vars": {"steps": 7},
        "stages": [
            {"name": "split", "kind": "split", "labeled": 2, "val": 1},
            {
                "name": "train",
                "kind": "train",
                "config": "configs/hippocampus/demo.yaml",
                "splits": "${stages.split.splits}",
                "steps": "${vars.steps}",
            },
            {
                "name": "evaluate",
                "kind": "evaluate",
                "model": "${stages.train.model}",
                "splits": "${stages.split.splits}",
                "subset": "val",
            },
            {
                "name": "infer",
                "kind": "infer",
                "model": "${stages.train.checkpoint}",
                "input": "${data}/imagesTr/case.nii.gz",
            },
        ],
        "register": {"name": "m", "from": "train"},
    }
    return raw
