"""benchmarks/device_check.py runs every method end to end on CPU with tiny settings (the GPU script's code)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

# The device check on CPU settings: `make test` runs it, `make test-fast` does not.
pytestmark = pytest.mark.slow


def test_every_job_trains_validates_and_reports(shared_data: Path, tmp_path: Path, benchmark_script) -> None:
    check = benchmark_script("device_check")
    data = tmp_path / "data"
    check.prepare(shared_data, data, acdc_patients=3, la_volumes=3)
    assert len(json.loads((data / "ACDC" / "dataset.json").read_text())["training"]) == 6  # 2 frames each
    out = tmp_path / "report.json"
    code = check.main(["--tiny", "--device", "cpu", "--data-root", str(data), "--json", str(out)])
    report = json.loads(out.read_text())
    errors = [row for row in report["jobs"] if "error" in row]
    assert code == 0 and not errors, errors
    assert [row["job"] for row in report["jobs"]] == list(check.JOBS)
    for row in report["jobs"]:
        assert row["steps"] == 2 and row["steps_per_s"] > 0 and 0 <= row["loader_wait"] < 1
        segments = not row["job"].startswith("pretrain_")
        assert (row["val_dice"] is not None) == segments, row
