"""Workflows: multi-stage pipelines (split, pretrain, train, finetune, evaluate, infer) from a YAML file,
run as one MLflow parent run with a nested child run per stage (``medcl run``).

:mod:`medcl.workflows.spec` holds the schema and the reference syntax, :mod:`medcl.workflows.runner` runs a
workflow and keeps its resumable state.
"""

from medcl.workflows.runner import WorkflowError, WorkflowRunner, run_workflow
from medcl.workflows.spec import OUTPUTS, Workflow, load_workflow

__all__ = ["OUTPUTS", "Workflow", "WorkflowError", "WorkflowRunner", "load_workflow", "run_workflow"]
