"""`medcl ui` serves the same store the runs used, on 127.0.0.1, and stops its whole server when stopped."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from medcl.cli import main
from medcl.commands import ui
from medcl.commands.ui import ui_command
from medcl.tracking.mlflow_tracking import resolve_store


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow  # a real MLflow server started and killed: about 30 s each
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_ui_serves_the_runs_store_on_loopback_and_kill_stops_the_server_tree(
    output_dir: Path, stop: signal.Signals
) -> None:
    """``kill PID`` of ``medcl ui`` alone (not its group) must leave no uvicorn or job runner listening."""
    import mlflow

    uri, root = resolve_store(None, output_dir)
    client = mlflow.MlflowClient(tracking_uri=uri)
    client.create_experiment("seen-by-ui")
    cmd = ui_command(uri, root, "127.0.0.1", free_port())
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"
    port = int(cmd[cmd.index("--port") + 1])
    # Through the real CLI entry point, from another working directory: the store is found by --runs.
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "medcl.cli", "ui", "--runs", str(output_dir), "--port", str(port)],
        cwd="/",
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    seen: list[str] = []
    server_pgid = None
    try:
        deadline = time.monotonic() + 120
        base = f"http://127.0.0.1:{port}"
        while not any(line.startswith(f"MLflow UI for {uri} at {base} ") for line in seen):
            assert proc.poll() is None and time.monotonic() < deadline, "".join(seen)
            try:
                seen.append(lines.get(timeout=1))
            except queue.Empty:
                pass
        assert seen[0].startswith(f"starting the MLflow UI for {uri}"), seen  # a progress line first
        # The URL is printed once the server answers: no retry here.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        url = f"{base}/api/2.0/mlflow/experiments/search?max_results=50"
        try:
            with opener.open(url, timeout=10) as response:
                body = json.loads(response.read())
        except OSError as exc:
            raise AssertionError(f"{exc} after:\n{''.join(seen)}") from None
        assert "seen-by-ui" in {e["name"] for e in body["experiments"]}
        [server] = psutil.Process(proc.pid).children()
        server_pgid = os.getpgid(server.pid)
        assert server_pgid != os.getpgid(proc.pid)  # its own group, holding the whole tree
        time.sleep(2)  # let the job runner start its consumers, which used to survive
        tree = [server, *server.children(recursive=True)]
        assert len(tree) > 2 and all(os.getpgid(p.pid) == server_pgid for p in tree)

        os.kill(proc.pid, stop)  # this process only, as `kill PID` does
        assert proc.wait(timeout=60) == 0, "".join(seen)
        deadline = time.monotonic() + 10
        while _group_alive(server_pgid) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = [p.info for p in psutil.process_iter(["pid", "cmdline"]) if _pgid(p.pid) == server_pgid]
        assert not left, left
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0, "something still listens on the UI port"
    finally:  # after a failure, kill what this test started: medcl ui and the server group(s) under it
        groups = {server_pgid} if server_pgid else set()
        if proc.poll() is None:
            groups |= {_pgid(c.pid) for c in psutil.Process(proc.pid).children()} - {None}
            proc.kill()
            proc.wait(timeout=30)
        for group in groups:
            if _group_alive(group):
                os.killpg(group, signal.SIGKILL)


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def test_bad_port_host_or_store_fail_in_one_line(output_dir: Path, tmp_path: Path, capsys) -> None:
    base = ["ui", "--runs", str(output_dir)]
    cases = [
        (["--port", "70000"], "--port 70000 is out of range"),
        (["--port", "0"], "--port 0 is out of range"),
        (["--host", "no-such-host.invalid"], "is not an address or a known host name"),
        (["--host", "203.0.113.7"], "--host 203.0.113.7 is not an address of this machine"),
    ]
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cases.append((["--port", str(port)], f"port {port} on 127.0.0.1 is already in use"))
        for extra, expected in cases:
            assert main([*base, *extra]) == 1, extra
            captured = capsys.readouterr()
            assert expected in captured.err and captured.err.count("\n") == 1, captured.err
            assert "Traceback" not in captured.err and captured.out == ""
    missing = tmp_path / "typo"
    assert main(["ui", "--runs", str(missing)]) == 1
    err = capsys.readouterr().err
    assert f"no MLflow store at {missing / 'mlflow.db'}" in err and err.count("\n") == 1
    assert not missing.exists()


def test_non_loopback_host_warns_and_passes_allowed_hosts(
    output_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """The warning comes before the server starts; a stand-in server that exits at once is reported in one
    line (and its process group is stopped like the real one)."""
    commands: list[list[str]] = []
    popen = subprocess.Popen

    def stand_in(cmd: list[str], **kwargs) -> subprocess.Popen:
        commands.append(cmd)
        return popen([sys.executable, "-c", "raise SystemExit(3)"], **kwargs)

    monkeypatch.setattr(ui.subprocess, "Popen", stand_in)
    port = str(free_port())
    assert main(["ui", "--runs", str(output_dir), "--host", "0.0.0.0", "--port", port]) == 1
    err = capsys.readouterr().err
    assert "warning: --host 0.0.0.0 makes the MLflow store" in err and "reachable from the network" in err
    assert "--allowed-hosts" in err and "exited with status 3 before answering" in err
    assert "--allowed-hosts" not in commands[-1]  # MLflow's default: localhost and private addresses
    args = ["ui", "--runs", str(output_dir), "--host", "0.0.0.0", "--port", port]
    assert main([*args, "--allowed-hosts", "lab.example.org"]) == 1
    assert commands[-1][commands[-1].index("--allowed-hosts") + 1] == "lab.example.org"
    assert "warning" in capsys.readouterr().err
    assert main(["ui", "--runs", str(output_dir), "--port", port]) == 1
    assert "--allowed-hosts" not in commands[-1] and "warning" not in capsys.readouterr().err
