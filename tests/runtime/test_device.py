"""The compute device from a config or flag value: ``auto``, ``cpu``, ``cuda``."""

from __future__ import annotations

import pytest
import torch

from medcl.errors import MedclError
from medcl.runtime.device import resolve_device


def test_cuda_without_a_gpu_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(MedclError) as err:
        resolve_device("cuda")
    message = str(err.value)
    assert "'cuda'" in message and "no CUDA device is available" in message
    assert "use 'cpu' or 'auto'" in message


def test_auto_picks_cuda_only_when_present(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda") == torch.device("cuda")


def test_cpu_is_always_cpu() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
