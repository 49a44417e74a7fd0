"""benchmarks/accuracy.py: a worker does not outlive a killed benchmark."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"

PARENT = """
import multiprocessing as mp
import sys
import time

sys.path.insert(0, {benchmarks!r})
import accuracy


def worker():
    accuracy.exit_with_parent()  # the pool's initializer
    print("ready", flush=True)
    time.sleep(120)  # a long training


if __name__ == "__main__":
    child = mp.get_context("fork").Process(target=worker)
    child.start()
    print(child.pid, flush=True)
    time.sleep(120)
"""


def _alive(pid: int) -> bool:
    """Running: neither gone nor a zombie left for init to reap (read from /proc where there is one)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text(encoding="utf-8")
    except FileNotFoundError:  # no /proc (macOS): the signal reached it
        return True


def test_a_worker_exits_when_the_benchmark_is_killed() -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT.format(benchmarks=str(BENCHMARKS))], stdout=subprocess.PIPE, text=True
    )
    lines = {parent.stdout.readline().strip(), parent.stdout.readline().strip()}  # the pid, and "ready"
    (child,) = (int(line) for line in lines if line != "ready")
    try:
        assert "ready" in lines  # the worker has run its initializer
        assert _alive(child)
        # SIGKILL: no finally, no pool shutdown; the worker learns of it only through its parent sentinel.
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        deadline = time.monotonic() + 10
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(child), "the worker outlived its killed parent"
    finally:
        parent.kill()
        if _alive(child):
            os.kill(child, signal.SIGKILL)
