"""Run a workflow: one MLflow parent run, one nested child run per stage, and a resumable state file.

The parent run (experiment ``workflow.experiment``, default ``workflow-<name>``) carries the resolved workflow
(``workflow/resolved.yaml``), the state (``workflow/state.json``), each finished stage's outputs as params
(``<stage>.run_id``, ``<stage>.checkpoint``, ``<stage>.model``, ...) and its Dice as the metric
``<stage>/dice``. Each stage runs as a child run tagged ``mlflow.parentRunId`` (how the MLflow UI nests runs)
plus ``medcl.workflow``, ``medcl.workflow.stage`` and ``medcl.workflow.attempt``.

Progress is kept in ``<output>/workflows/<name>/state.json`` (:mod:`medcl.workflows.state`). A stage that
fails marks its child run and the parent ``FAILED``, the state records the error, and
``medcl run <file> --resume`` reopens the same parent run and starts again at the first unfinished stage:
finished stages keep their child runs and outputs. A training stage stopped by Ctrl-C (``KILLED``) or whose
process died (still ``RUNNING`` in the state) continues from its ``last.pt`` in the same child run; a
``FAILED`` stage runs again from the start in a new child run (attempt 2, ...). A lock file beside the state
(``lock``, the process id) keeps two processes from running the same workflow into the same output folder.
Stage files (splits, summaries, masks) go to ``<output>/workflows/<name>/<parent run name>/<stage>/``.

The runner keeps the state, the lock and the order of things; what a stage does is in
:mod:`medcl.workflows.stages` (which calls :mod:`medcl.services`), and MLflow is reached through
:mod:`medcl.tracking.client_runs`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from medcl.config import Config
from medcl.config_files import Override
from medcl.errors import MedclError, one_line
from medcl.tracking.client_runs import ClientRun, ClientStore, end_active_run, tracking_uri_set
from medcl.tracking.mlflow_tracking import resolve_store
from medcl.workflows import stages
from medcl.workflows.spec import EvaluateStage, SplitStage, TrainStage, Workflow, resolve_stage
from medcl.workflows.state import (
    FAILED,
    FINISHED,
    KILLED,
    PENDING,
    RUNNING,
    STATE_FORMAT,
    archive_previous_state,
    finished_outputs,
    format_state,
    new_state,
    now,
    read_state,
    short,
    state_path,
    take_lock,
    write_state,
)

__all__ = ["STATE_FORMAT", "WorkflowError", "WorkflowRunner", "read_state", "run_workflow", "state_path"]

log = logging.getLogger(__name__)


class WorkflowError(MedclError):
    """A workflow stage (or the registration) failed; the message says which and how to resume."""


class WorkflowRunner:
    """Runs (or resumes) one workflow.

    Args:
        wf: The validated workflow (:func:`medcl.workflows.spec.load_workflow`).
        source: The workflow file, named in messages and tags.
        resume: Continue the run recorded in the state file instead of starting a new parent run.
        progress: tqdm progress bars in the stages.
    """

    def __init__(
        self, wf: Workflow, source: str | Path, *, resume: bool = False, progress: bool = True
    ) -> None:
        self.wf = wf
        self.source = Path(source)
        self.where = f"workflow {self.source}"
        self.resume = resume
        self.progress = progress
        self.uri, self.artifact_root = resolve_store(wf.tracking_uri, wf.output)
        self.state_file = state_path(wf)
        self.state: dict[str, Any] = {}
        self.store: ClientStore | None = None
        self.ctx = stages.StageContext(wf, self.uri, self.where, progress)

    # ------------------------------------------------------------------------------------------ driver

    def run(self) -> dict[str, Any]:
        """Run every unfinished stage, then the registration; return the final state.

        Raises:
            WorkflowError: A stage or the registration failed (parent run and state marked ``FAILED``).
            MedclError: Nothing to resume, or a training config of a pending stage is invalid.
        """
        print(f"MLflow tracking store: {self.uri}")
        if self.resume:
            self.state = read_state(self.state_file)
            if self.state.get("tracking_uri") != self.uri:
                raise MedclError(
                    f"--resume: {self.state_file} was run with the store {self.state.get('tracking_uri')}; "
                    "pass the same --tracking-uri/--output"
                )
            if self.state["status"] == FINISHED:
                print(f"workflow {self.wf.name} already finished (parent run {self.state['parent_run_id']})")
                return self.state
            self._note_changed_stages()
        pending = [s for s in self.wf.stages if self._record(s.name).get("status") != FINISHED]
        stages.preflight(self.ctx, pending)

        with tracking_uri_set(self.uri):
            lock = self._lock()
            try:
                self.store = ClientStore(self.uri, self.artifact_root)
                self._open_parent()
                for index, stage in enumerate(self.wf.stages, start=1):
                    self._run_stage(index, stage)
                if self.wf.register_ is not None and not self.state.get("registered"):
                    self._register()
                self._finish(FINISHED)
            finally:
                lock.unlink(missing_ok=True)
        print(self.format_summary())
        return self.state

    def _lock(self) -> Path:
        """Take the workflow's lock (:func:`medcl.workflows.state.take_lock`)."""
        return take_lock(self.state_file, self.wf.name)

    def _record(self, name: str) -> dict[str, Any]:
        return self.state.get("stages", {}).get(name, {})

    @property
    def _parent(self) -> ClientRun:
        assert self.store is not None
        return self.store.run(self.state["parent_run_id"])

    def _open_parent(self) -> None:
        """Create the parent run (or reopen it when resuming) and write the state."""
        assert self.store is not None
        tags = {"medcl.workflow": self.wf.name, "medcl.workflow.file": str(self.source.resolve())}
        if self.resume:
            parent = self._parent
            parent.reopen()
            parent.set_tag("medcl.workflow.resumed", str(int(self.state.get("resumed", 0)) + 1))
            self.state["resumed"] = int(self.state.get("resumed", 0)) + 1
            print(f"resuming workflow {self.wf.name}: parent run {parent.run_id} ({self.state['run_name']})")
        else:
            archive_previous_state(self.state_file)
            experiment_id = self.store.experiment(self.wf.experiment_name)
            run_name = f"{self.wf.name}-{time.strftime('%Y%m%d-%H%M%S')}"
            parent = self.store.create_run(experiment_id, run_name, tags)
            parent.log_param("workflow.name", self.wf.name)
            parent.log_param("workflow.file", str(self.source.resolve()))
            parent.log_param("workflow.stages", ",".join(s.name for s in self.wf.stages))
            self.state = new_state(
                self.wf,
                self.source,
                parent=parent.run_id,
                run_name=run_name,
                experiment_id=experiment_id,
                uri=self.uri,
            )
            print(
                f"workflow {self.wf.name}: parent run {parent.run_id} ({run_name}) in experiment "
                f"{self.wf.experiment_name!r}"
            )
        for stage in self.wf.stages:  # stages added to the file since the failed run
            self.state["stages"].setdefault(
                stage.name, {"kind": stage.kind, "status": PENDING, "attempts": 0}
            )
        self.state["status"] = RUNNING
        self.state["workflow"] = self.wf.to_dict()
        write_state(self.state_file, self.state)
        parent.log_text(yaml.safe_dump(self.wf.to_dict(), sort_keys=False), "workflow/resolved.yaml")

    def _note_changed_stages(self) -> None:
        for stage in self.wf.stages:
            rec = self._record(stage.name)
            if rec.get("status") == FINISHED and rec.get("definition") != stage.model_dump(mode="json"):
                print(f"note: stage {stage.name!r} changed since it finished; its earlier result is kept")

    def _finish(self, status: str) -> None:
        self.state["status"] = status
        self.state["ended"] = now()
        write_state(self.state_file, self.state)
        parent = self._parent
        try:
            parent.log_text(json.dumps(self.state, indent=1), "workflow/state.json")
        finally:
            parent.end(status)

    # ------------------------------------------------------------------------------------------- stages

    def _run_stage(self, index: int, stage: Any) -> None:
        rec = self.state["stages"][stage.name]
        n = len(self.wf.stages)
        if rec.get("status") == FINISHED:
            print(f"[{index}/{n}] {stage.name} ({stage.kind}): finished earlier, run {rec.get('run_id')}")
            return
        # KILLED: Ctrl-C/SIGTERM; RUNNING: the process died without a word (SIGKILL, power loss).
        interrupted = rec.get("status") in (KILLED, RUNNING)
        continue_killed = bool(
            interrupted
            and isinstance(stage, TrainStage)
            and rec.get("run_dir")
            and (Path(rec["run_dir"]) / "checkpoints" / "last.pt").is_file()
        )
        if interrupted and not continue_killed:
            self._close_stale_child(stage.name, rec)
        if not continue_killed:
            rec["attempts"] = int(rec.get("attempts", 0)) + 1
            suffix = "" if rec["attempts"] == 1 else f"-try{rec['attempts']}"
            rec["run_name"] = f"{self.state['run_name']}-{stage.name}{suffix}"
            rec["run_id"] = None
        rec.update(status=RUNNING, error=None, started=now(), definition=stage.model_dump(mode="json"))
        write_state(self.state_file, self.state)
        print(
            f"[{index}/{n}] {stage.name} ({stage.kind})"
            + (" continuing from last.pt" if continue_killed else "")
        )
        tags = {
            "mlflow.parentRunId": self.state["parent_run_id"],
            "medcl.workflow": self.wf.name,
            "medcl.workflow.stage": stage.name,
            "medcl.workflow.attempt": str(rec["attempts"]),
            "medcl.stage": stage.kind,
        }
        start = time.perf_counter()
        try:
            resolved = resolve_stage(stage, finished_outputs(self.state), self.where)
            if isinstance(resolved, TrainStage):
                outputs = self._train(resolved, rec, tags, continue_killed)
            elif isinstance(resolved, SplitStage):
                outputs = self._client_stage(resolved, rec, tags, stages.split_stage)
            elif isinstance(resolved, EvaluateStage):
                outputs = self._client_stage(resolved, rec, tags, stages.evaluate_stage)
            else:
                outputs = self._client_stage(resolved, rec, tags, stages.infer_stage)
        except KeyboardInterrupt:
            self._stage_failed(stage, rec, tags, KILLED, "interrupted")
            raise
        except Exception as exc:
            message = one_line(exc if isinstance(exc, MedclError) else f"{type(exc).__name__}: {exc}")
            log.debug("stage %s failed", stage.name, exc_info=True)
            self._stage_failed(stage, rec, tags, FAILED, message)
            raise WorkflowError(
                f"workflow {self.wf.name}: stage {stage.name!r} ({stage.kind}) failed: {message}. "
                f"Fix it, then continue with: medcl run {self.source} --resume"
            ) from exc
        seconds = time.perf_counter() - start
        rec.update(status=FINISHED, outputs=outputs, run_id=outputs.get("run_id"), ended=now())
        write_state(self.state_file, self.state)
        self._log_outputs(stage.name, outputs, seconds)
        shown = {k: v for k, v in outputs.items() if k in ("dice", "model", "checkpoint", "splits", "masks")}
        print(
            f"    {stage.name} finished in {seconds:.0f} s: run {outputs.get('run_id')} "
            + " ".join(f"{k}={short(v)}" for k, v in shown.items())
        )

    def _close_stale_child(self, stage: str, rec: dict[str, Any]) -> None:
        """Mark the child run of an interrupted attempt ``KILLED`` if it was left ``RUNNING``."""
        assert self.store is not None
        run_id = rec.get("run_id") or self._find_child(stage, int(rec.get("attempts", 0)))
        if run_id and self.store.run(run_id).status == RUNNING:
            self.store.run(run_id).end(KILLED)

    def _stage_dir(self, stage: Any) -> Path:
        return Path(self.wf.output) / "workflows" / self.wf.name / self.state["run_name"] / stage.name

    def _stage_failed(
        self, stage: Any, rec: dict[str, Any], tags: dict[str, str], status: str, msg: str
    ) -> None:
        """Child run, stage record and parent run marked ``status``; a child run is made if none exists."""
        assert self.store is not None
        end_active_run(status)  # a training run that failed outside its own try/finally
        run_id = rec.get("run_id") or self._find_child(stage.name, rec["attempts"])
        try:
            if run_id is None:  # failed before any run was created (bad config, missing data)
                run_id = self.store.create_run(self.state["experiment_id"], rec.get("run_name"), tags).run_id
            child = self.store.run(run_id)
            child.set_tag("medcl.error", msg[:5000])
            if child.status in (RUNNING, "SCHEDULED") or status == FAILED:
                child.end(status)
        finally:
            rec.update(status=status, error=msg, run_id=run_id, ended=now())
            parent = self._parent
            parent.set_tag("medcl.workflow.failed_stage", stage.name)
            parent.set_tag("medcl.error", f"{stage.name}: {msg}"[:5000])
            self._finish(status)

    def _find_child(self, stage: str, attempt: int) -> str | None:
        assert self.store is not None
        run = self.store.find_run(
            self.state["experiment_id"],
            {
                "mlflow.parentRunId": self.state["parent_run_id"],
                "medcl.workflow.stage": stage,
                "medcl.workflow.attempt": str(attempt),
            },
        )
        return run.run_id if run else None

    def _log_outputs(self, name: str, outputs: dict[str, Any], seconds: float) -> None:
        parent = self._parent
        existing = parent.params
        for key, value in outputs.items():
            if key == "dice" or value is None or f"{name}.{key}" in existing:
                continue
            parent.log_param(f"{name}.{key}", value)
        if outputs.get("dice") is not None and math.isfinite(outputs["dice"]):
            parent.log_metrics({f"stages/{name}/dice": float(outputs["dice"])})
        parent.log_metrics({f"stages/{name}/seconds": round(seconds, 2)})
        parent.log_text(json.dumps(self.state, indent=1), "workflow/state.json")

    # ---------------------------------------------------------------------------------- training kinds

    def training_config(
        self, stage: TrainStage, run_name: str | None, *, static_only: bool = False
    ) -> Config:
        """The config of a training stage (:func:`medcl.workflows.stages.training_config`)."""
        return stages.training_config(self.ctx, stage, run_name, static_only=static_only)

    def _train(
        self, stage: TrainStage, rec: dict[str, Any], tags: dict[str, str], continue_killed: bool
    ) -> dict:
        from medcl.engine.run import train

        cfg = self.training_config(stage, rec["run_name"])
        if stage.kind == "finetune" and not cfg.init:
            print("note: finetune stage without init: fine-tuning from random initialisation (the baseline)")
        run_dir = Path(cfg.output) / "runs" / rec["run_name"]
        rec["run_dir"] = str(run_dir)
        write_state(self.state_file, self.state)
        result = train(
            cfg, resume=str(run_dir) if continue_killed else None, progress=self.progress, tags=tags
        )
        checkpoint = result.best_checkpoint or result.last_checkpoint
        return {
            "run_id": result.run_id,
            "run_dir": str(result.run_dir),
            "checkpoint": str(checkpoint) if checkpoint else None,
            "model": result.model_uri,
            "dice": result.best_dice,
        }

    def _client_stage(self, stage: Any, rec: dict[str, Any], tags: dict[str, str], body: Any) -> dict:
        """A child run made with the client (no fluent run is active), ``body`` logging into it."""
        assert self.store is not None
        run = self.store.create_run(self.state["experiment_id"], rec["run_name"], tags)
        rec["run_id"] = run.run_id
        write_state(self.state_file, self.state)
        outputs = body(self.ctx, stage, run, self._stage_dir(stage))
        run.end(FINISHED)
        return {"run_id": run.run_id, **outputs}

    # -------------------------------------------------------------------------------------- registry

    def _register(self) -> None:
        """Register the chosen stage's logged model and point the alias at the new version."""
        assert self.store is not None
        reg = self.wf.register_
        assert reg is not None
        outputs = finished_outputs(self.state)
        chosen = max(
            reg.candidates,
            key=lambda n: outputs[n].get("dice") if outputs[n].get("dice") is not None else -math.inf,
        )
        model_uri = outputs[chosen].get("model")
        parent = self._parent
        try:
            if not model_uri:
                raise MedclError(
                    f"stage {chosen!r} logged no MLflow model (tracking.log_model false, or the export failed)"
                )
            version = self.store.register_model(
                model_uri,
                reg.name,
                reg.alias,
                tags={
                    "medcl.workflow": self.wf.name,
                    "medcl.workflow.run_id": parent.run_id,
                    "medcl.stage": chosen,
                },
            )
        except Exception as exc:
            message = one_line(exc if isinstance(exc, MedclError) else f"{type(exc).__name__}: {exc}")
            parent.set_tag("medcl.error", f"register: {message}"[:5000])
            self._finish(FAILED)
            raise WorkflowError(
                f"workflow {self.wf.name}: registering {reg.name}@{reg.alias} failed: {message}. "
                f"Fix it, then continue with: medcl run {self.source} --resume"
            ) from exc
        uri = f"models:/{reg.name}@{reg.alias}"
        self.state["registered"] = {
            "name": reg.name,
            "alias": reg.alias,
            "version": version,
            "from": chosen,
            "model": model_uri,
            "uri": uri,
        }
        write_state(self.state_file, self.state)
        parent.set_tag("medcl.registered_model", uri)
        parent.set_tag("medcl.registered_version", version)
        print(f"registered {model_uri} (stage {chosen}) as {reg.name} version {version}: {uri}")

    # --------------------------------------------------------------------------------------- report

    def format_summary(self) -> str:
        """A table of the stages: status, child run id and the main output."""
        return format_state(self.wf, self.state, self.state_file)


def run_workflow(
    path: str | Path,
    overrides: Sequence[Override] = (),
    *,
    resume: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Load a workflow file with ``--set`` overrides and run (or resume) it; returns the final state."""
    from medcl.workflows.spec import load_workflow

    wf = load_workflow(path, overrides)
    return WorkflowRunner(wf, path, resume=resume, progress=progress).run()
