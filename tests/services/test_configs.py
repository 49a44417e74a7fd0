"""A run's config from a YAML file (``extends`` resolved) and overrides, validated once."""

from __future__ import annotations

from pathlib import Path

import pytest

from medcl.errors import ConfigError
from medcl.methods.mcsc import MCSCParams
from medcl.services.configs import build_config, load_config


def test_load_config_with_extends_a_set_string_and_a_typed_pair(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text("method: {name: mcsc}\ntrain: {steps: 100}\ndata: {batch_size: 4}\n")
    (tmp_path / "child.yaml").write_text("extends: base.yaml\ntrain: {seed: 3}\n")
    cfg = load_config(tmp_path / "child.yaml", ["train.steps=250", ("output", "2024"), "data.batch_size=6"])
    assert isinstance(cfg.method, MCSCParams)  # the method's own Params, with its defaults
    assert (cfg.train.steps, cfg.train.seed, cfg.data.batch_size) == (250, 3, 6)
    assert cfg.output == "2024"  # a typed pair is kept as given, never read as YAML
    with pytest.raises(ConfigError, match="config key 'output'"):
        load_config(tmp_path / "child.yaml", ["output=2024"])  # --set text is YAML: the number 2024


def test_errors_name_the_file_chain_or_the_source(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text("method: {name: supervised}\n")
    (tmp_path / "child.yaml").write_text("extends: base.yaml\n")
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "child.yaml", ["method.ce_wieght=1"])
    message = str(err.value)
    assert "unknown config key 'method.ce_wieght' (allowed for supervised:" in message
    assert f"({tmp_path / 'child.yaml'}, extending {tmp_path / 'base.yaml'})" in message
    with pytest.raises(ConfigError) as err:
        build_config({}, ["train.steps=0"], source="stage t of wf.yaml")
    assert str(err.value) == (
        "invalid configuration (stage t of wf.yaml):\n"
        "  config key 'train.steps': Input should be greater than or equal to 1 (got 0)"
    )


def test_build_config_leaves_the_raw_dict_alone() -> None:
    raw = {"method": {"name": "supervised"}, "train": {"steps": 5}}
    cfg = build_config(raw, ["train.steps=6"])
    assert cfg.train.steps == 6 and raw == {"method": {"name": "supervised"}, "train": {"steps": 5}}
    assert build_config({}).method_name == "supervised"  # the default method
