"""Shared fixtures of the ACTION/ACTION++ tests: real ACDC slices (64x64) and small networks."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from medcl.data.dataset import load_dataset
from medcl.data.sampling import preprocess_volumes
from medcl.data.transforms import volume_transforms
from medcl.engine.data_setup import data_spec
from medcl.methods import DataSpec, build_method
from medcl.services.configs import build_config

SMALL = [
    "data.patch_size=[64, 64]",
    "data.orientation=null",
    "data.batch_size=2",
    "data.unlabeled_batch_size=2",
    "model.features=[8, 8, 16, 32, 64, 8]",
]


@pytest.fixture(scope="session")
def acdc_volumes(shared_data: Path):
    """Two labeled and two unlabeled ACDC volumes, preprocessed once per session."""
    info = load_dataset(shared_data / "ACDC")
    cfg = build_config({"method": {"name": "supervised"}}, SMALL)
    lab = preprocess_volumes(
        info.cases[:2], volume_transforms(cfg.data, "mri", with_label=True), with_label=True, progress=False
    )
    unl = preprocess_volumes(
        info.cases[2:4],
        volume_transforms(cfg.data, "mri", with_label=False),
        with_label=False,
        progress=False,
    )
    return info, lab, unl


@dataclass
class ACDCKit:
    """Build a method on the ACDC volumes and train it step by step with SGD, as the engine would."""

    volumes: tuple[Any, Any, Any]
    output: Path

    SMALL = SMALL
    #: Small ACTION++ stage 3 settings.
    FAST3 = (
        "method.rep_dim=16",
        "method.anco.num_queries=32",
        "method.anco.num_negatives=32",
        "method.saacl.anchors_per_class=32",
        "method.saacl.queue_size=256",
    )
    #: Small ACTION++ stages 1-2 settings.
    FAST12 = ("method.window=32", "method.window_stride=16", "method.window_pool=4", "method.global_dim=32")

    def setup(self, name: str, *extra: str):
        """``(method, samplers, optimizer)`` of method ``name`` with the overrides ``extra``."""
        info, lab, unl = self.volumes
        cfg = build_config({"method": {"name": name}}, [*SMALL, f"output={self.output}", *extra])
        torch.manual_seed(0)
        method = build_method(cfg, data_spec(cfg, info))
        samplers = {
            "labeled": method.build_sampler("labeled", lab, stream_index=0),
            "unlabeled": method.build_sampler("unlabeled", unl, stream_index=1),
        }
        opt = torch.optim.SGD(method.param_groups()[0]["params"], lr=0.05, momentum=0.9, weight_decay=1e-4)
        return method, samplers, opt

    @staticmethod
    def batch(samplers: dict, step: int) -> dict:
        return {name: s.sample(0, 0, step) for name, s in samplers.items()}

    @staticmethod
    def step(method, opt, batch: dict, step: int) -> dict:
        """Forward, backward, optimiser step, then ``on_step_end`` (EMA and queue pushes)."""
        out = method(batch, step)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()
        method.on_step_end(step)
        return out

    @staticmethod
    def assert_finite(out: dict, keys: set[str]) -> None:
        assert keys <= set(out), set(out)
        for k, v in out.items():
            assert math.isfinite(float(v.detach()) if torch.is_tensor(v) else v), k


@pytest.fixture
def acdc(acdc_volumes, tmp_path: Path) -> ACDCKit:
    return ACDCKit(acdc_volumes, tmp_path)


@pytest.fixture
def one_thread():
    """One torch thread: on a shared 2-core machine, two OpenMP threads wait on each other under load."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def step_3d(tmp_path: Path):
    """Factory: one training step (forward, backward, ``on_step_end``) of a method on random 2 x 32^3 patches.

    ``step_3d(name, *overrides)`` returns the step's result; for checking that 3D maps take the 2D code path.
    """

    def run(name: str, *overrides: str) -> dict:
        spec = DataSpec(
            in_channels=1, num_classes=2, class_names=("bg", "LA"), spatial_dims=3, patch_size=(32, 32, 32)
        )
        g = torch.Generator().manual_seed(0)
        labels = (torch.rand(2, 1, 32, 32, 32, generator=g) > 0.7).long()
        batch = {
            "labeled": {"image": torch.randn(2, 1, 32, 32, 32, generator=g), "label": labels},
            "unlabeled": {"image": torch.randn(2, 1, 32, 32, 32, generator=g)},
        }
        base = ["data.spatial_dims=3", "data.patch_size=[32, 32, 32]", "model.features=[4, 4, 8, 8, 16, 4]"]
        cfg = build_config({"method": {"name": name}}, [*base, f"output={tmp_path}", *overrides])
        method = build_method(cfg, spec)
        out = method(batch, 0)
        out["loss"].backward()
        method.on_step_end(0)
        return out

    return run
