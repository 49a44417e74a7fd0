"""What each stage kind does: the services of :mod:`medcl.services` called with the stage's fields.

Training stages build their config here (:func:`training_config`) and train in the runner, which keeps their
run folder in the state. ``split``, ``evaluate`` and ``infer`` stages run inside a child run the runner
made (a :class:`~medcl.tracking.client_runs.ClientRun`) and log into it; each returns its outputs
(:data:`medcl.workflows.references.OUTPUTS`) and writes its files into the stage folder it is given.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medcl.config import Config
from medcl.config_files import read_yaml, set_dotted
from medcl.errors import ConfigError, DataError, MedclError, one_line
from medcl.services.configs import build_config
from medcl.services.training_options import training_overrides
from medcl.workflows.references import references
from medcl.workflows.spec import EvaluateStage, InferStage, SplitStage, TrainStage, Workflow


@dataclass
class StageContext:
    """What every stage reads from its workflow run.

    Attributes:
        wf: The workflow.
        uri: The tracking URI of its store.
        where: ``workflow <file>``, naming the workflow in messages.
        progress: Draw progress bars.
    """

    wf: Workflow
    uri: str
    where: str
    progress: bool = True

    def data(self, stage: SplitStage | EvaluateStage) -> str:
        """The stage's dataset folder, else the workflow's."""
        data = stage.data or self.wf.data
        if not data:
            raise ConfigError(f"{self.where}, stage {stage.name!r}: no dataset (set data:)")
        return data

    def predictor(self, model: str, device: str | None) -> Any:
        """The stage's model, on the stage's device (else the workflow's)."""
        from medcl.inference.predictor import Predictor

        return Predictor.load(
            model, device=device or self.wf.device, tracking_uri=self.uri, output=self.wf.output
        )


# ---------------------------------------------------------------------------------------------- training


def training_config(
    ctx: StageContext, stage: TrainStage, run_name: str | None, *, static_only: bool = False
) -> Config:
    """The config of a training stage: its YAML, the stage fields, ``set`` (workflow then stage) and the
    workflow's store, output and experiment. ``static_only`` skips values holding stage references."""
    where = f"{stage.config}, stage {stage.name!r} of {ctx.where}"
    if not Path(stage.config).is_file():
        raise ConfigError(f"{ctx.where}, stage {stage.name!r}: config file not found: {stage.config}")
    raw = read_yaml(stage.config)
    values = training_overrides(
        data=stage.data or ctx.wf.data,
        splits=stage.splits,
        init=stage.init,
        labeled=stage.labeled,
        steps=stage.steps,
        seed=stage.seed,
        device=stage.device or (ctx.wf.device if ctx.wf.device != "auto" else None),
        runs=ctx.wf.output,
        tracking_uri=ctx.uri,
        experiment=ctx.wf.experiment_name,
        run_name=run_name,
    )
    values.update(ctx.wf.set)
    values.update(stage.set)
    for key, value in values.items():
        if static_only and references(value):
            continue
        set_dotted(raw, key, value)
    return build_config(raw, source=where)


def preflight(ctx: StageContext, stages: list[Any]) -> None:
    """Every pending training stage's config file exists and validates, before anything runs."""
    for stage in stages:
        if isinstance(stage, TrainStage):
            cfg = training_config(ctx, stage, None, static_only=True)
            if not cfg.data.path and not cfg.data.images:
                raise ConfigError(
                    f"{ctx.where}, stage {stage.name!r}: no dataset: set data: at the top of the workflow, "
                    "in the stage, or --set data=DIR"
                )


# ---------------------------------------------------------------------------------- split, evaluate, infer


def split_stage(ctx: StageContext, stage: SplitStage, run: Any, folder: Path) -> dict[str, Any]:
    """Split the dataset into ``<folder>/splits.json``; log the sizes, the settings and the file."""
    from medcl.services.split import log_split, split_dataset, subset_sizes

    result = split_dataset(
        ctx.data(stage),
        folder / "splits.json",
        labeled=stage.labeled,
        val=stage.val,
        test=stage.test,
        seed=stage.seed,
        group_by=stage.group_by,
        overwrite=True,
        option=f"stage {stage.name!r}: the splits file",
    )
    log_split(
        run, result, {key: getattr(stage, key) for key in ("labeled", "val", "test", "seed", "group_by")}
    )
    sizes = subset_sizes(result.splits)
    print("    " + ", ".join(f"{name} {n}" for name, n in sizes.items()) + f" -> {result.path}")
    return {"splits": str(result.path)}


def evaluate_stage(ctx: StageContext, stage: EvaluateStage, run: Any, folder: Path) -> dict[str, Any]:
    """Score the model on the ``subset`` cases into ``<folder>/summary.json``; log the scores.

    Raises:
        DataError: Some case could not be scored (after everything is written and logged).
    """
    from medcl.services.evaluate import check_classes, load_subset, log_summary, score_model, summary_params

    subset = load_subset(ctx.data(stage), stage.splits, stage.subset, max_cases=stage.max_cases)
    predictor = ctx.predictor(stage.model, stage.device)
    check_classes(predictor, subset.info, stage.model)
    run.set_tag("medcl.model", stage.model)
    summary = score_model(
        predictor,
        subset,
        model=stage.model,
        spacing=stage.spacing,
        empty_policy=stage.empty_policy,
        progress=ctx.progress,
    )
    files = summary.write(folder / "summary.json", overwrite=True)
    log_summary(run, summary, stage.subset, files, params={**summary_params(summary), "subset": stage.subset})
    print(summary.format_table())
    if summary.problems:
        raise DataError(
            f"{len(summary.problems)} case(s) could not be scored (see {files[0]}): "
            + one_line(summary.format_problems())
        )
    return {"summary": str(files[0]), "dice": summary.foreground_mean()["dice"]}


def infer_stage(ctx: StageContext, stage: InferStage, run: Any, folder: Path) -> dict[str, Any]:
    """Segment the inputs into ``<folder>/masks``; log the settings, the timing and (optionally) the masks.

    Raises:
        MedclError: Some case failed (after the others are written and logged).
    """
    from medcl.inference.inputs import collect_inputs
    from medcl.services.segment import log_segmentation, segment_cases

    cases = collect_inputs(stage.input)
    predictor = ctx.predictor(stage.model, stage.device)
    run.set_tag("medcl.model", stage.model)
    out_dir = folder / "masks"
    result = segment_cases(
        predictor,
        cases,
        out_dir,
        fmt=stage.format,
        tta=stage.tta,
        postprocess=stage.postprocess,
        overwrite=True,  # a stage that runs again replaces its own masks
        progress=ctx.progress,
        desc=stage.name,
    )
    settings = {"model": stage.model, "tta": stage.tta, "postprocess": stage.postprocess}
    log_segmentation(run, result, settings, log_masks=stage.log_masks)
    print(f"    {len(result.written)} of {len(cases)} mask(s) written to {out_dir}")
    if result.failures:
        failed = "; ".join(f"{name}: {message}" for name, message in result.failures)
        raise MedclError(f"{len(result.failures)} case(s) failed: {failed}")
    return {"masks": str(out_dir)}
