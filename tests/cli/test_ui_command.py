"""`medcl ui` serves the same store the runs used, on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from medcl.commands.ui import ui_command
from medcl.tracking.mlflow_tracking import resolve_store


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ui_serves_the_runs_store_on_loopback(output_dir: Path) -> None:
    import mlflow

    uri, root = resolve_store(None, output_dir)
    client = mlflow.MlflowClient(tracking_uri=uri)
    client.create_experiment("seen-by-ui")
    cmd = ui_command(uri, root, "127.0.0.1", free_port())
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"
    port = int(cmd[cmd.index("--port") + 1])
    # Through the real CLI entry point, from another working directory: the store is found by --output.
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "medcl.cli", "ui", "--output", str(output_dir), "--port", str(port)],
        cwd="/",
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 90
        body = None
        while time.monotonic() < deadline and body is None:
            try:
                url = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=50"
                with urllib.request.urlopen(url, timeout=2) as response:
                    body = json.loads(response.read())
            except OSError:
                if proc.poll() is not None:
                    raise AssertionError(proc.stdout.read()) from None
                time.sleep(0.5)
        assert body is not None, "the UI did not answer within 90 s"
        assert "seen-by-ui" in {e["name"] for e in body["experiments"]}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
