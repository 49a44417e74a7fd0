"""The workflow file: its schema, and loading it (``--set`` overrides, variables, paths, reference checks).

A workflow (``workflows/<name>.yaml``) is a list of stages run in order as one MLflow parent run with one
child run per stage. Example::

    name: demo
    data: demo/Task04_Hippocampus_sample
    vars: {steps: 400}
    stages:
      - {name: split, kind: split, labeled: 20, val: 5, test: 5}
      - name: train
        kind: train
        config: configs/hippocampus/demo.yaml
        splits: ${stages.split.splits}
        steps: ${vars.steps}
      - name: evaluate
        kind: evaluate
        model: ${stages.train.model}
        splits: ${stages.split.splits}
        subset: test
    register: {name: hippocampus-demo, alias: champion, from: train}

References (``${vars.NAME}``, ``${data}``, ``${stages.STAGE.KEY}``) are described in
:mod:`medcl.workflows.references`, how relative paths are read in :mod:`medcl.workflows.paths`. Everything is
made absolute on loading, so the state file of a run holds absolute paths and ``--resume`` works from
anywhere.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from medcl.config import NAME_PATTERN
from medcl.config_files import Override, load_yaml, parse_override
from medcl.defaults import DEFAULT_RUNS
from medcl.errors import ConfigError
from medcl.workflows.paths import absolute, absolute_if_file, override_path, rebase_paths
from medcl.workflows.references import (
    OUTPUTS,
    TRAINING_KINDS,
    check_references,
    references,
    resolve_stage,
    substitute,
    substitute_static,
)

__all__ = [
    "OUTPUTS",
    "TRAINING_KINDS",
    "EvaluateStage",
    "InferStage",
    "Register",
    "SplitStage",
    "Stage",
    "StageKind",
    "TrainStage",
    "Workflow",
    "apply_override",
    "build_workflow",
    "check_references",
    "load_workflow",
    "references",
    "resolve_stage",
    "substitute",
]

StageKind = Literal["split", "pretrain", "train", "finetune", "evaluate", "infer"]


class _Strict(BaseModel):
    """Unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


class _Stage(_Strict):
    """Fields shared by every stage."""

    name: str = Field(
        pattern=NAME_PATTERN, description="Unique stage name, used in references and run names."
    )
    device: Literal["auto", "cpu", "cuda"] | None = Field(
        None, description="Where the stage runs; default: the workflow's device."
    )


class SplitStage(_Stage):
    """Draw labeled / val / test cases of ``data`` (as ``medcl data split``) and write ``splits.json``."""

    kind: Literal["split"]
    data: str | None = Field(None, description="Dataset folder; default: the workflow's data.")
    labeled: int | str = Field(description="Labeled groups: a count or a percentage ('10%').")
    val: int | str = 0
    test: int | str = 0
    seed: int = 0
    group_by: str | None = Field(None, description="Regex keeping cases together, e.g. 'patient\\d+'.")


class TrainStage(_Stage):
    """``medcl pretrain|train|finetune CONFIG`` with the fields as its flags."""

    kind: Literal["pretrain", "train", "finetune"]
    config: str = Field(description="Training config YAML (needed only when the stage runs).")
    data: str | None = Field(None, description="-> data.path; default: the workflow's data.")
    splits: str | None = Field(None, description="-> data.splits (a file or ${stages.<split>.splits}).")
    init: str | None = Field(None, description="-> init: a checkpoint, run id, URI or stage reference.")
    labeled: int | None = Field(None, ge=1, description="-> data.labeled (first N labeled groups).")
    steps: int | None = Field(None, ge=1, description="-> train.steps.")
    seed: int | None = Field(None, ge=0, description="-> train.seed.")
    set: dict[str, Any] = Field(default_factory=dict, description="Other config keys, dotted: value.")


class EvaluateStage(_Stage):
    """``medcl evaluate --model`` on the ``subset`` cases of ``splits``."""

    kind: Literal["evaluate"]
    model: str = Field(description="Model to score: usually ${stages.<train>.model} or .checkpoint.")
    data: str | None = Field(None, description="Dataset folder; default: the workflow's data.")
    splits: str = Field(description="Splits file naming the cases.")
    subset: Literal["val", "test"] = Field(description="Which cases of the splits are scored.")
    max_cases: int | None = Field(None, ge=1, description="Score only the first N cases (quick checks).")
    spacing: Literal["mm", "voxel"] = "mm"
    empty_policy: Literal["strict", "ssl4mis"] = "strict"


class InferStage(_Stage):
    """``medcl infer``: masks of ``input`` into the workflow's output folder, logged in the child run."""

    kind: Literal["infer"]
    model: str = Field(description="Model to apply: usually ${stages.<train>.model} or .checkpoint.")
    input: list[str] = Field(description="Image files, folders or .txt lists (one path or a list).")
    tta: bool = False
    postprocess: Literal["lcc"] | None = None
    format: Literal["same", "nifti"] = "same"
    log_masks: bool = Field(True, description="Log the masks as artifacts of the child run.")

    @field_validator("input", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


Stage = Annotated[SplitStage | TrainStage | EvaluateStage | InferStage, Field(discriminator="kind")]


class Register(_Strict):
    """Register the model of a training stage in the MLflow model registry under ``name@alias``."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field(min_length=1, description="Registered model name.")
    alias: str = Field("champion", pattern=NAME_PATTERN, description="Alias set on the new version.")
    from_: str | list[str] = Field(
        alias="from",
        description="Training stage whose model is registered; with a list, the one with the best val Dice.",
    )

    @property
    def candidates(self) -> list[str]:
        return [self.from_] if isinstance(self.from_, str) else list(self.from_)


class Workflow(_Strict):
    """A whole workflow file."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field(
        pattern=NAME_PATTERN, description="Workflow name; default: the file name without .yaml."
    )
    description: str = ""
    data: str | None = Field(None, description="Default dataset folder of the stages; ${data}.")
    output: str = Field(DEFAULT_RUNS, description="Runs, MLflow store and workflow state (--output).")
    tracking_uri: str | None = Field(None, description="MLflow store; default sqlite under output.")
    experiment: str | None = Field(
        None, description="MLflow experiment of all runs; default workflow-<name>."
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    vars: dict[str, Any] = Field(default_factory=dict, description="Values for ${vars.NAME}.")
    set: dict[str, Any] = Field(default_factory=dict, description="Config keys set in every training stage.")
    stages: list[Stage] = Field(min_length=1)
    register_: Register | None = Field(None, alias="register", description="Model to register at the end.")

    @property
    def experiment_name(self) -> str:
        return self.experiment or f"workflow-{self.name}"

    def stage(self, name: str) -> SplitStage | TrainStage | EvaluateStage | InferStage:
        """The stage called ``name``."""
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """The resolved workflow as plain data (``from`` spelled as in the file)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=False)


# ---------------------------------------------------------------------------------------------- loading


def load_workflow(path: str | Path, overrides: Sequence[Override] = ()) -> Workflow:
    """Read, override (``--set``), substitute variables, validate and check the references of a workflow.

    Args:
        path: The workflow YAML file.
        overrides: ``KEY=VALUE`` strings; see :func:`apply_override`.

    Returns:
        The validated workflow with absolute paths; stage references are left for :func:`resolve_stage`.

    Raises:
        ConfigError: Naming the file: it is missing or not YAML, a key is unknown or ill-typed, a reference
            names an unknown variable, stage or output key, or a later stage.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"workflow file not found: {path}")
    try:
        raw = load_yaml(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"workflow file {path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(
            f"workflow file {path} must hold a mapping (name, stages, ...), got {type(raw).__name__}"
        )
    return build_workflow(raw, overrides, source=path, base=path.resolve().parent)


def build_workflow(
    raw: dict[str, Any],
    overrides: Sequence[Override] = (),
    *,
    source: str | Path = "<workflow>",
    base: Path | None = None,
) -> Workflow:
    """:func:`load_workflow` on an already-parsed mapping (``source`` names it in messages).

    Args:
        base: The folder relative paths of the mapping are relative to (the workflow file's); None: the
            working directory.
    """
    where = f"workflow {source}"
    raw = copy.deepcopy(raw)
    raw.setdefault("name", Path(str(source)).name.removesuffix(".yaml").removesuffix(".yml"))
    for item in overrides:
        key, value = parse_override(item) if isinstance(item, str) else item  # a flag's value stays typed
        if base is not None:  # --set paths are the user's, relative to the working directory
            value = override_path(key, value)
        apply_override(raw, key, value, where)
    raw = substitute_static(raw, where)
    if base is not None:
        raw = rebase_paths(raw, base)
    try:
        wf = Workflow.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, raw, where)) from None
    check_references(wf, where)
    return _absolute_paths(wf)


def apply_override(raw: dict[str, Any], key: str, value: Any, where: str) -> None:
    """Set one ``--set`` key in the raw workflow.

    ``stages.<name>.<field>`` addresses a stage by name; everything after ``set.`` (top level or in a stage)
    is one dotted config key, e.g. ``stages.train.set.val.every=5`` or ``set.train.device=cpu``.
    """
    parts = key.split(".")
    node: Any = raw
    in_stage = False
    i = 0
    while i < len(parts) - 1:
        part = parts[i]
        if part == "set" and (node is raw or in_stage):
            section = node.get("set")
            if section is None:
                section = node["set"] = {}
            if not isinstance(section, dict):
                raise ConfigError(f"--set {key}: 'set' in {where} is not a mapping")
            section[".".join(parts[i + 1 :])] = value
            return
        if node is raw and part == "stages":
            stages = raw.get("stages") or []
            name = parts[i + 1]
            match = [s for s in stages if isinstance(s, dict) and s.get("name") == name]
            if not match:
                names = ", ".join(str(s.get("name")) for s in stages if isinstance(s, dict))
                raise ConfigError(f"--set {key}: {where} has no stage {name!r} (stages: {names})")
            node, in_stage = match[0], True
            i += 2
            continue
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key}: '{'.'.join(parts[: i + 1])}' is a value, not a section")
        node, in_stage = child, False
        i += 1
    node[parts[-1]] = value


# ------------------------------------------------------------------------------------------- paths, errors


def _absolute_paths(wf: Workflow) -> Workflow:
    wf.data = absolute(wf.data)
    wf.output = str(Path(wf.output).expanduser().resolve())
    for stage in wf.stages:
        if isinstance(stage, SplitStage | TrainStage | EvaluateStage):
            stage.data = absolute(stage.data)
        if isinstance(stage, TrainStage):
            stage.config = absolute(stage.config) or stage.config
            stage.splits = absolute(stage.splits)
            stage.init = absolute_if_file(stage.init)
        if isinstance(stage, EvaluateStage):
            stage.splits = absolute(stage.splits) or stage.splits
        if isinstance(stage, EvaluateStage | InferStage):
            stage.model = absolute_if_file(stage.model) or stage.model
        if isinstance(stage, InferStage):
            stage.input = [absolute(p) or p for p in stage.input]
    return wf


def _format_errors(err: ValidationError, raw: dict[str, Any], where: str) -> str:
    """Pydantic errors as one line per key, with stages named instead of numbered."""
    stages = raw.get("stages") if isinstance(raw.get("stages"), list) else []
    lines = []
    for e in err.errors():
        loc, stage, keys, i = list(e["loc"]), "", [], 0
        while i < len(loc):
            if loc[i] == "stages" and i + 1 < len(loc) and isinstance(loc[i + 1], int):
                index = loc[i + 1]
                entry = stages[index] if index < len(stages) else None
                name = entry.get("name") if isinstance(entry, dict) else None
                stage = f"stage {name!r}" if name else f"stages[{index}]"
                i += 2
                if i < len(loc) and loc[i] in OUTPUTS:  # the discriminator tag pydantic inserts
                    i += 1
                continue
            keys.append(str(loc[i]))
            i += 1
        prefix = f"{stage}: " if stage else ""
        if e["type"] == "extra_forbidden":
            lines.append(f"{prefix}unknown key '{'.'.join(keys)}'")
        elif e["type"] == "union_tag_invalid":
            lines.append(f"{prefix}unknown kind {e['input'].get('kind')!r} (kinds: {', '.join(OUTPUTS)})")
        elif e["type"] == "union_tag_not_found":
            lines.append(f"{prefix}missing 'kind' (one of {', '.join(OUTPUTS)})")
        else:
            given = e.get("input")
            shown = "" if isinstance(given, dict | list) or given is None else f" (got {given!r})"
            key = ".".join(keys) or "value"
            lines.append(f"{prefix}{key}: {e['msg'].removeprefix('Value error, ')}{shown}")
    return f"invalid {where}:\n  " + "\n  ".join(lines)
