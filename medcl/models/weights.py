"""Pretrained weights copied into a network by name and shape (MCSC's ``method.<network>.weights``)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from medcl.errors import ConfigError


def load_matching_weights(net: nn.Module, path: str) -> tuple[int, int]:
    """Copy every tensor of ``path`` whose name (up to a prefix) and shape match a parameter of ``net``.

    The file is read with ``torch.load(weights_only=True)``; a ``state_dict``/``model``/``network`` entry is
    unwrapped, and ``module.`` / ``net.`` prefixes are dropped. A source name matches a target name equal to
    it or ending in ``.<name>`` (so MONAI's ``swinViT.*`` keys accept a bare Swin encoder's weights).

    Returns:
        (tensors copied, tensors in the target).

    Raises:
        ConfigError: When the file is missing or unreadable, or when no tensor matches.
    """
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"pretrained weights file not found: {file}")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConfigError(
            f"cannot read pretrained weights {file} with torch.load(weights_only=True): {exc}"
        ) from None
    for key in ("state_dict", "model", "network"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ConfigError(f"pretrained weights {file} hold a {type(state).__name__}, not a dict of tensors")
    source = {}
    for name, value in state.items():
        if torch.is_tensor(value):
            for prefix in ("module.", "net."):
                name = name.removeprefix(prefix)
            source[name] = value
    own = net.state_dict()
    matched = {}
    for target, tensor in own.items():
        for name, value in source.items():
            if (target == name or target.endswith("." + name)) and value.shape == tensor.shape:
                matched[target] = value
                break
    if not matched:
        raise ConfigError(
            f"no tensor of {file} matches the network by name and shape ({len(source)} tensors read)"
        )
    net.load_state_dict(matched, strict=False)
    return len(matched), len(own)
