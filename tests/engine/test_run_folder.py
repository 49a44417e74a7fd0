"""engine/run_folder.py: run folders are claimed atomically, one folder per run."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import pytest

from medcl.engine.run_folder import claim_run_dir
from medcl.errors import MedclError


def _claim(runs: str, name: str, explicit: bool, barrier, results) -> None:
    barrier.wait()  # every process reaches the mkdir together
    try:
        results.put(claim_run_dir(Path(runs), name, explicit=explicit).name)
    except MedclError as exc:
        results.put(f"error: {exc}")


def claim_at_once(runs: Path, name: str, explicit: bool, n: int = 4) -> list[str]:
    """``n`` processes (forked: the test module need not be importable) claim the same name at once."""
    ctx = mp.get_context("fork")
    barrier, results = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_claim, args=(str(runs), name, explicit, barrier, results)) for _ in range(n)]
    for p in procs:
        p.start()
    out = [results.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    return out


def test_an_explicit_name_is_claimed_by_exactly_one_of_concurrent_runs(tmp_path: Path) -> None:
    results = claim_at_once(tmp_path / "runs", "same", explicit=True)
    assert results.count("same") == 1
    errors = [r for r in results if r != "same"]
    assert len(errors) == 3 and all("already has checkpoints" in e and "--resume" in e for e in errors)


def test_colliding_default_names_get_a_suffix(tmp_path: Path) -> None:
    results = claim_at_once(tmp_path / "runs", "supervised-x-20260101-000000", explicit=False)
    assert sorted(results) == sorted(f"supervised-x-20260101-000000{s}" for s in ("", "-2", "-3", "-4"))
    assert all((tmp_path / "runs" / r / "checkpoints").is_dir() for r in results)


def test_a_taken_explicit_name_is_refused(tmp_path: Path) -> None:
    claim_run_dir(tmp_path, "a", explicit=True)
    with pytest.raises(MedclError, match="already has checkpoints"):
        claim_run_dir(tmp_path, "a", explicit=True)
