"""The MLflow model medcl logs: a ``python_function`` that segments what a user has.

``mlflow.pyfunc.load_model(uri).predict(x)`` runs the whole of ``medcl infer`` on ``x`` -- the training's
preprocessing, the sliding window, optional flip TTA, inversion to the input grid, optional largest-component
post-processing -- through :class:`medcl.inference.predictor.Predictor`, and returns uint8 label maps on the
input's own voxel grid. ``x`` may be:

* a path (``str``/``Path``) to a NIfTI, NRRD, MetaImage file or a DICOM folder -> one ``(X, Y, Z)`` mask;
* a dict ``{"path": p}`` (``p`` a list of files for a multi-channel model) or ``{"image": array,
  "affine": 4x4, "spacing": [sx, sy, sz]}`` (affine and spacing optional; nibabel's ``(x, y, z)`` indexing
  and RAS affine) -> one mask;
* a list of paths or dicts, or a pandas DataFrame with a ``path`` column or ``image``/``affine``/``spacing``
  columns (what ``mlflow models serve`` makes of ``dataframe_records``) -> a list of masks.

Parameters (``predict(x, params={...})``, or ``"params"`` in a serving request): ``tta`` (bool, default
false) and ``postprocess`` (``"none"`` or ``"lcc"``). ``model_config`` at load time (``device``: auto|cpu|cuda,
``precision``: auto|fp32|bf16|fp16, ``sw_batch_size``) picks where and how the network runs.

The model is logged "from code" (:mod:`medcl.inference.pyfunc_entry`): nothing is pickled. medcl's own
source travels in the model's ``code/`` folder (MLflow ``code_paths``), its dependencies are pinned in
``requirements.txt``, and the weights are the medcl inference checkpoint ``artifacts/model.pt``, loaded with
``torch.load(weights_only=True)``. The bare network is a second artifact, ``artifacts/network.ts``
(TorchScript, any spatial size), for those who want only the logits.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np

from medcl.errors import MedclError

#: The file MLflow runs to build the model at load time ("models from code").
ENTRY_SCRIPT = Path(__file__).with_name("pyfunc_entry.py")

#: Inference parameters and their defaults (the signature's params schema).
PARAMS: dict[str, Any] = {"tta": False, "postprocess": "none"}

#: ``model_config`` keys read at load time and their defaults (``load_model(uri, model_config={...})``).
MODEL_CONFIG: dict[str, Any] = {"device": "auto", "precision": "auto", "sw_batch_size": None}

#: Dependencies never needed to segment (MLflow adds its own pin to the requirements).
_NOT_FOR_INFERENCE = {"mlflow", "psutil", "tqdm"}


def signature():
    """A params-only signature: the inputs are too varied (paths, arrays, tables) for an MLflow schema."""
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import ParamSchema, ParamSpec

    return ModelSignature(
        inputs=None,
        params=ParamSchema(
            [
                ParamSpec("tta", "boolean", PARAMS["tta"]),
                ParamSpec("postprocess", "string", PARAMS["postprocess"]),
            ]
        ),
    )


def requirements() -> list[str]:
    """medcl's runtime dependencies pinned to the installed versions (``+cpu``-style local labels dropped).

    Read from medcl's own package metadata, so the list follows ``pyproject.toml``; given explicitly because
    MLflow's requirement inference takes seconds.
    """
    pins = []
    try:
        declared = importlib.metadata.requires("medcl") or []
    except importlib.metadata.PackageNotFoundError:  # running from a bare checkout
        declared = ["torch", "monai", "einops", "nibabel", "SimpleITK", "scikit-image", "pydantic", "pyyaml"]
        declared += ["numpy", "scipy"]
    for spec in declared:
        if "extra ==" in spec:
            continue
        name = re.split(r"[\s<>=!~;\[]", spec, maxsplit=1)[0]
        if name.lower() in _NOT_FOR_INFERENCE:
            continue
        try:
            pins.append(f"{name}=={importlib.metadata.version(name).split('+')[0]}")
        except importlib.metadata.PackageNotFoundError:
            pins.append(name)
    return pins


@contextmanager
def staged_code() -> Iterator[str]:
    """A clean copy of the ``medcl`` package (no ``__pycache__``) for ``code_paths``; removed afterwards."""
    package = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory(prefix="medcl-code-") as tmp:
        target = Path(tmp) / "medcl"
        shutil.copytree(package, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        yield str(target)


class SegmentationModel(mlflow.pyfunc.PythonModel):
    """medcl inference as an MLflow ``python_function`` (see the module docstring for inputs and outputs)."""

    # No type hints on predict, so nothing for MLflow to validate against: its inputs are too varied for them.
    # This attribute (MLflow's own, for ChatModel) skips the wrapping that would only warn about it.
    _skip_type_hint_validation = True

    def load_context(self, context) -> None:
        from medcl.inference.predictor import Predictor

        config = {**MODEL_CONFIG, **(context.model_config or {})}
        self.predictor = Predictor.load(
            context.artifacts["checkpoint"],
            device=str(config["device"]),
            precision=str(config["precision"]),
        )
        if config["sw_batch_size"]:
            self.predictor.sw_batch_size = int(config["sw_batch_size"])

    def predict(self, context, model_input, params: dict[str, Any] | None = None):
        """uint8 masks on the input grids: one array for one input, a list for a list or table."""
        options = {**PARAMS, **(params or {})}
        postprocess = str(options["postprocess"] or "none").lower()
        if postprocess not in ("none", "lcc"):
            raise MedclError(f"postprocess must be 'none' or 'lcc', got {options['postprocess']!r}")
        cases, single = _cases(model_input)
        masks = [self._segment(case, tta=_flag(options["tta"]), lcc=postprocess == "lcc") for case in cases]
        return masks[0] if single else masks

    def _segment(self, case: dict[str, Any], *, tta: bool, lcc: bool) -> np.ndarray:
        kwargs = {"tta": tta, "postprocess": "lcc" if lcc else None}
        if case.get("path") is not None:
            paths = case["path"]
            paths = [paths] if isinstance(paths, str | os.PathLike) else list(paths)
            return self.predictor.segment([str(p) for p in paths], **kwargs).labels
        if case.get("image") is None:
            raise MedclError(f"each input needs a 'path' or an 'image'; got keys {sorted(case)}")
        affine = case.get("affine")
        spacing = case.get("spacing")
        return self.predictor.segment_array(
            np.asarray(case["image"], dtype=np.float32),
            None if affine is None else np.asarray(affine, dtype=np.float64).reshape(4, 4),
            spacing=None if spacing is None else [float(s) for s in np.asarray(spacing).ravel()],
            **kwargs,
        ).labels


def _flag(value: Any) -> bool:
    """A boolean parameter, also when a client sends it as text."""
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def _plain(value: Any) -> Any:
    """Numpy scalars and 0-d arrays (how the scoring server hands over JSON strings) as Python values."""
    if isinstance(value, np.ndarray) and value.dtype.kind in "OUS":
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _cases(model_input: Any) -> tuple[list[dict[str, Any]], bool]:
    """Normalise every accepted input to a list of ``{"path"}`` / ``{"image", "affine", "spacing"}`` dicts.

    Returns:
        The cases and whether the input was a single case (answered with one mask, not a list).
    """
    import pandas as pd

    value = _plain(model_input)
    if isinstance(value, str | os.PathLike):
        return [{"path": str(value)}], True
    if isinstance(value, pd.DataFrame):
        if not {"path", "image"} & set(value.columns):
            raise MedclError(f"the table needs a 'path' or an 'image' column; got {list(value.columns)}")
        rows = value.to_dict(orient="records")
        return [{k: _plain(v) for k, v in row.items()} for row in rows], False
    if isinstance(value, dict):
        # One case; a list under "path" holds the channel files of that case.
        return [{k: _plain(v) for k, v in value.items()}], True
    if isinstance(value, np.ndarray) and value.dtype.kind in "fiub":
        return [{"image": value}], True
    if isinstance(value, list | tuple):
        cases = []
        for item in value:
            item = _plain(item)
            if isinstance(item, str | os.PathLike):
                cases.append({"path": str(item)})
            elif isinstance(item, dict):
                cases.append({k: _plain(v) for k, v in item.items()})
            else:
                raise MedclError(f"a list input holds paths or dicts; got {type(item).__name__}")
        return cases, False
    raise MedclError(
        f"cannot segment a {type(model_input).__name__}: give a path, a list of paths, a dict with 'path' "
        "or 'image' (+ 'affine'/'spacing'), or a table with such columns"
    )


def log_segmentation_model(
    checkpoint: str | Path, network: str | Path | None = None, *, name: str = "model"
) -> Any:
    """Log the pyfunc model of an inference checkpoint (``model.pt``) in the active MLflow run.

    Args:
        checkpoint: The slim medcl checkpoint (config, classes, weights).
        network: A TorchScript file of the bare network, logged beside it as ``network``.
        name: The logged model's name.

    Returns:
        MLflow's ``ModelInfo``.
    """
    artifacts = {"checkpoint": str(checkpoint)}
    if network is not None:
        artifacts["network"] = str(network)
    with staged_code() as code, warnings.catch_warnings():
        # MLflow suggests predict type hints and an input example; neither fits inputs this varied (and an
        # example would run a prediction at the end of every training).
        warnings.filterwarnings("ignore", message=".*(type hints|input example).*", category=UserWarning)
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=str(ENTRY_SCRIPT),
            artifacts=artifacts,
            code_paths=[code],
            pip_requirements=requirements(),
            signature=signature(),
            model_config=dict(MODEL_CONFIG),
        )
