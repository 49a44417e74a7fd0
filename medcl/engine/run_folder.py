"""A run's folder (``<output>/runs/<name>``, claimed atomically) and its MLflow run."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from medcl.config import Config, flatten
from medcl.data.dataset import DatasetInfo
from medcl.data.splits import Splits
from medcl.engine.data_setup import dataset_inputs
from medcl.errors import MedclError
from medcl.methods import DataSpec
from medcl.runtime import distributed as dist
from medcl.tracking.lineage import code_tags
from medcl.tracking.mlflow_tracking import MlflowTracker, NullTracker, resolve_store


def claim_run_dir(runs: Path, name: str, *, explicit: bool) -> Path:
    """Create ``<runs>/<name>/checkpoints`` atomically and return the run folder: one folder, one run.

    The ``checkpoints`` folder is made with an exclusive ``mkdir``, so of two runs started at once with the
    same name exactly one gets it. An explicit ``tracking.run_name`` that is taken is an error; a default
    (timestamped) name that collides gets a ``-2``, ``-3``, ... suffix.

    Raises:
        MedclError: ``explicit`` and the folder already belongs to a run.
    """
    for attempt in range(1, 1000):
        run_dir = runs / (name if attempt == 1 else f"{name}-{attempt}")
        try:
            (run_dir / "checkpoints").mkdir(parents=True)
            return run_dir
        except FileExistsError:
            if explicit:
                raise MedclError(
                    f"run folder {run_dir} already has checkpoints (another run uses it); continue it with "
                    f"--resume {run_dir} or choose another tracking.run_name"
                ) from None
    raise MedclError(f"no free run folder name under {runs} for {name}")


def new_run_name(cfg: Config, info: DatasetInfo) -> str:
    if cfg.tracking.run_name:
        return cfg.tracking.run_name
    # The dataset's own name may hold anything ('/', '..'): only letters, digits, '_' and '-' reach the path.
    dataset = re.sub(r"[^A-Za-z0-9_-]+", "_", info.name).strip("_") or "data"
    return f"{cfg.method_name}-{dataset}-{time.strftime('%Y%m%d-%H%M%S')}"


def start_tracking(
    cfg: Config,
    run_dir: Path,
    info: DatasetInfo,
    splits: Splits,
    method: Any,
    spec: DataSpec,
    *,
    resume_state: dict[str, Any] | None,
    init_run: str | None,
    tags: dict[str, str] | None,
) -> Any:
    """The run's MLflow tracker, started (a resumed run continues its MLflow run); a new run logs its params,
    resolved config, splits and dataset inputs. A :class:`NullTracker` when tracking is off."""
    if not cfg.tracking.enabled:
        return NullTracker()
    uri, artifact_root = resolve_store(cfg.tracking.uri, cfg.output)
    print(f"MLflow tracking store: {uri}")
    tracker = MlflowTracker(uri, artifact_root, cfg.tracking.experiment)
    tracker.start(
        run_name=run_dir.name,
        run_id=(resume_state or {}).get("mlflow_run_id"),
        tags={
            "medcl.method": cfg.method_name,
            "medcl.dataset": info.name,
            **({"medcl.init_from": init_run or cfg.init} if cfg.init else {}),
            **code_tags(),  # medcl version and git commit
            **(tags or {}),
        },
        system_metrics=cfg.tracking.system_metrics,
    )
    if resume_state is None:
        params = flatten(cfg.model_dump(mode="json"))
        params.update(
            {
                "data.dataset": info.name,
                "data.n_labeled": len(splits.labeled),
                "data.n_unlabeled": len(splits.unlabeled),
                "data.n_val": len(splits.val),
                "data.world_size": dist.world_size(),
                "data.modality_resolved": spec.modality,  # what fine-tuning and inference must match
                "init_from": (init_run or cfg.init) if cfg.init else "",
            }
        )
        tracker.log_params(params)
        tracker.log_dict(cfg.model_dump(mode="json"), "config/resolved_config.json")
        tracker.log_dict(splits.to_dict(), "config/splits.json")
        tracker.log_datasets(info.name, info.root, dataset_inputs(info, splits, method))
    return tracker
