"""The fields of a dataset folder's ``dataset.json``: label map, channel names, file ending.

Both forms are read: MSD (``"labels"`` value -> name, ``"modality"`` for the channels) and nnU-Net v2
(``"labels"`` name -> value, ``"channel_names"``, ``"file_ending"``); see :mod:`medcl.data.dataset` for the
layouts. Every error is a :class:`~medcl.errors.DataError` naming the file and the key.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from medcl.data.discovery import IMAGE_EXTENSIONS
from medcl.errors import DataError

__all__ = ["parse_channel_names", "parse_file_ending", "parse_labels", "read_dataset_json"]


def read_dataset_json(json_path: Path) -> dict[str, Any]:
    """The JSON object of a ``dataset.json``.

    Raises:
        DataError: The file is missing, unreadable, not JSON (with the position) or not a JSON object.
    """
    if not json_path.is_file():
        raise DataError(
            f"Dataset folder {json_path.parent} has no dataset.json; medcl expects the MSD or nnU-Net v2 "
            "layout (dataset.json, imagesTr/, labelsTr/)."
        )
    try:
        text = json_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"Cannot read {json_path}: {err}.") from err
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(
            f"{json_path} is not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}."
        ) from err
    if not isinstance(data, dict):
        raise DataError(f"{json_path} must hold a JSON object, not a {type(data).__name__}.")
    return data


def _is_int_text(value: Any) -> bool:
    return isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value) is not None


def parse_labels(data: dict[str, Any], json_path: Path) -> dict[int, str]:
    """Label map as value -> name from either the MSD (value -> name) or nnU-Net (name -> value) form."""
    raw = data.get("labels")
    if raw is None:
        raise DataError(f"{json_path} has no 'labels' map (label value -> class name).")
    if not isinstance(raw, dict) or not raw:
        raise DataError(f"'labels' in {json_path} must be a non-empty object, got {raw!r}.")
    if all(_is_int_text(k) and isinstance(v, str) for k, v in raw.items()):  # MSD
        labels = {int(k): v for k, v in raw.items()}
        names = list(labels.values())
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise DataError(
                f"'labels' in {json_path} gives the name {duplicates[0]!r} to more than one value."
            )
    elif all(isinstance(v, int) and not isinstance(v, bool) for v in raw.values()):  # nnU-Net v2
        labels = {}
        for name, value in raw.items():
            if value in labels:
                raise DataError(
                    f"'labels' in {json_path} gives the value {value} to both {labels[value]!r} and {name!r}."
                )
            labels[value] = name
    elif any(isinstance(v, list) for v in raw.values()):
        raise DataError(
            f"'labels' in {json_path} uses nnU-Net region lists; medcl supports one integer per class only."
        )
    else:
        raise DataError(
            f'\'labels\' in {json_path} must map values to names (MSD: {{"0": "background"}}) or names to '
            f'integer values (nnU-Net v2: {{"background": 0}}), got {raw!r}.'
        )
    values = sorted(labels)
    if values != list(range(len(values))):
        raise DataError(
            f"Label values in {json_path} must be consecutive integers 0, 1, ..., n-1 with 0 the background; "
            f"got {values}."
        )
    return labels


def parse_channel_names(data: dict[str, Any], json_path: Path) -> dict[int, str] | None:
    """Channel index -> name from ``"channel_names"`` (nnU-Net) or ``"modality"`` (MSD); None when neither."""
    key = "channel_names" if "channel_names" in data else "modality"
    raw = data.get(key)
    if raw is None:
        return None
    if not isinstance(raw, dict) or not raw or not all(_is_int_text(k) for k in raw):
        raise DataError(
            f'{key!r} in {json_path} must map channel indices to names, like {{"0": "MRI"}}; got {raw!r}.'
        )
    channels = {int(k): str(v) for k, v in raw.items()}
    indices = sorted(channels)
    if indices != list(range(len(indices))):
        raise DataError(f"Channel indices of {key!r} in {json_path} must be 0, 1, ..., n-1; got {indices}.")
    return channels


def parse_file_ending(data: dict[str, Any], json_path: Path) -> tuple[str, ...]:
    """The image extensions to look for: nnU-Net's ``"file_ending"``, else every extension medcl reads."""
    ending = data.get("file_ending")
    if ending is None:
        return IMAGE_EXTENSIONS
    if not isinstance(ending, str) or ending.lower() not in IMAGE_EXTENSIONS:
        raise DataError(
            f"'file_ending' {ending!r} in {json_path} is not supported; medcl reads "
            f"{', '.join(IMAGE_EXTENSIONS)}."
        )
    return (ending.lower(),)
