"""Fault injection: `medcl train` killed with SIGKILL at random points, resumed each time, ends where an
uninterrupted run ends (same weights), with its checkpoints intact after every kill."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from medcl.runtime.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow  # kills real training processes: `make test` runs it, `make test-fast` does not

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "hippocampus" / "supervised.yaml"
ARGS = [
    "--steps", "30", "--no-progress",
    "--set", "model.features=[8, 8, 16, 32, 64, 8]", "--set", "data.batch_size=4",
    "--set", "train.checkpoint_every=1", "--set", "val.every=1000", "--set", "val.hd95=false",
    "--set", "tracking.log_model=false", "--set", "train.threads=1", "--set", "train.precision=fp32",
]  # fmt: skip


def start(mini: Path, out: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "medcl.cli", "train", str(CONFIG), "--data", str(mini), "--runs", str(out)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([*cmd, *ARGS, *extra], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_sigkill_at_random_points_then_resume_gives_the_uninterrupted_weights(
    mini: Path, tmp_path: Path
) -> None:
    reference = start(mini, tmp_path / "ref", "--set", "tracking.run_name=ref")
    assert reference.wait(timeout=600) == 0, reference.stderr.read().decode()[-2000:]
    expected = load_checkpoint(tmp_path / "ref" / "runs" / "ref" / "checkpoints" / "last.pt")["model"]

    run_dir = tmp_path / "out" / "runs" / "victim"
    last = run_dir / "checkpoints" / "last.pt"
    rng = random.Random(0)
    proc = start(mini, tmp_path / "out", "--set", "tracking.run_name=victim")
    kills, seen = 0, 0
    while kills < 3:
        # Kill at a random moment once this process has written a checkpoint of its own (every step does).
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            if last.exists() and last.stat().st_mtime_ns > seen:
                break
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 0.5))
        if proc.poll() is not None:
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        kills += 1
        step = load_checkpoint(last)["step"]  # the checkpoint survived the kill and loads
        assert 1 <= step <= 30
        seen = last.stat().st_mtime_ns
        proc = start(mini, tmp_path / "out", "--resume", str(run_dir))
    assert proc.wait(timeout=600) == 0, proc.stderr.read().decode()[-2000:]
    assert kills >= 1
    state = load_checkpoint(last)
    assert state["step"] == 30
    for key, value in expected.items():
        assert torch.equal(state["model"][key], value), key
    assert not list(last.parent.glob(".*.tmp"))  # no temporary file of a killed write is left behind
