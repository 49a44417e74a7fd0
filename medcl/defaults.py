"""Defaults shared by the config schema and the command line; this module imports nothing, so that building
the CLI's parsers (``medcl --help``) stays free of pydantic and torch."""

#: The runs folder (run folders, the MLflow store ``mlflow.db`` and its artifacts) when none is given.
DEFAULT_RUNS = "medcl_runs"
