"""The workflow file: schema, ``--set`` overrides, variables and references between stages.

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

References (``${...}``) in string values:

* ``${vars.NAME}``: a value of the top-level ``vars`` mapping; ``${data}``: the top-level ``data`` folder.
  Both are substituted when the file is loaded (after ``--set``), so ``steps: ${vars.steps}`` is an integer.
* ``${stages.STAGE.KEY}``: an output of an *earlier* stage (:data:`OUTPUTS` lists the keys of each kind),
  substituted when the stage starts.

A string that is exactly one reference takes the referenced value (any type); a reference inside a longer
string is formatted as text. ``$${`` writes a literal ``${``. Unknown names, forward references and unknown
output keys are :class:`~medcl.errors.ConfigError` s naming the workflow file, the stage and the key.

Relative paths written in the file (``data``, stage ``config``, ``data``, ``splits``, ``input``, and
``init`` / ``model`` when they are files, also when they come through ``${vars.X}``) are relative to the
workflow file, so a workflow runs the same from any folder; a stage ``config`` may also be the name of a
shipped config (``hippocampus/demo``, see ``medcl config list``). ``output`` (``--runs``) and paths given
with ``--set`` are relative to the working directory, like every medcl flag. A path that exists only
relative to the working directory (the rule before) is still taken, with a note. Everything is made absolute
on loading, so the state file of a run holds absolute paths and ``--resume`` works from anywhere.
"""

from __future__ import annotations

import copy
import os
import re
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from medcl.config import NAME_PATTERN, parse_override
from medcl.errors import ConfigError

StageKind = Literal["split", "pretrain", "train", "finetune", "evaluate", "infer"]
TRAINING_KINDS = ("pretrain", "train", "finetune")

#: Output keys each stage kind provides to later stages (``${stages.<name>.<key>}``).
OUTPUTS: dict[str, tuple[str, ...]] = {
    "split": ("run_id", "splits"),
    "pretrain": ("run_id", "run_dir", "checkpoint", "model", "dice"),
    "train": ("run_id", "run_dir", "checkpoint", "model", "dice"),
    "finetune": ("run_id", "run_dir", "checkpoint", "model", "dice"),
    "evaluate": ("run_id", "summary", "dice"),
    "infer": ("run_id", "masks"),
}

_REF = re.compile(r"\$\{([^}]*)\}")
_ESCAPED = "$${"
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


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
    output: str = Field("medcl_runs", description="Runs, MLflow store and workflow state (--output).")
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


def load_workflow(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Workflow:
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
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"workflow file {path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(
            f"workflow file {path} must hold a mapping (name, stages, ...), got {type(raw).__name__}"
        )
    return build_workflow(raw, overrides, source=path, base=path.resolve().parent)


def build_workflow(
    raw: dict[str, Any],
    overrides: list[str] | tuple[str, ...] = (),
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
        key, value = parse_override(item)
        if base is not None:  # --set paths are the user's, relative to the working directory
            value = _override_path(key, value)
        apply_override(raw, key, value, where)
    raw = _substitute_static(raw, where)
    if base is not None:
        raw = _rebase_paths(raw, base)
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


# ------------------------------------------------------------------------------------------- references


def references(value: Any) -> list[str]:
    """Every ``${...}`` expression inside a (nested) value, escaped ``$${`` excluded."""
    if isinstance(value, str):
        return [m.group(1) for m in _REF.finditer(value.replace(_ESCAPED, "\0"))]
    if isinstance(value, dict):
        return [r for v in value.values() for r in references(v)]
    if isinstance(value, list | tuple):
        return [r for v in value for r in references(v)]
    return []


def substitute(value: Any, lookup: Any) -> Any:
    """Replace references in a (nested) value with ``lookup(expression)``; see the module docstring."""
    if isinstance(value, dict):
        return {k: substitute(v, lookup) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, lookup) for v in value]
    if not isinstance(value, str) or "${" not in value:
        return value
    text = value.replace(_ESCAPED, "\0")
    whole = _REF.fullmatch(text)
    if whole:
        return lookup(whole.group(1))
    out = _REF.sub(lambda m: str(lookup(m.group(1))), text)
    return out.replace("\0", "${")


def _substitute_static(raw: dict[str, Any], where: str) -> dict[str, Any]:
    """``${vars.X}`` and ``${data}`` everywhere except in ``vars`` and ``data`` themselves."""
    variables = raw.get("vars") or {}
    if not isinstance(variables, dict):
        raise ConfigError(f"{where}: 'vars' must be a mapping of names to values")
    for key in ("vars", "data", "name", "output", "tracking_uri", "experiment"):
        if references(raw.get(key)):
            raise ConfigError(f"{where}: '{key}' cannot use ${{...}} references")

    def lookup(expr: str) -> Any:
        expr = expr.strip()
        if expr == "data":
            if raw.get("data") is None:
                raise ConfigError(
                    f"{where} uses ${{data}} but sets no data (add data: DIR or --set data=DIR)"
                )
            return raw["data"]
        if expr.startswith("vars."):
            name = expr.removeprefix("vars.")
            if name not in variables:
                known = ", ".join(sorted(variables)) or "none"
                raise ConfigError(f"{where}: unknown variable ${{vars.{name}}} (vars: {known})")
            return variables[name]
        return "${" + expr + "}"  # stage references stay for run time

    return {k: (v if k in ("vars", "data") else substitute(v, lookup)) for k, v in raw.items()}


def check_references(wf: Workflow, where: str) -> None:
    """Stage names are unique; every ``${stages.S.K}`` names an earlier stage S and an output K of its kind."""
    seen: dict[str, str] = {}
    order = {s.name: i for i, s in enumerate(wf.stages)}
    for stage in wf.stages:
        if stage.name in seen:
            raise ConfigError(f"{where}: two stages are named {stage.name!r}; stage names must be unique")
        for field_name, value in stage.model_dump(exclude={"name", "kind"}).items():
            for expr in references(value):
                _check_reference(expr, stage.name, field_name, seen, order, where)
        seen[stage.name] = stage.kind
    if wf.register_ is not None:
        for name in wf.register_.candidates:
            if name not in seen:
                raise ConfigError(
                    f"{where}: register.from names unknown stage {name!r} (stages: {', '.join(seen)})"
                )
            if seen[name] not in TRAINING_KINDS:
                raise ConfigError(
                    f"{where}: register.from {name!r} is a {seen[name]} stage; only pretrain/train/finetune "
                    "stages produce a model to register"
                )


def _check_reference(
    expr: str, stage: str, field_name: str, seen: dict[str, str], order: dict[str, int], where: str
) -> None:
    at = f"{where}, stage {stage!r}, key {field_name!r}"
    parts = expr.strip().split(".")
    if parts[0] != "stages":
        raise ConfigError(
            f"{at}: unknown reference ${{{expr}}} (use ${{vars.NAME}}, ${{data}} or ${{stages.STAGE.KEY}})"
        )
    if len(parts) != 3:
        raise ConfigError(f"{at}: reference ${{{expr}}} must have the form ${{stages.STAGE.KEY}}")
    _, name, key = parts
    if name not in seen:
        if name == stage:
            raise ConfigError(f"{at}: ${{{expr}}} refers to the stage itself; refer to an earlier stage")
        if name in order:
            raise ConfigError(
                f"{at}: ${{{expr}}} is a forward reference: stage {name!r} runs after {stage!r}; "
                "a stage can only use outputs of stages listed before it"
            )
        known = ", ".join(seen) or "none before it"
        raise ConfigError(f"{at}: ${{{expr}}} names unknown stage {name!r} (earlier stages: {known})")
    allowed = OUTPUTS[seen[name]]
    if key not in allowed:
        raise ConfigError(
            f"{at}: ${{{expr}}}: a {seen[name]} stage has no output {key!r} (outputs: {', '.join(allowed)})"
        )


def resolve_stage(
    stage: SplitStage | TrainStage | EvaluateStage | InferStage,
    outputs: dict[str, dict[str, Any]],
    where: str,
) -> Any:
    """A copy of ``stage`` with its ``${stages.S.K}`` references replaced by the outputs of finished stages.

    Raises:
        ConfigError: A referenced output is empty (e.g. ``model`` of a stage that logged no MLflow model).
    """

    def lookup(expr: str) -> Any:
        _, name, key = expr.strip().split(".")
        value = outputs.get(name, {}).get(key)
        if value is None:
            hint = " (the stage logged no MLflow model; use .checkpoint)" if key == "model" else ""
            raise ConfigError(f"{where}, stage {stage.name!r}: ${{{expr}}} is empty{hint}")
        return value

    data = substitute(stage.model_dump(by_alias=True), lookup)
    try:
        return type(stage).model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"{where}, stage {stage.name!r}: after substituting references: {err}") from None


# ---------------------------------------------------------------------------------------- paths, errors


def _abs(value: str | None) -> str | None:
    if value is None or "${" in value:
        return value
    return str(Path(value).expanduser().resolve())


def _abs_if_file(value: str | None) -> str | None:
    """Make ``init`` / ``model`` absolute only when they are paths (not run ids or MLflow URIs)."""
    if value is None or "${" in value or ":/" in value or _RUN_ID.match(value):
        return value
    return _abs(value)


_PATH_KEYS = ("config", "data", "splits", "input", "init", "model")
_noted_cwd: set[str] = set()


def _is_path(value: Any) -> bool:
    """A relative path to rebase (not a reference, URI, run id, absolute or home path)."""
    if not isinstance(value, str) or not value or "${" in value or ":/" in value or _RUN_ID.match(value):
        return False
    return not (value.startswith("~") or Path(value).is_absolute())


def _relative_to(value: Any, base: Path, key: str) -> Any:
    """``value`` (a path, or a list of paths for ``input``) relative to ``base``, see the module docstring."""
    if isinstance(value, list):
        return [_relative_to(v, base, key) for v in value]
    if not _is_path(value):
        return value
    here = base / value
    if here.exists():
        return str(here)
    if Path(value).exists():  # written relative to the working directory, as before
        if value not in _noted_cwd:
            _noted_cwd.add(value)
            print(
                f"medcl: note: workflow path {value!r} is taken relative to the working directory; paths in a "
                f"workflow file are relative to the file ({base}), write {os.path.relpath(Path(value).resolve(), base)!r}",
                file=sys.stderr,
            )
        return str(Path(value).resolve())
    if key == "config":
        from medcl.shipped import shipped_dir

        shipped = shipped_dir("configs") / f"{value.removeprefix('configs/').removesuffix('.yaml')}.yaml"
        if shipped.is_file():  # a shipped config by name
            return str(shipped)
    return str(here)


def _rebase_paths(raw: dict[str, Any], base: Path) -> dict[str, Any]:
    """Relative paths written in a workflow file, made relative to the file's folder ``base``."""
    if "data" in raw:
        raw["data"] = _relative_to(raw["data"], base, "data")
    for stage in raw.get("stages") or []:
        if isinstance(stage, dict):
            for key in _PATH_KEYS:
                if key in stage:
                    stage[key] = _relative_to(stage[key], base, key)
    return raw


def _override_path(key: str, value: Any) -> Any:
    """A ``--set`` path value made absolute against the working directory (vars only when the path exists)."""
    parts = key.split(".")
    is_path = key == "data" or (parts[0] == "stages" and len(parts) == 3 and parts[2] in _PATH_KEYS)
    if parts[0] == "vars" and isinstance(value, str) and _is_path(value) and Path(value).exists():
        is_path = True
    if not is_path:
        return value
    if isinstance(value, list):
        return [str(Path(v).resolve()) if _is_path(v) else v for v in value]
    return str(Path(value).resolve()) if _is_path(value) else value


def _absolute_paths(wf: Workflow) -> Workflow:
    wf.data = _abs(wf.data)
    wf.output = str(Path(wf.output).expanduser().resolve())
    for stage in wf.stages:
        if isinstance(stage, SplitStage | TrainStage | EvaluateStage):
            stage.data = _abs(stage.data)
        if isinstance(stage, TrainStage):
            stage.config = _abs(stage.config) or stage.config
            stage.splits = _abs(stage.splits)
            stage.init = _abs_if_file(stage.init)
        if isinstance(stage, EvaluateStage):
            stage.splits = _abs(stage.splits) or stage.splits
        if isinstance(stage, EvaluateStage | InferStage):
            stage.model = _abs_if_file(stage.model) or stage.model
        if isinstance(stage, InferStage):
            stage.input = [_abs(p) or p for p in stage.input]
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
