"""``medcl run WORKFLOW``: a multi-stage pipeline as one MLflow parent run with a child run per stage."""

from __future__ import annotations

import argparse
from pathlib import Path

from medcl.commands.flags import add_runs_flag
from medcl.errors import ConfigError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``run`` to the top-level parser.

    Args:
        subparsers: The object returned by ``ArgumentParser.add_subparsers``.
    """
    p = subparsers.add_parser(
        "run",
        help="run a workflow (workflows/*.yaml): split, pretrain, train, finetune, evaluate, infer",
        description="Run the stages of a workflow file in order as one MLflow parent run with one nested child "
        "run per stage; each stage can use the outputs of earlier ones (${stages.NAME.KEY}). A failed stage "
        "stops the workflow; fix the cause and continue with --resume, which skips the finished stages.",
    )
    p.add_argument(
        "workflow",
        metavar="WORKFLOW",
        help="workflow YAML (its relative paths are relative to it), or a shipped name, e.g. demo",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a workflow key (repeatable): data=DIR, vars.steps=100, stages.train.steps=50, "
        "stages.train.set.optim.lr=3e-4, set.train.device=cpu (every training stage)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the last run of this workflow (same parent run) at its first unfinished stage",
    )
    add_runs_flag(p, "runs folder: run folders, MLflow store and workflow state -> output")
    p.add_argument("--tracking-uri", metavar="URI", help="MLflow tracking URI -> tracking_uri")
    p.add_argument(
        "--check",
        action="store_true",
        help="validate the file, its references and its data folders and print the stages, without running "
        "anything (exit status 1 when a data folder is missing)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars (for logs of batch jobs)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Validate the workflow, then run, resume or only describe it.

    Raises:
        MedclError: The file is invalid, or a stage failed (one line naming the stage; exit status 1).
    """
    from medcl.workflows.runner import WorkflowRunner
    from medcl.workflows.spec import load_workflow

    overrides = list(args.overrides)
    if args.runs is not None:
        overrides.append(("output", args.runs))  # typed: a folder named 2024 stays a string
    if args.tracking_uri is not None:
        overrides.append(("tracking_uri", args.tracking_uri))
    from medcl.shipped import find_file

    path = find_file("workflows", args.workflow)  # a file, else a shipped workflow by name
    wf = load_workflow(path, overrides)
    if args.check:
        print(describe(wf))
        missing = missing_data(wf)
        if missing:
            raise ConfigError(f"workflow {path}: {'; '.join(missing)}")
        return 0
    WorkflowRunner(wf, str(path), resume=args.resume, progress=not args.no_progress).run()
    return 0


def missing_data(wf) -> list[str]:
    """One message per dataset folder of the workflow (top level or a stage's) that does not exist."""
    folders = {"data": wf.data} if wf.data else {}
    for stage in wf.stages:
        value = getattr(stage, "data", None)
        if value and "${" not in value:
            folders[f"stages.{stage.name}.data"] = value
    return [
        f"{key} folder {value} does not exist (--set {key}=DIR)"
        for key, value in folders.items()
        if not Path(value).is_dir()
    ]


def describe(wf) -> str:
    """The stages of a validated workflow, one line each, with missing config files marked."""
    from medcl.workflows.state import state_path

    lines = [
        f"workflow {wf.name}: {len(wf.stages)} stage(s), experiment {wf.experiment_name!r}, output {wf.output}"
    ]
    for stage in wf.stages:
        detail = ""
        config = getattr(stage, "config", None)
        if config:
            detail = config + ("" if Path(config).is_file() else "  (missing: needed when the stage runs)")
        elif getattr(stage, "model", None):
            detail = f"model {stage.model}"
        lines.append(f"  {stage.name:<18} {stage.kind:<9} {detail}")
    if wf.register_ is not None:
        lines.append(
            f"  register {', '.join(wf.register_.candidates)} as models:/{wf.register_.name}@{wf.register_.alias}"
        )
    lines.append(f"  state: {state_path(wf)}")
    return "\n".join(lines)
