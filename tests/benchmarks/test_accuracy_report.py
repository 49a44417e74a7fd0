"""benchmarks/accuracy.py --from-cells: the table and the label-efficiency figure rebuilt from measured cells."""

from __future__ import annotations

import json
from pathlib import Path


def test_rebuild_puts_the_all_labeled_cells_on_a_bound_line_not_in_a_column(
    tmp_path: Path, capsys, benchmark_script
) -> None:
    accuracy = benchmark_script("accuracy")
    cells = [
        {"row": "supervised", "n": 3, "seed": 0, "dice": 0.60, "hd95": 20.0, "seconds": 1},
        {"row": "supervised", "n": 3, "seed": 1, "dice": 0.70, "hd95": 10.0, "seconds": 1},
        {"row": "fixmatch-fp", "n": 3, "seed": 0, "dice": 0.75, "hd95": 9.0, "seconds": 1},
        {"row": "supervised", "n": 70, "seed": 0, "dice": 0.88, "hd95": 2.0, "seconds": 1},
        {"row": "fixmatch", "n": 3, "seed": 0, "skipped": True},
    ]
    jsonl = tmp_path / "cells.jsonl"
    jsonl.write_text("".join(json.dumps(c) + "\n" for c in cells))
    accuracy.rebuild([jsonl], None, None, tmp_path / "out", "acdc", bound=70)
    md = (tmp_path / "out" / "accuracy-acdc.md").read_text(encoding="utf-8")
    assert md.splitlines()[0] == "| method | N = 3 |"  # 70 is the bound, not a column
    assert "| supervised only | 0.650 ± 0.071 (15.00 ± 7.07 voxels) |" in md
    assert "| FixMatch + feature perturbation (UniMatch FP) | 0.750 (9.00 voxels) |" in md
    assert "Upper bound, supervised only with all 70 labeled: 0.880 (2.00 voxels)" in md
    assert "FixMatch (one network" not in md  # a skipped cell makes no row
    assert (tmp_path / "out" / "accuracy-acdc.png").stat().st_size > 10_000
    assert md.strip() in capsys.readouterr().out


def test_a_cell_measured_again_replaces_the_earlier_one(tmp_path: Path, benchmark_script) -> None:
    accuracy = benchmark_script("accuracy")
    old = tmp_path / "old.jsonl"
    new = tmp_path / "new.jsonl"
    old.write_text(
        json.dumps({"row": "actionpp", "n": 3, "seed": 0, "dice": 0.50, "seconds": 1}) + "\n"
        + json.dumps({"row": "actionpp", "n": 3, "seed": 1, "dice": 0.60, "seconds": 1}) + "\n"
    )  # fmt: skip
    new.write_text(json.dumps({"row": "actionpp", "n": 3, "seed": 0, "dice": 0.70, "seconds": 1}) + "\n")
    accuracy.rebuild([old, new], None, None, tmp_path / "out", "acdc")
    md = (tmp_path / "out" / "accuracy-acdc.md").read_text(encoding="utf-8")
    assert "| ACTION++ | 0.650 ± 0.071 |" in md  # seed 0 from the new file, seed 1 from the old one


def test_chaitanya_pretraining_steps_default_to_the_cpu_recipes_own(benchmark_script) -> None:
    accuracy = benchmark_script("accuracy")
    configs = Path(accuracy.REPO) / "configs" / "acdc"
    assert accuracy.pretraining_steps(configs / "cpu", "cpu", None, None) == (600, 200)  # the recipes' steps
    assert accuracy.pretraining_steps(configs / "cpu", "cpu", 50, None) == (50, 200)  # a flag wins
    assert accuracy.pretraining_steps(configs, "paper", None, None) == (300, 200)  # paper configs: 10000 each


def test_only_the_actionpp_pretrained_row_starts_from_a_pretraining_of_the_recipes_own_steps(
    benchmark_script,
) -> None:
    accuracy = benchmark_script("accuracy")
    from medcl.services.configs import load_config

    assert [name for name, row in accuracy.ROWS.items() if row.init == "actionpp"] == ["actionpp-pretrained"]
    for dataset in ("acdc", "hippocampus"):
        cpu = Path(accuracy.REPO) / "configs" / dataset / "cpu"
        own = load_config(cpu / "actionpp_pretrain.yaml", []).train.steps
        assert accuracy.recipe_steps(cpu, "cpu", "actionpp_pretrain.yaml", None, 300) == own
        assert accuracy.recipe_steps(cpu, "cpu", "actionpp_pretrain.yaml", 40, 300) == 40  # a flag wins
        assert accuracy.recipe_steps(cpu.parent, "paper", "actionpp_pretrain.yaml", None, 300) == 300
