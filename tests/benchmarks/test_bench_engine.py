"""benchmarks/bench_engine.py --parts configs: configs timed side by side, steps sized to the first's budget."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch


def test_configs_part_sizes_each_config_to_the_first_configs_training_time(
    tmp_path: Path, benchmark_script
) -> None:
    bench = benchmark_script("bench_engine")
    supervised = bench.REPO / "configs/hippocampus/supervised.yaml"
    args = argparse.Namespace(
        configs=[str(supervised), str(supervised)],
        data=None,  # configs/hippocampus/ names Task04_Hippocampus
        set=["data.batch_size=2", "train.steps=40"],
        steps=2,
        rounds=1,
        cases=4,
    )
    report = bench.configs_part(args, torch.device("cpu"), tmp_path)
    first, second = "0:supervised.yaml", "1:supervised.yaml"
    times = report["s_per_step"]
    assert list(times) == [first, second] and all(t > 0 for t in times.values())
    assert report["configured_steps"] == {first: 40, second: 40}  # --set reaches every config
    assert report["vs_first"][first] == 1.0
    assert report["vs_first"][second] == pytest.approx(times[second] / times[first], abs=0.002)
    # the steps the second config fits in the first's 40 steps of training time
    assert report["steps_in_first_budget"][first] == 40
    assert report["steps_in_first_budget"][second] == pytest.approx(40 * times[first] / times[second], abs=1)


def test_a_shipped_config_names_its_dataset_and_any_other_path_is_refused(
    tmp_path: Path, benchmark_script
) -> None:
    bench = benchmark_script("bench_engine")
    assert bench.dataset_of(bench.REPO / "configs/acdc/cpu/mcsc.yaml") == bench.DATA / "ACDC"
    assert bench.dataset_of(bench.REPO / "configs/la2018/supervised.yaml") == bench.DATA / "LA2018"
    with pytest.raises(SystemExit, match="pass --data"):
        bench.dataset_of(tmp_path / "my_config.yaml")
