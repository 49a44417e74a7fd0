"""The state file of a workflow run, its lock, and the table printed at the end.

``<output>/workflows/<name>/state.json`` (format :data:`STATE_FORMAT`) holds the parent run id, run name,
experiment, store, status, the resolved workflow, per stage its status, attempts, child run id, outputs,
error and definition, and the registration. It is rewritten atomically after every change, so a run killed
at any moment leaves a state ``--resume`` can continue from. ``lock`` beside it holds the process id of the
run in progress: one process per workflow and output folder.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medcl.errors import MedclError
from medcl.runtime.files import write_text_atomic

if TYPE_CHECKING:
    from medcl.workflows.spec import Workflow

STATE_FORMAT = "medcl-workflow-state/1"
FINISHED, FAILED, KILLED, RUNNING, PENDING = "FINISHED", "FAILED", "KILLED", "RUNNING", "PENDING"


def now() -> str:
    """The local time as the state file writes it."""
    return time.strftime("%Y-%m-%dT%H:%M:%S")


def state_path(wf: Workflow) -> Path:
    """``<output>/workflows/<name>/state.json``."""
    return Path(wf.output) / "workflows" / wf.name / "state.json"


def read_state(path: Path) -> dict[str, Any]:
    """Load a state file, with a clear error when it is missing or not one."""
    if not path.is_file():
        raise MedclError(f"--resume: no workflow state at {path}; run the workflow without --resume first")
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise MedclError(
            f"workflow state {path} is not valid JSON ({err.msg}); start again without --resume"
        ) from None
    if state.get("format") != STATE_FORMAT:
        raise MedclError(f"{path} is not a medcl workflow state ({STATE_FORMAT})")
    return state


def write_state(path: Path, state: dict[str, Any]) -> None:
    """Write the state atomically (temporary file in the same folder, fsync, rename)."""
    state["updated"] = now()
    write_text_atomic(path, json.dumps(state, indent=1) + "\n")


def new_state(
    wf: Workflow, source: Path, *, parent: str, run_name: str, experiment_id: str, uri: str
) -> dict:
    """The state of a new parent run: every stage ``PENDING``, nothing registered."""
    return {
        "format": STATE_FORMAT,
        "name": wf.name,
        "workflow_file": str(source.resolve()),
        "parent_run_id": parent,
        "run_name": run_name,
        "experiment_id": experiment_id,
        "tracking_uri": uri,
        "status": RUNNING,
        "started": now(),
        "stages": {s.name: {"kind": s.kind, "status": PENDING, "attempts": 0} for s in wf.stages},
        "registered": None,
    }


def take_lock(state_file: Path, name: str) -> Path:
    """``<state dir>/lock`` holding this process id: one process per workflow and output folder.

    A lock left by a process that no longer exists is taken over.

    Raises:
        MedclError: Another live process holds the lock.
    """
    import psutil

    lock = state_file.with_name("lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                pid = int(lock.read_text().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid and pid != os.getpid() and psutil.pid_exists(pid):
                raise MedclError(
                    f"workflow {name} is already running in process {pid} (lock {lock}); "
                    "wait for it or stop it first"
                ) from None
            lock.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        return lock
    raise MedclError(f"cannot take the workflow lock {lock}")


def archive_previous_state(state_file: Path) -> None:
    """A new run of the same workflow keeps the previous state as ``history/<run name>.json``."""
    if not state_file.is_file():
        return
    old: dict[str, Any] = {}
    try:
        old = json.loads(state_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        pass
    name = old.get("run_name") or f"state-{int(time.time())}"
    target = state_file.parent / "history" / f"{name}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(state_file, target)
    if old.get("status") not in (FINISHED, None):
        print(
            f"note: the previous run of this workflow ({name}) was {old.get('status')}; its state is "
            f"kept in {target} (continue a run with --resume instead of starting a new one)"
        )


def finished_outputs(state: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The outputs of every finished stage, by stage name (what ``${stages.S.K}`` refers to)."""
    return {
        name: rec.get("outputs") or {}
        for name, rec in state["stages"].items()
        if rec.get("status") == FINISHED
    }


def short(value: Any) -> str:
    """A stage output as printed: floats with 4 decimals."""
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def format_state(wf: Workflow, state: dict[str, Any], state_file: Path) -> str:
    """A table of the stages: status, child run id and the main output."""
    lines = [f"workflow {wf.name}: {state['status']} (parent run {state['parent_run_id']})"]
    lines.append(f"{'stage':<18} {'kind':<9} {'status':<9} {'run id':<33} output")
    for stage in wf.stages:
        rec = state.get("stages", {}).get(stage.name, {})
        out = rec.get("outputs") or {}
        main = next((out[k] for k in ("dice", "masks", "splits", "checkpoint") if out.get(k) is not None), "")
        if isinstance(main, float):
            main = f"Dice {main:.4f}"
        lines.append(
            f"{stage.name:<18} {stage.kind:<9} {rec.get('status', PENDING):<9} {rec.get('run_id') or '':<33} "
            f"{main}"
        )
    if state.get("registered"):
        reg = state["registered"]
        lines.append(f"registered model: {reg['uri']} (version {reg['version']}, from {reg['from']})")
    lines.append(f"state: {state_file}")
    return "\n".join(lines)
