"""``medcl ui``: the MLflow UI over the same store the runs used, on 127.0.0.1 by default."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from medcl.tracking.mlflow_tracking import resolve_store


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("ui", help="open the MLflow UI over medcl's tracking store")
    p.add_argument(
        "--output", default="medcl_runs", help="the --output folder the runs used (default medcl_runs)"
    )
    p.add_argument("--tracking-uri", help="tracking store URI instead of <output>/mlflow.db")
    p.add_argument(
        "--host", default="127.0.0.1", help="interface to bind; keep 127.0.0.1 unless you need remote access"
    )
    p.add_argument("--port", type=int, default=5000, help="port (default 5000)")
    p.set_defaults(func=run)


def ui_command(uri: str, artifact_root: str | None, host: str, port: int) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        uri,
        "--host",
        host,
        "--port",
        str(port),
    ]
    if artifact_root:
        cmd += ["--default-artifact-root", artifact_root]
    return cmd


def run(args: argparse.Namespace) -> int:
    uri, artifact_root = resolve_store(args.tracking_uri, args.output)
    print(f"MLflow UI for {uri} at http://{args.host}:{args.port} (Ctrl-C to stop)", flush=True)
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    try:
        return subprocess.call(ui_command(uri, artifact_root, args.host, args.port), env=env)
    except KeyboardInterrupt:
        return 0
