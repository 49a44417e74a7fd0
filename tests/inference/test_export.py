"""Export formats of a trained network: TorchScript files, the inference description and the MONAI bundle.

``medcl export`` end to end (every format against ``medcl infer``'s masks) is in tests/commands/test_export.py;
these use an untrained tiny checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from medcl.data.transforms import volume_transforms
from medcl.errors import MedclError
from medcl.inference.export import (
    FORMATS,
    bare_network,
    bundle_config,
    bundle_metadata,
    check_sizes,
    export,
    inference_description,
    to_torchscript,
)
from medcl.inference.predictor import Predictor


@pytest.fixture
def predictor(tiny_checkpoint, tmp_path: Path) -> Predictor:
    ckpt = tiny_checkpoint(tmp_path / "ckpt" / "model.pt", extra=["data.slice_axis=1"])
    return Predictor.load(str(ckpt), device="cpu", precision="fp32")


def test_an_unknown_format_names_the_formats(predictor: Predictor, tmp_path: Path) -> None:
    with pytest.raises(MedclError) as err:
        export(predictor, "png", tmp_path / "out")
    assert str(err.value) == "unknown export format 'png'; choose one of bundle, torchscript, onnx"
    assert not (tmp_path / "out").exists() and FORMATS == ("bundle", "torchscript", "onnx")


def test_torchscript_reproduces_the_network_at_two_sizes(predictor: Predictor, tmp_path: Path) -> None:
    assert check_sizes(predictor) == [(64, 64), (80, 80)]  # the patch, and one bottleneck step (16) more
    written = export(predictor, "torchscript", tmp_path / "ts")
    assert written == [tmp_path / "ts" / "model.ts", tmp_path / "ts" / "medcl_inference.json"]
    module = torch.jit.load(str(written[0]))
    x = torch.randn(2, 1, 48, 96)
    with torch.inference_mode():
        torch.testing.assert_close(module(x), bare_network(predictor)(x), atol=1e-4, rtol=1e-4)
    described = json.loads(written[1].read_text())
    assert described["slice_axis"] == 1 and described["size_divisor"] == 16
    assert described["preprocessing"]["intensity"] == {
        "kind": "percentile_clip_then_zscore",
        "percentiles": [0.5, 99.5],
    }
    assert described["sliding_window"] == {"overlap": 0.5, "mode": "gaussian", "sw_batch_size": 32}


def test_the_bare_network_has_no_hooks_and_the_predictor_keeps_its_own(predictor: Predictor) -> None:
    def hooks(module: torch.nn.Module) -> int:
        return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())

    before = hooks(predictor.net.net)
    assert before > 0  # medcl's feature hooks (decoder features for the contrastive heads)
    net = bare_network(predictor)
    assert hooks(net) == 0 and hooks(predictor.net.net) == before
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in net.parameters())


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # the frozen size, on purpose
def test_ct_description_and_a_failing_export_is_a_medcl_error(tiny_checkpoint, tmp_path: Path) -> None:
    ckpt = tiny_checkpoint(tmp_path / "ct.pt", extra=["data.modality=ct", "data.ct_window=[-100, 300]"])
    ct = Predictor.load(str(ckpt), device="cpu", precision="fp32")
    ct.spec = type(ct.spec)(**{**ct.spec.__dict__, "modality": "ct"})  # as a CT dataset's data_spec says
    assert inference_description(ct)["preprocessing"]["intensity"] == {
        "kind": "ct_window",
        "window": [-100.0, 300.0],
        "to": [0.0, 1.0],
        "clip": True,
    }

    class Frozen(torch.nn.Module):
        """Not scriptable (a generator expression), and traced it keeps the example's spatial size."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.zeros((x.shape[0], 3, *(int(s) for s in x.shape[2:])))

    ct.net.net = Frozen()
    with pytest.raises(MedclError) as err:
        to_torchscript(ct, tmp_path / "frozen.ts")
    assert str(err.value).startswith("the TorchScript export differs from the PyTorch network at input size")
    with pytest.raises(MedclError, match=r"^the network cannot be scripted \(\w+\)$"):
        to_torchscript(ct, tmp_path / "frozen.ts", trace=False)


def test_bundle_preprocessing_is_the_training_preprocessing(predictor: Predictor) -> None:
    config = bundle_config(predictor)
    steps = [s["_target_"] for s in config["preprocessing"]["transforms"]]
    ours = volume_transforms(predictor.cfg.data, "mri", with_label=False).transforms
    assert steps == [type(t).__name__ for t in ours]
    assert config["inferer"] == {
        "_target_": "SliceInferer",
        "spatial_dim": 1,
        "roi_size": [64, 64],
        "sw_batch_size": 32,
        "overlap": 0.5,
        "mode": "gaussian",
    }
    meta = bundle_metadata(predictor)
    assert meta["task"] == "MRI segmentation of Anterior, Posterior"
    assert meta["network_data_format"]["outputs"]["pred"]["channel_def"] == {
        "0": "background",
        "1": "Anterior",
        "2": "Posterior",
    }
