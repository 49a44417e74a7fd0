"""The supervised method on a real Hippocampus batch."""

from __future__ import annotations

import torch

from medcl.data.dataset import load_dataset
from medcl.data.sampling import StepSampler, preprocess_volumes
from medcl.data.transforms import sample_transforms, volume_transforms
from medcl.engine.data_setup import data_spec
from medcl.methods import METHODS, build_method
from medcl.services.configs import build_config


def test_registry_and_loss_falls_on_real_data(hippocampus) -> None:
    assert "supervised" in METHODS
    cfg = build_config({}, ["model.features=[8, 8, 16, 32, 64, 8]"])
    info = load_dataset(hippocampus)
    vols = preprocess_volumes(
        info.cases[:3], volume_transforms(cfg.data, "mri", with_label=True), with_label=True, progress=False
    )
    batch = {
        "labeled": StepSampler(vols, sample_transforms(None, [64, 64], with_label=True), 8).sample(0, 0, 0)
    }
    torch.manual_seed(0)
    method = build_method(cfg, data_spec(cfg, info))
    opt = torch.optim.Adam(method.parameters(), lr=1e-2)
    losses = []
    for step in range(40):
        out = method(batch, step)
        assert set(out) == {"loss", "sup"} and torch.isfinite(out["loss"])
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(float(out["loss"].detach()))
    assert losses[-1] < 0.8 * losses[0]
    assert method.inference_network() is method.net
