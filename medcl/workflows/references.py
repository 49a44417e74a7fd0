"""References between the parts of a workflow file: ``${vars.NAME}``, ``${data}`` and ``${stages.STAGE.KEY}``.

References (``${...}``) in string values:

* ``${vars.NAME}``: a value of the top-level ``vars`` mapping; ``${data}``: the top-level ``data`` folder.
  Both are substituted when the file is loaded (after ``--set``), so ``steps: ${vars.steps}`` is an integer
  (:func:`substitute_static`).
* ``${stages.STAGE.KEY}``: an output of an *earlier* stage (:data:`OUTPUTS` lists the keys of each kind),
  checked when the file is loaded (:func:`check_references`) and substituted when the stage starts
  (:func:`resolve_stage`).

A string that is exactly one reference takes the referenced value (any type); a reference inside a longer
string is formatted as text. ``$${`` writes a literal ``${``. Unknown names, forward references and unknown
output keys are :class:`~medcl.errors.ConfigError` s naming the workflow file, the stage and the key.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from medcl.errors import ConfigError

if TYPE_CHECKING:
    from medcl.workflows.spec import EvaluateStage, InferStage, SplitStage, TrainStage, Workflow

    AnyStage = SplitStage | TrainStage | EvaluateStage | InferStage

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


def substitute_static(raw: dict[str, Any], where: str) -> dict[str, Any]:
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
    stage: AnyStage,
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
