"""Config loading, overrides and validation errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from medcl.config import describe, flatten
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


def test_flatten_and_describe_cover_every_key() -> None:
    cfg = build_config({})
    flat = flatten(cfg.model_dump(mode="json"))
    assert flat["optim.lr"] == cfg.optim.lr and flat["data.augment.flip"] is True
    keys = {row[0] for row in describe()}
    assert {"optim.lr", "data.augment.rotate_deg", "tracking.experiment"} <= keys
    assert all(desc for key, _, desc in describe() if not key.startswith(("method", "output", "init")))


def test_the_schema_imports_no_method() -> None:
    """config.py is the schema only: importing it loads no method module (no import cycle)."""
    import subprocess
    import sys

    code = "import sys, medcl.config; print(any(m.startswith('medcl.methods') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
