"""The ``medcl`` command line: ``data check|split``, ``train``, ``infer``, ``export``, ``evaluate``, ``suggest``,
``run``, ``ui``.

Errors caused by input (files, config keys) print one readable message and exit 1; ``--debug`` shows the
traceback. Nothing here is imported by the library below it.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

from medcl import __version__
from medcl.errors import MedclError


def build_parser() -> argparse.ArgumentParser:
    from medcl.commands import config, data, evaluate, export, infer, run, suggest, train, ui

    parser = argparse.ArgumentParser(
        prog="medcl",
        description="Semi-supervised medical image segmentation with contrastive learning (MONAI + MLflow).",
    )
    parser.add_argument("--version", action="version", version=f"medcl {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in (data, train, infer, evaluate, export, suggest, run, ui, config):
        module.add_parser(sub)
    return parser


def _sigterm_to_interrupt(signum, frame):  # torchrun and job schedulers stop runs with SIGTERM
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    # --debug is accepted anywhere on the line, not only before the command.
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    for noisy in ("alembic", "mlflow", "urllib3", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    signal.signal(signal.SIGTERM, _sigterm_to_interrupt)
    if getattr(args, "no_progress", False):  # MLflow's own artifact download/upload bars too
        os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    try:
        return int(args.func(args) or 0)
    except MedclError as exc:
        if debug:
            raise
        print(f"medcl: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("medcl: interrupted; a training run continues with --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
