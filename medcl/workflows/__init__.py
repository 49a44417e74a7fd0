"""Workflows: multi-stage pipelines (split, pretrain, train, finetune, evaluate, infer) from a YAML file,
run as one MLflow parent run with a nested child run per stage (``medcl run``).

:mod:`~medcl.workflows.spec` holds the schema and loads a file, with :mod:`~medcl.workflows.references`
(``${...}`` syntax and checks) and :mod:`~medcl.workflows.paths` (relative paths); :mod:`~medcl.workflows.runner`
runs a workflow, keeping its resumable state (:mod:`~medcl.workflows.state`); what each stage kind does is in
:mod:`~medcl.workflows.stages`, which calls :mod:`medcl.services`.
"""

from medcl.workflows.runner import WorkflowError, WorkflowRunner, run_workflow
from medcl.workflows.spec import OUTPUTS, Workflow, load_workflow

__all__ = ["OUTPUTS", "Workflow", "WorkflowError", "WorkflowRunner", "load_workflow", "run_workflow"]
