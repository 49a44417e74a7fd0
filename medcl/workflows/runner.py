"""Run a workflow: one MLflow parent run, one nested child run per stage, and a resumable state file.

The parent run (experiment ``workflow.experiment``, default ``workflow-<name>``) carries the resolved workflow
(``workflow/resolved.yaml``), the state (``workflow/state.json``), each finished stage's outputs as params
(``<stage>.run_id``, ``<stage>.checkpoint``, ``<stage>.model``, ...) and its Dice as the metric
``<stage>/dice``. Each stage runs as a child run tagged ``mlflow.parentRunId`` (how the MLflow UI nests runs)
plus ``medcl.workflow``, ``medcl.workflow.stage`` and ``medcl.workflow.attempt``.

Progress is kept in ``<output>/workflows/<name>/state.json`` (written atomically after every change). A
stage that fails marks its child run and the parent ``FAILED``, the state records the error, and
``medcl run <file> --resume`` reopens the same parent run and starts again at the first unfinished stage:
finished stages keep their child runs and outputs. A training stage stopped by Ctrl-C (``KILLED``) or whose
process died (still ``RUNNING`` in the state) continues from its ``last.pt`` in the same child run; a
``FAILED`` stage runs again from the start in a new child run (attempt 2, ...). A lock file beside the state
(``lock``, the process id) keeps two processes from running the same workflow into the same output folder. Stage files (splits, summaries, masks) go to
``<output>/workflows/<name>/<parent run name>/<stage>/``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from pathlib import Path
from typing import Any

import yaml

from medcl.config import Config, build_config, read_yaml, set_dotted
from medcl.errors import ConfigError, MedclError
from medcl.tracking.mlflow_tracking import get_or_create_experiment, resolve_store
from medcl.workflows.spec import (
    EvaluateStage,
    InferStage,
    SplitStage,
    TrainStage,
    Workflow,
    references,
    resolve_stage,
)

log = logging.getLogger(__name__)

STATE_FORMAT = "medcl-workflow-state/1"
FINISHED, FAILED, KILLED, RUNNING, PENDING = "FINISHED", "FAILED", "KILLED", "RUNNING", "PENDING"


class WorkflowError(MedclError):
    """A workflow stage (or the registration) failed; the message says which and how to resume."""


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
    state["updated"] = _now()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(state, f, indent=1)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


def _one_line(text: str) -> str:
    return re.sub(r"\s*\n\s*", "; ", str(text).strip())


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
        self.client: Any = None

    # ------------------------------------------------------------------------------------------ driver

    def run(self) -> dict[str, Any]:
        """Run every unfinished stage, then the registration; return the final state.

        Raises:
            WorkflowError: A stage or the registration failed (parent run and state marked ``FAILED``).
            MedclError: Nothing to resume, or a training config of a pending stage is invalid.
        """
        import mlflow

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
        self._preflight(pending)

        env_uri = os.environ.get("MLFLOW_TRACKING_URI")
        mlflow.set_tracking_uri(self.uri)
        lock = self._lock()
        try:
            self.client = mlflow.MlflowClient(tracking_uri=self.uri)
            self._open_parent()
            for index, stage in enumerate(self.wf.stages, start=1):
                self._run_stage(index, stage)
            if self.wf.register_ is not None and not self.state.get("registered"):
                self._register()
            self._finish(FINISHED)
        finally:
            lock.unlink(missing_ok=True)
            if env_uri is None:
                os.environ.pop("MLFLOW_TRACKING_URI", None)
            else:
                os.environ["MLFLOW_TRACKING_URI"] = env_uri
        print(self.format_summary())
        return self.state

    def _lock(self) -> Path:
        """``<state dir>/lock`` holding this process id: one process per workflow and output folder.

        A lock left by a process that no longer exists is taken over.
        """
        import psutil

        lock = self.state_file.with_name("lock")
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
                        f"workflow {self.wf.name} is already running in process {pid} (lock {lock}); "
                        "wait for it or stop it first"
                    ) from None
                lock.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(str(os.getpid()))
            return lock
        raise MedclError(f"cannot take the workflow lock {lock}")

    def _record(self, name: str) -> dict[str, Any]:
        return self.state.get("stages", {}).get(name, {})

    def _open_parent(self) -> None:
        """Create the parent run (or reopen it when resuming) and write the state."""
        tags = {"medcl.workflow": self.wf.name, "medcl.workflow.file": str(self.source.resolve())}
        if self.resume:
            parent = self.state["parent_run_id"]
            self.client.update_run(parent, status=RUNNING)
            self.client.set_tag(parent, "medcl.workflow.resumed", str(int(self.state.get("resumed", 0)) + 1))
            self.state["resumed"] = int(self.state.get("resumed", 0)) + 1
            print(f"resuming workflow {self.wf.name}: parent run {parent} ({self.state['run_name']})")
        else:
            self._archive_previous_state()
            experiment_id = get_or_create_experiment(self.wf.experiment_name, self.artifact_root)
            run_name = f"{self.wf.name}-{time.strftime('%Y%m%d-%H%M%S')}"
            parent = self.client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id
            self.client.log_param(parent, "workflow.name", self.wf.name)
            self.client.log_param(parent, "workflow.file", str(self.source.resolve()))
            self.client.log_param(parent, "workflow.stages", ",".join(s.name for s in self.wf.stages))
            self.state = {
                "format": STATE_FORMAT,
                "name": self.wf.name,
                "workflow_file": str(self.source.resolve()),
                "parent_run_id": parent,
                "run_name": run_name,
                "experiment_id": experiment_id,
                "tracking_uri": self.uri,
                "status": RUNNING,
                "started": _now(),
                "stages": {
                    s.name: {"kind": s.kind, "status": PENDING, "attempts": 0} for s in self.wf.stages
                },
                "registered": None,
            }
            print(
                f"workflow {self.wf.name}: parent run {parent} ({run_name}) in experiment "
                f"{self.wf.experiment_name!r}"
            )
        for stage in self.wf.stages:  # stages added to the file since the failed run
            self.state["stages"].setdefault(
                stage.name, {"kind": stage.kind, "status": PENDING, "attempts": 0}
            )
        self.state["status"] = RUNNING
        self.state["workflow"] = self.wf.to_dict()
        write_state(self.state_file, self.state)
        self.client.log_text(
            parent, yaml.safe_dump(self.wf.to_dict(), sort_keys=False), "workflow/resolved.yaml"
        )

    def _archive_previous_state(self) -> None:
        """A new run of the same workflow keeps the previous state as ``history/<run name>.json``."""
        if not self.state_file.is_file():
            return
        old: dict[str, Any] = {}
        try:
            old = json.loads(self.state_file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            pass
        name = old.get("run_name") or f"state-{int(time.time())}"
        target = self.state_file.parent / "history" / f"{name}.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.state_file, target)
        if old.get("status") not in (FINISHED, None):
            print(
                f"note: the previous run of this workflow ({name}) was {old.get('status')}; its state is "
                f"kept in {target} (continue a run with --resume instead of starting a new one)"
            )

    def _note_changed_stages(self) -> None:
        for stage in self.wf.stages:
            rec = self._record(stage.name)
            if rec.get("status") == FINISHED and rec.get("definition") != stage.model_dump(mode="json"):
                print(f"note: stage {stage.name!r} changed since it finished; its earlier result is kept")

    def _finish(self, status: str) -> None:
        self.state["status"] = status
        self.state["ended"] = _now()
        write_state(self.state_file, self.state)
        parent = self.state["parent_run_id"]
        try:
            self.client.log_text(parent, json.dumps(self.state, indent=1), "workflow/state.json")
        finally:
            self.client.set_terminated(parent, status)

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
            and stage.kind in ("pretrain", "train", "finetune")
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
        rec.update(status=RUNNING, error=None, started=_now(), definition=stage.model_dump(mode="json"))
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
            resolved = resolve_stage(stage, self._outputs(), self.where)
            if isinstance(resolved, TrainStage):
                outputs = self._train(resolved, rec, tags, continue_killed)
            elif isinstance(resolved, SplitStage):
                outputs = self._client_stage(resolved, rec, tags, self._split)
            elif isinstance(resolved, EvaluateStage):
                outputs = self._client_stage(resolved, rec, tags, self._evaluate)
            else:
                outputs = self._client_stage(resolved, rec, tags, self._infer)
        except KeyboardInterrupt:
            self._stage_failed(stage, rec, tags, KILLED, "interrupted")
            raise
        except Exception as exc:
            message = _one_line(exc if isinstance(exc, MedclError) else f"{type(exc).__name__}: {exc}")
            log.debug("stage %s failed", stage.name, exc_info=True)
            self._stage_failed(stage, rec, tags, FAILED, message)
            raise WorkflowError(
                f"workflow {self.wf.name}: stage {stage.name!r} ({stage.kind}) failed: {message}. "
                f"Fix it, then continue with: medcl run {self.source} --resume"
            ) from exc
        seconds = time.perf_counter() - start
        rec.update(status=FINISHED, outputs=outputs, run_id=outputs.get("run_id"), ended=_now())
        write_state(self.state_file, self.state)
        self._log_outputs(stage.name, outputs, seconds)
        shown = {k: v for k, v in outputs.items() if k in ("dice", "model", "checkpoint", "splits", "masks")}
        print(
            f"    {stage.name} finished in {seconds:.0f} s: run {outputs.get('run_id')} "
            + " ".join(f"{k}={_short(v)}" for k, v in shown.items())
        )

    def _close_stale_child(self, stage: str, rec: dict[str, Any]) -> None:
        """Mark the child run of an interrupted attempt ``KILLED`` if it was left ``RUNNING``."""
        run_id = rec.get("run_id") or self._find_child(stage, int(rec.get("attempts", 0)))
        if run_id and self.client.get_run(run_id).info.status == RUNNING:
            self.client.set_terminated(run_id, KILLED)

    def _outputs(self) -> dict[str, dict[str, Any]]:
        return {
            name: rec.get("outputs") or {}
            for name, rec in self.state["stages"].items()
            if rec.get("status") == FINISHED
        }

    def _stage_dir(self, stage: Any) -> Path:
        return Path(self.wf.output) / "workflows" / self.wf.name / self.state["run_name"] / stage.name

    def _stage_failed(
        self, stage: Any, rec: dict[str, Any], tags: dict[str, str], status: str, msg: str
    ) -> None:
        """Child run, stage record and parent run marked ``status``; a child run is made if none exists."""
        import mlflow

        active = mlflow.active_run()
        if active is not None:  # a training run that failed outside its own try/finally
            mlflow.end_run(status=status)
        run_id = rec.get("run_id") or self._find_child(stage.name, rec["attempts"])
        try:
            if run_id is None:  # failed before any run was created (bad config, missing data)
                run_id = self.client.create_run(
                    self.state["experiment_id"], run_name=rec.get("run_name"), tags=tags
                ).info.run_id
            self.client.set_tag(run_id, "medcl.error", msg[:5000])
            if self.client.get_run(run_id).info.status in (RUNNING, "SCHEDULED") or status == FAILED:
                self.client.set_terminated(run_id, status)
        finally:
            rec.update(status=status, error=msg, run_id=run_id, ended=_now())
            parent = self.state["parent_run_id"]
            self.client.set_tag(parent, "medcl.workflow.failed_stage", stage.name)
            self.client.set_tag(parent, "medcl.error", f"{stage.name}: {msg}"[:5000])
            self._finish(status)

    def _find_child(self, stage: str, attempt: int) -> str | None:
        runs = self.client.search_runs(
            [self.state["experiment_id"]],
            filter_string=(
                f"tags.`mlflow.parentRunId` = '{self.state['parent_run_id']}' and "
                f"tags.`medcl.workflow.stage` = '{stage}' and tags.`medcl.workflow.attempt` = '{attempt}'"
            ),
            max_results=1,
        )
        return runs[0].info.run_id if runs else None

    def _log_outputs(self, name: str, outputs: dict[str, Any], seconds: float) -> None:
        parent = self.state["parent_run_id"]
        existing = self.client.get_run(parent).data.params
        for key, value in outputs.items():
            if key == "dice" or value is None or f"{name}.{key}" in existing:
                continue
            self.client.log_param(parent, f"{name}.{key}", str(value))
        if outputs.get("dice") is not None and math.isfinite(outputs["dice"]):
            self.client.log_metric(parent, f"stages/{name}/dice", float(outputs["dice"]))
        self.client.log_metric(parent, f"stages/{name}/seconds", round(seconds, 2))
        self.client.log_text(parent, json.dumps(self.state, indent=1), "workflow/state.json")

    # ---------------------------------------------------------------------------------- training kinds

    def training_config(
        self, stage: TrainStage, run_name: str | None, *, static_only: bool = False
    ) -> Config:
        """The config of a training stage: its YAML, the stage fields, ``set`` (workflow then stage) and the
        workflow's store, output and experiment. ``static_only`` skips values holding stage references."""
        where = f"{stage.config}, stage {stage.name!r} of {self.where}"
        if not Path(stage.config).is_file():
            raise ConfigError(f"{self.where}, stage {stage.name!r}: config file not found: {stage.config}")
        raw = read_yaml(stage.config)
        values: dict[str, Any] = {
            "data.path": stage.data or self.wf.data,
            "data.splits": stage.splits,
            "init": stage.init,
            "data.labeled": stage.labeled,
            "train.steps": stage.steps,
            "train.seed": stage.seed,
            "train.device": stage.device or (self.wf.device if self.wf.device != "auto" else None),
            "output": self.wf.output,
            "tracking.uri": self.uri,
            "tracking.experiment": self.wf.experiment_name,
            "tracking.run_name": run_name,
        }
        values = {k: v for k, v in values.items() if v is not None}
        values.update(self.wf.set)
        values.update(stage.set)
        for key, value in values.items():
            if static_only and references(value):
                continue
            set_dotted(raw, key, value)
        return build_config(raw, source=where)

    def _preflight(self, stages: list[Any]) -> None:
        """Every pending training stage's config file exists and validates, before anything runs."""
        for stage in stages:
            if isinstance(stage, TrainStage):
                cfg = self.training_config(stage, None, static_only=True)
                if not cfg.data.path and not cfg.data.images:
                    raise ConfigError(
                        f"{self.where}, stage {stage.name!r}: no dataset: set data: at the top of the workflow, "
                        "in the stage, or --set data=DIR"
                    )

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

    # ------------------------------------------------------------------------- split, evaluate, infer

    def _client_stage(self, stage: Any, rec: dict[str, Any], tags: dict[str, str], body: Any) -> dict:
        """A child run made with the client (no fluent run is active), ``body`` logging into it."""
        run_id = self.client.create_run(
            self.state["experiment_id"], run_name=rec["run_name"], tags=tags
        ).info.run_id
        rec["run_id"] = run_id
        write_state(self.state_file, self.state)
        outputs = body(stage, run_id, self._stage_dir(stage))
        self.client.set_terminated(run_id, FINISHED)
        return {"run_id": run_id, **outputs}

    def _split(self, stage: SplitStage, run_id: str, folder: Path) -> dict[str, Any]:
        from medcl.data.dataset import load_dataset
        from medcl.data.splits import SUBSETS, make_splits

        data = stage.data or self.wf.data
        if not data:
            raise ConfigError(f"{self.where}, stage {stage.name!r}: no dataset (set data:)")
        info = load_dataset(data)
        splits = make_splits(
            info,
            labeled=stage.labeled,
            val=stage.val,
            test=stage.test,
            seed=stage.seed,
            group_by=stage.group_by,
        )
        path = folder / "splits.json"
        splits.save(path)
        for name in SUBSETS:
            self.client.log_metric(run_id, f"split/n_{name}", len(getattr(splits, name)))
        for key in ("labeled", "val", "test", "seed", "group_by"):
            self.client.log_param(run_id, key, str(getattr(stage, key)))
        self.client.log_param(run_id, "data", str(info.root))
        self.client.log_artifact(run_id, str(path), "splits")
        print("    " + ", ".join(f"{name} {len(getattr(splits, name))}" for name in SUBSETS) + f" -> {path}")
        return {"splits": str(path)}

    def _evaluate(self, stage: EvaluateStage, run_id: str, folder: Path) -> dict[str, Any]:
        from medcl.data.dataset import load_dataset
        from medcl.data.splits import Splits
        from medcl.errors import DataError
        from medcl.evaluation.summary import evaluate_predictor

        data = stage.data or self.wf.data
        if not data:
            raise ConfigError(f"{self.where}, stage {stage.name!r}: no dataset (set data:)")
        info = load_dataset(data)
        splits = Splits.load(stage.splits)
        splits.check_against(info)
        ids = list(getattr(splits, stage.subset))[: stage.max_cases]
        if not ids:
            raise DataError(f"splits file {stage.splits} has no {stage.subset!r} cases to evaluate")
        predictor = self._predictor(stage.model, stage.device)
        if len(predictor.class_names) != info.num_classes:
            raise DataError(
                f"model {stage.model} predicts {len(predictor.class_names)} classes but dataset {info.root} "
                f"has {info.num_classes}"
            )
        self.client.set_tag(run_id, "medcl.model", stage.model)
        summary = evaluate_predictor(
            predictor,
            [info.case(i) for i in ids],
            info.labels,
            stage.spacing,
            stage.empty_policy,
            progress=self.progress,
        )
        summary.settings.update(
            {"model": stage.model, "dataset": str(info.root), "splits": stage.splits, "subset": stage.subset}
        )
        json_path, csv_path = summary.write(folder / "summary.json", overwrite=True)
        params = {
            "model": stage.model,
            "data": str(info.root),
            "splits": stage.splits,
            "subset": stage.subset,
            "spacing": stage.spacing,
            "empty_policy": stage.empty_policy,
            "n_cases": len(summary.cases),
            "n_problems": len(summary.problems),
        }
        for key, value in params.items():
            self.client.log_param(run_id, key, str(value)[:6000])
        means = summary.class_means()
        prefix = stage.subset
        for name, stats in means.items():
            key = re.sub(r"[^\w\-. ]", "_", name)
            for metric in ("dice", "hd95", "asd"):
                if stats[metric] is not None:
                    self.client.log_metric(run_id, f"{prefix}/{metric}/{key}", float(stats[metric]), step=0)
        fg = summary.foreground_mean(means)
        for metric in ("dice", "hd95", "asd"):
            if fg[metric] is not None:
                self.client.log_metric(run_id, f"{prefix}/{metric}_mean", float(fg[metric]), step=0)
        self.client.log_artifact(run_id, str(json_path))
        self.client.log_artifact(run_id, str(csv_path))
        print(summary.format_table())
        if summary.problems:
            raise DataError(
                f"{len(summary.problems)} case(s) could not be scored (see {json_path}): "
                + _one_line(summary.format_problems())
            )
        return {"summary": str(json_path), "dice": fg["dice"]}

    def _infer(self, stage: InferStage, run_id: str, folder: Path) -> dict[str, Any]:
        from tqdm.auto import tqdm

        from medcl.inference.inputs import collect_inputs, output_path
        from medcl.inference.predictor import write_labels

        cases = collect_inputs(stage.input)
        predictor = self._predictor(stage.model, stage.device)
        self.client.set_tag(run_id, "medcl.model", stage.model)
        out_dir = folder / "masks"
        written, failures, seconds = {}, [], 0.0
        bar = tqdm(cases, desc=stage.name, unit="case", disable=not self.progress, dynamic_ncols=True)
        for case in bar:
            target = output_path(case, out_dir, stage.format)
            start = time.perf_counter()
            try:
                seg = predictor.segment(case.paths, tta=stage.tta, postprocess=stage.postprocess)
                write_labels(seg.labels, case.paths[0], target)
            except (MedclError, OSError, RuntimeError, ValueError) as exc:
                failures.append(f"{case.name}: {_one_line(exc)}")
                continue
            seconds += time.perf_counter() - start
            written[case.name] = str(target)
        self.client.log_param(run_id, "model", stage.model)
        self.client.log_param(run_id, "tta", str(stage.tta))
        self.client.log_param(run_id, "postprocess", str(stage.postprocess))
        self.client.log_metric(run_id, "infer/n_cases", len(written))
        self.client.log_metric(run_id, "infer/seconds", round(seconds, 3))
        self.client.log_text(
            run_id, json.dumps({"masks": written, "failed": failures}, indent=1), "masks.json"
        )
        if stage.log_masks and written:
            for path in written.values():
                self.client.log_artifact(run_id, path, "masks")
        print(f"    {len(written)} of {len(cases)} mask(s) written to {out_dir}")
        if failures:
            raise MedclError(f"{len(failures)} case(s) failed: " + "; ".join(failures))
        return {"masks": str(out_dir)}

    def _predictor(self, model: str, device: str | None) -> Any:
        from medcl.inference.predictor import Predictor

        return Predictor.load(
            model, device=device or self.wf.device, tracking_uri=self.uri, output=self.wf.output
        )

    # -------------------------------------------------------------------------------------- registry

    def _register(self) -> None:
        """Register the chosen stage's logged model and point the alias at the new version."""
        import mlflow

        reg = self.wf.register_
        assert reg is not None
        outputs = self._outputs()
        chosen = max(
            reg.candidates,
            key=lambda n: outputs[n].get("dice") if outputs[n].get("dice") is not None else -math.inf,
        )
        model_uri = outputs[chosen].get("model")
        parent = self.state["parent_run_id"]
        try:
            if not model_uri:
                raise MedclError(
                    f"stage {chosen!r} logged no MLflow model (tracking.log_model false, or the export failed)"
                )
            version = mlflow.register_model(
                model_uri,
                reg.name,
                tags={"medcl.workflow": self.wf.name, "medcl.workflow.run_id": parent, "medcl.stage": chosen},
            )
            self.client.set_registered_model_alias(reg.name, reg.alias, version.version)
        except Exception as exc:
            message = _one_line(exc if isinstance(exc, MedclError) else f"{type(exc).__name__}: {exc}")
            self.client.set_tag(parent, "medcl.error", f"register: {message}"[:5000])
            self._finish(FAILED)
            raise WorkflowError(
                f"workflow {self.wf.name}: registering {reg.name}@{reg.alias} failed: {message}. "
                f"Fix it, then continue with: medcl run {self.source} --resume"
            ) from exc
        uri = f"models:/{reg.name}@{reg.alias}"
        self.state["registered"] = {
            "name": reg.name,
            "alias": reg.alias,
            "version": str(version.version),
            "from": chosen,
            "model": model_uri,
            "uri": uri,
        }
        write_state(self.state_file, self.state)
        self.client.set_tag(parent, "medcl.registered_model", uri)
        self.client.set_tag(parent, "medcl.registered_version", str(version.version))
        print(f"registered {model_uri} (stage {chosen}) as {reg.name} version {version.version}: {uri}")

    # --------------------------------------------------------------------------------------- report

    def format_summary(self) -> str:
        """A table of the stages: status, child run id and the main output."""
        lines = [
            f"workflow {self.wf.name}: {self.state['status']} (parent run {self.state['parent_run_id']})"
        ]
        lines.append(f"{'stage':<18} {'kind':<9} {'status':<9} {'run id':<33} output")
        for stage in self.wf.stages:
            rec = self._record(stage.name)
            out = rec.get("outputs") or {}
            main = next(
                (out[k] for k in ("dice", "masks", "splits", "checkpoint") if out.get(k) is not None), ""
            )
            if isinstance(main, float):
                main = f"Dice {main:.4f}"
            lines.append(
                f"{stage.name:<18} {stage.kind:<9} {rec.get('status', PENDING):<9} {rec.get('run_id') or '':<33} "
                f"{main}"
            )
        if self.state.get("registered"):
            reg = self.state["registered"]
            lines.append(f"registered model: {reg['uri']} (version {reg['version']}, from {reg['from']})")
        lines.append(f"state: {self.state_file}")
        return "\n".join(lines)


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def run_workflow(
    path: str | Path,
    overrides: list[str] | tuple[str, ...] = (),
    *,
    resume: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Load a workflow file with ``--set`` overrides and run (or resume) it; returns the final state."""
    from medcl.workflows.spec import load_workflow

    wf = load_workflow(path, overrides)
    return WorkflowRunner(wf, path, resume=resume, progress=progress).run()
