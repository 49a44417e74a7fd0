"""benchmarks/bench_suggest.py --smoke: simulated annotation end to end on real ACDC files (tiny model)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

# Five tiny trainings and three rankings (entropy, two random draws) of a pool of real volumes: `make test` runs it, `make test-fast` not.
pytestmark = pytest.mark.slow


def test_smoke_picks_new_patients_and_retrains_on_them(
    benchmark_script, shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bench = benchmark_script("bench_suggest")
    root = tmp_path / "data"  # --data-root: a folder of its own, not the default ../shared/data
    root.mkdir()
    (root / "ACDC").symlink_to(shared_data / "ACDC", target_is_directory=True)
    configs = []

    def train(cfg, **kwargs):
        configs.append(cfg)
        return real_train(cfg, **kwargs)

    real_train = bench.train
    monkeypatch.setattr(bench, "train", train)
    argv = ["bench_suggest.py", "--dataset", "acdc", "--smoke", "--data-root", str(root)]
    monkeypatch.setattr(sys, "argv", [*argv, "--output", str(tmp_path / "out")])
    bench.main()
    # start, entropy, two random draws, the first 3: each on the given root, validated every tenth of --steps.
    assert len(configs) == 5
    assert {Path(c.data.path) for c in configs} == {root / "ACDC"}
    assert {(c.train.steps, c.val.every) for c in configs} == {(3, 1)}
    out = tmp_path / "out" / "acdc"
    (report_file,) = out.glob("report-*.json")
    report = json.loads(report_file.read_text(encoding="utf-8"))
    start = bench.pool_splits("acdc", root / "ACDC", smoke=True).with_labeled(1, group_by=r"patient\d+")
    start_patients = {case.split("_")[0] for case in start.labeled}
    assert report["picks"].keys() == {"entropy", "random-0", "random-1"}
    for strategy, picks in report["picks"].items():
        # Whole patients (both frames go together), two of them, never one already labeled.
        assert len(picks) == 2 and len(set(picks)) == 2, (strategy, picks)
        assert not set(picks) & start_patients, (strategy, picks)
        (splits_file,) = out.glob(f"splits-{strategy}-3-*.json")
        labeled = json.loads(splits_file.read_text(encoding="utf-8"))["labeled"]
        assert {case.split("_")[0] for case in labeled} == start_patients | set(picks)
        assert len(labeled) == 6  # three patients, two frames each
    assert set(report["dice"]) == {"entropy", "random-0", "random-1", "first"}
    assert all(0 <= dice <= 1 for dice in report["dice"].values())
    assert report["random"]["draws"] == [report["dice"]["random-0"], report["dice"]["random-1"]]
