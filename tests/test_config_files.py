"""Config files: one YAML file read with clear errors, ``extends: <config>`` chains (issue 14), ``--set``."""

from __future__ import annotations

from pathlib import Path

import pytest

from medcl.config_files import (
    apply_overrides,
    chain_source,
    merge_configs,
    parse_override,
    read_config_chain,
    read_mapping,
    read_yaml,
)
from medcl.errors import ConfigError
from medcl.services.configs import build_config, load_config
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


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("optim.lr=1.5e-3", ("optim.lr", 1.5e-3)),
        ("data.patch_size=[96, 96]", ("data.patch_size", [96, 96])),
        ("val.hd95=false", ("val.hd95", False)),
        ("init=null", ("init", None)),
        (" output = a=b ", ("output", "a=b")),  # split at the first '='; the key is stripped
        ("tracking.run_name=", ("tracking.run_name", "")),
        ("output=[unclosed", ("output", "[unclosed")),  # not YAML: kept as text
    ],
)
def test_parse_override_reads_the_value_as_yaml(text: str, expected: tuple) -> None:
    assert parse_override(text) == expected


@pytest.mark.parametrize("text", ["=1", "optim..lr=1", ".lr=1", "optim.=1"])
def test_an_empty_key_part_is_named(text: str) -> None:
    with pytest.raises(ConfigError, match=f"--set has an empty key in {text!r}"):
        parse_override(text)


def test_overrides_apply_in_order_to_a_copy_and_pairs_stay_as_given() -> None:
    raw = {"train": {"steps": 10}, "output": "runs"}
    out = apply_overrides(raw, ["train.steps=20", ("output", "2024"), "train.steps=30", ("data.path", "yes")])
    assert out == {"train": {"steps": 30}, "output": "2024", "data": {"path": "yes"}}
    assert raw == {"train": {"steps": 10}, "output": "runs"}  # the input is not changed
    assert apply_overrides(raw, ["output=2024"])["output"] == 2024  # --set text is YAML


def test_a_file_that_is_not_a_mapping_and_the_chain_in_messages(tmp_path: Path) -> None:
    (tmp_path / "list.yaml").write_text("- optim\n- lr\n")
    with pytest.raises(ConfigError) as err:
        read_mapping(tmp_path / "list.yaml")
    assert str(err.value) == f"config file {tmp_path / 'list.yaml'} must hold a mapping of sections, got list"
    (tmp_path / "empty.yaml").write_text("# nothing yet\n")
    assert read_mapping(tmp_path / "empty.yaml") == {}
    assert chain_source([Path("a.yaml")]) == "a.yaml"
    assert chain_source([Path("a.yaml"), Path("b.yaml"), Path("c.yaml")]) == (
        "a.yaml, extending b.yaml, extending c.yaml"
    )


def test_an_exponent_without_a_dot_is_a_number(tmp_path) -> None:
    """YAML 1.2 floats: PyYAML alone (YAML 1.1) reads 5e-2 as a string, which a StepCount refused."""
    assert parse_override("optim.lr=3e-4") == ("optim.lr", 3e-4)  # the example of the KEY=VALUE message
    assert build_config({}, ["optim.warmup_steps=5e-2"]).optim.warmup_steps == 0.05
    assert [parse_override(f"k={v}")[1] for v in ("1E+3", "-2.5e-1", "7", "1_000", ".5")] == [
        1000.0,
        -0.25,
        7,
        1000,
        0.5,
    ]
    assert [parse_override(f"k={v}")[1] for v in ("e5", "2024-01", "3e", "1.2.3")] == [
        "e5",
        "2024-01",
        "3e",
        "1.2.3",
    ]
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 3e-4\n  warmup_steps: 5e-2\n")
    cfg = load_config(path)
    assert (cfg.optim.lr, cfg.optim.warmup_steps) == (3e-4, 0.05)
