"""What a command or a workflow stage does, with no argparse: load a config, split, train, evaluate, segment.

Commands (``medcl/commands``) and the workflow runner (``medcl/workflows``) both call these; a service never
imports a command, a workflow or the CLI.
"""
