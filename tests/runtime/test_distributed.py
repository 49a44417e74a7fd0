"""torchrun / DDP helpers: single-process answers without a process group, and a real 2-process gloo run."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from medcl.runtime import distributed as dist


def test_single_process_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not dist.is_distributed()
    assert (dist.rank(), dist.world_size(), dist.is_main()) == (0, 1, True)
    name = {"run": "supervised-20240101-120000"}
    assert dist.broadcast_object(name) is name
    loss = torch.tensor([1.5, 2.5])
    assert dist.all_reduce_mean(loss) is loss
    dist.barrier()
    dist.cleanup()
    # Not launched by torchrun (no WORLD_SIZE, or WORLD_SIZE=1): no process group is started.
    assert dist.init_from_env(torch.device("cpu")) is False
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert dist.init_from_env(torch.device("cpu")) is False
    assert not dist.is_distributed()


WORKER = """
    import json, os, sys
    import torch
    from medcl.runtime import distributed as dist

    on = dist.init_from_env(torch.device("cpu"))
    rank = dist.rank()
    name = dist.broadcast_object(f"run-of-rank-{rank}")
    mean = dist.all_reduce_mean(torch.tensor([float(rank)], requires_grad=True))
    dist.barrier()
    out = {"on": on, "rank": rank, "world": dist.world_size(), "main": dist.is_main(), "name": name,
           "mean": mean.item(), "grad": mean.requires_grad}
    dist.cleanup()
    out["after_cleanup"] = dist.is_distributed()
    with open(os.path.join(sys.argv[1], f"rank{rank}.json"), "w") as f:
        json.dump(out, f)
"""


@pytest.mark.slow
def test_two_gloo_processes_under_torchrun(tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(WORKER))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "0"]
    cmd += ["--rdzv_backend", "c10d", "--rdzv_endpoint", "localhost:0", str(script), str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for r, out in enumerate(ranks):
        assert (out["on"], out["rank"], out["world"], out["main"]) == (True, r, 2, r == 0)
        assert out["name"] == "run-of-rank-0"  # every rank gets rank 0's object
        assert out["mean"] == pytest.approx(0.5)  # (0 + 1) / 2
        assert out["grad"] is False  # a logged value, detached
        assert out["after_cleanup"] is False
