"""Config loading, overrides and validation errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from medcl.config import describe, flatten
from medcl.config_files import parse_override
from medcl.errors import ConfigError
from medcl.methods import METHODS
from medcl.methods.supervised import SupervisedParams
from medcl.services.configs import build_config, load_config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*/*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_shipped_config_validates(path: Path) -> None:
    cfg = load_config(path)
    assert len(cfg.data.patch_size) == cfg.data.spatial_dims
    assert cfg.method_name in METHODS


def test_overrides_reach_nested_keys_and_are_typed() -> None:
    cfg = build_config({}, ["optim.lr=3e-4", "data.patch_size=[96, 96]", "train.steps=7", "val.hd95=false"])
    assert cfg.optim.lr == pytest.approx(3e-4)
    assert cfg.data.patch_size == [96, 96]
    assert cfg.train.steps == 7 and cfg.val.hd95 is False


def test_method_section_gets_defaults_from_the_method() -> None:
    cfg = build_config({"method": {"name": "supervised", "ce_weight": 0.5}})
    assert isinstance(cfg.method, SupervisedParams)
    assert cfg.method.model_dump() == {
        "name": "supervised",
        "dice_weight": 1.0,
        "ce_weight": 0.5,
        "include_background": False,
    }


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["optim.lrr=1"], "unknown config key 'optim.lrr' (allowed in 'optim': grad_clip, lr,"),
        (["trian.steps=1"], "unknown config key 'trian'"),
        (["optim.lr=abc"], "config key 'optim.lr'"),
        (["optim.name=rmsprop"], "'adamw', 'adam' or 'sgd'"),
        (["data.patch_size=[64, 64, 64]"], "data.patch_size has 3 values but data.spatial_dims is 2"),
        (["method.name=nope"], "unknown method.name 'nope'"),
        (["method.dice_wieght=1"], "unknown config key 'method.dice_wieght' (allowed for supervised:"),
        (["train.steps=0"], "config key 'train.steps'"),
    ],
)
def test_bad_keys_fail_with_the_key_name(overrides: list[str], expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        build_config({}, overrides, source="x.yaml")
    assert expected in str(err.value)
    assert "x.yaml" in str(err.value)


@pytest.mark.parametrize("name", ["../../x", "/tmp/x", "a/b", "..", "", "-x", "run.1", "x y"])
def test_run_name_cannot_leave_the_output_folder(name: str) -> None:
    with pytest.raises(ConfigError) as err:
        build_config({}, [f"tracking.run_name={name!r}"], source="x.yaml")
    assert "config key 'tracking.run_name': must start with a letter" in str(err.value)
    assert f"(got {name!r})" in str(err.value)


@pytest.mark.parametrize("name", ["golden", "golden-2_b", "A1", "1abc", "a.b", "../x", "/x"])
def test_run_names_follow_the_workflow_name_rule(name: str) -> None:
    from pydantic import ValidationError

    from medcl.workflows.spec import Workflow

    workflow_ok = True
    try:
        Workflow.model_validate({"name": name, "stages": []})  # other keys may fail: only 'name' counts
    except ValidationError as err:
        workflow_ok = all(e["loc"] != ("name",) for e in err.errors())
    try:
        run_ok = build_config({}, [f"tracking.run_name={name}"]).tracking.run_name == name
    except ConfigError:
        run_ok = False
    valid = name in ("golden", "golden-2_b", "A1")
    assert (run_ok, workflow_ok) == (valid, valid)


def test_bad_override_syntax_and_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_override("optim.lr")
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="is a value, not a section"):
        build_config({"output": "runs"}, ["output.x=1"])


def test_flatten_and_describe_cover_every_key() -> None:
    cfg = build_config({})
    flat = flatten(cfg.model_dump(mode="json"))
    assert flat["optim.lr"] == cfg.optim.lr and flat["data.augment.flip"] is True
    keys = {row[0] for row in describe()}
    assert {"optim.lr", "data.augment.rotate_deg", "tracking.experiment"} <= keys
    assert all(desc for key, _, desc in describe() if not key.startswith(("method", "output", "init")))


def test_flag_values_are_typed_not_reread_as_yaml(tmp_path) -> None:
    """A flag's value reaches the config as given: a numeric folder name, 'yes' and 'a: b' stay strings."""
    import argparse

    from medcl.commands.common import add_training_flags, config_from_args

    parser = argparse.ArgumentParser()
    add_training_flags(parser)
    for folder in ("2024", "yes", str(tmp_path / "a: b")):
        args = parser.parse_args(
            ["hippocampus/supervised", "--runs", folder, "--data", folder, "--steps", "7"]
        )
        cfg = config_from_args(args)
        assert (cfg.output, cfg.data.path, cfg.train.steps) == (folder, folder, 7)
    # --set still reads YAML, and the typed flags win over it
    args = parser.parse_args(["hippocampus/supervised", "--set", "train.steps=9", "--set", "optim.lr=1e-3"])
    assert (config_from_args(args).train.steps, config_from_args(args).optim.lr) == (9, 1e-3)
    args = parser.parse_args(["hippocampus/supervised", "--set", "train.steps=9", "--steps", "5"])
    assert config_from_args(args).train.steps == 5


def test_the_schema_imports_no_method() -> None:
    """config.py is the schema only: importing it loads no method module (no import cycle)."""
    import subprocess
    import sys

    code = "import sys, medcl.config; print(any(m.startswith('medcl.methods') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
