"""Configs that compose: ``extends: <config>`` (issue 14)."""

from __future__ import annotations

from pathlib import Path

import pytest

from medcl.config_files import merge_configs, read_config_chain, read_yaml
from medcl.errors import ConfigError
from medcl.services.configs import load_config
from medcl.shipped import shipped_dir, shipped_names

REPO = Path(__file__).resolve().parents[1]
BEFORE = Path(__file__).resolve().parent / "fixtures" / "configs_before_extends"


@pytest.mark.parametrize(
    ("shipped", "frozen"),
    [
        ("hippocampus/demo.yaml", "hippocampus_demo.yaml"),
        ("acdc/cpu/cross_teaching.yaml", "acdc_cpu_cross_teaching.yaml"),
        ("acdc/cpu/mean_teacher.yaml", "acdc_cpu_mean_teacher.yaml"),
    ],
)
def test_converted_configs_resolve_to_the_config_they_held_before(shipped: str, frozen: str) -> None:
    path = REPO / "configs" / shipped
    assert "extends" in path.read_text() and "extends" not in (BEFORE / frozen).read_text().split("\n", 2)[2]
    assert load_config(path).model_dump(mode="json") == load_config(BEFORE / frozen).model_dump(mode="json")


def test_every_shipped_config_resolves_and_validates() -> None:
    names = shipped_names("configs")
    assert len(names) >= 22
    for name in names:
        load_config(shipped_dir("configs") / f"{name}.yaml")


def test_child_keys_win_sections_merge_and_lists_are_replaced(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text(
        "method: {name: supervised, ce_weight: 0.5}\n"
        "data: {patch_size: [64, 64], batch_size: 8, augment: {flip: false, scale: 0.2}}\n"
        "train: {steps: 100}\n"
    )
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "child.yaml").write_text(
        "extends: ../base.yaml\ndata: {patch_size: [96, 96], augment: {flip: true}}\nval: {every: 7}\n"
    )
    raw, chain = read_config_chain(tmp_path / "sub" / "child.yaml")
    assert chain == [tmp_path / "sub" / "child.yaml", tmp_path / "sub" / "../base.yaml"]
    assert raw == {
        "method": {"name": "supervised", "ce_weight": 0.5},
        "data": {"patch_size": [96, 96], "batch_size": 8, "augment": {"flip": True, "scale": 0.2}},
        "train": {"steps": 100},
        "val": {"every": 7},
    }
    cfg = load_config(tmp_path / "sub" / "child.yaml")
    assert cfg.data.patch_size == [96, 96] and cfg.method.ce_weight == 0.5 and cfg.train.steps == 100


def test_a_chain_of_three_and_a_shipped_name(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("extends: hippocampus/supervised\ntrain: {steps: 10}\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\nval: {every: 5}\n")
    cfg = load_config(tmp_path / "b.yaml")
    shipped = load_config(REPO / "configs" / "hippocampus" / "supervised.yaml")
    assert (cfg.train.steps, cfg.val.every, cfg.tracking.experiment) == (10, 5, shipped.tracking.experiment)
    assert cfg.model == shipped.model
    _, chain = read_config_chain(tmp_path / "b.yaml")
    assert [p.name for p in chain] == ["b.yaml", "a.yaml", "supervised.yaml"]


def test_another_method_replaces_the_method_section() -> None:
    base = {"method": {"name": "mcsc", "cps_weight": 0.1}, "train": {"steps": 5}}
    assert merge_configs(base, {"method": {"name": "supervised"}}) == {
        "method": {"name": "supervised"},
        "train": {"steps": 5},
    }
    assert merge_configs(base, {"method": {"cps_weight": 0.2}})["method"] == {
        "name": "mcsc",
        "cps_weight": 0.2,
    }


def test_cycles_and_missing_parents_name_the_files(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError) as err:
        read_yaml(tmp_path / "a.yaml")
    assert str(err.value) == (
        f"config 'extends' forms a cycle: {tmp_path / 'a.yaml'} -> {tmp_path / 'b.yaml'} -> {tmp_path / 'a.yaml'}"
    )
    (tmp_path / "self.yaml").write_text("extends: ./self.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        read_yaml(tmp_path / "self.yaml")
    (tmp_path / "orphan.yaml").write_text("extends: nowhere.yaml\n")
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "orphan.yaml")
    message = str(err.value)
    assert f"config file {tmp_path / 'orphan.yaml'} extends 'nowhere.yaml'" in message
    assert str(tmp_path / "nowhere.yaml") in message and "medcl config list" in message
    (tmp_path / "list.yaml").write_text("extends: [a.yaml, b.yaml]\n")
    with pytest.raises(ConfigError, match="'extends' must name one config"):
        read_yaml(tmp_path / "list.yaml")


def test_a_bad_key_names_the_whole_chain(tmp_path: Path) -> None:
    (tmp_path / "child.yaml").write_text("extends: hippocampus/supervised\noptim: {lrr: 1}\n")
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "child.yaml")
    assert "unknown config key 'optim.lrr'" in str(err.value)
    assert f"({tmp_path / 'child.yaml'}, extending " in str(err.value) and "supervised.yaml)" in str(
        err.value
    )
